"""Relation networks (Sung, Yang, Zhang, Xiang, Torr, Hospedales 2018): a learned comparison."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.models.norm import evaluation_mode
from lightning_meta.models.relation import RelationModule, block_output_size


class RelationNetwork(MetricLearner):
    """Score each (query, class) pair of feature maps with a learned relation module.

    Each class is represented by the element-wise **sum** of its support feature maps (the paper's
    K-shot rule; one shot: the map itself).  The relation module takes the channel-wise
    concatenation ``[class map, query map]`` and outputs a relation score in ``[0, 1]`` (a
    sigmoid); the predicted class is the one with the highest score.  Training regresses the scores
    onto one-hot relation targets with the **mean squared error** (the paper's loss:
    1 for the query's class, 0 for the others, averaged over the ``M x N`` pairs), not a cross-entropy.

    What the methods return:

    * :meth:`classify` (and ``forward`` after ``process_support_set``): the relation scores
      ``[M, ways]`` in ``[0, 1]``; argmax is the prediction.
    * :meth:`probabilities`: the scores normalised to sum to one over the classes,
      ``s_c / sum_k s_k``.  The scores of a query are independent sigmoids, not a distribution; this
      is the simplest distribution with the same ranking (uniform if all scores are zero).
    * Validation and test (:meth:`evaluate_task`): **log** relation scores, ``log s_c`` (computed
      as ``logsigmoid`` of the relation logits, so never ``-inf``).  These are logits in the usual
      sense: their softmax is exactly :meth:`probabilities`, their argmax the prediction, so the
      reported ``val/acc``, ``test/acc`` are the accuracies of the scores, and ``val/loss``,
      ``test/loss`` (the cross-entropy the base logs) are the negative log-likelihood of the
      normalised scores, ``-log(s_y / sum_k s_k)``.  ``train/loss`` is the MSE training objective.

    The embedding must output feature maps ``[n, C, h, w]`` (the relation module convolves them),
    not vectors; the relation module is sized from their shape, which comes from the embedding's
    ``output_shape`` (:class:`~lightning_meta.models.relation.RelationEmbedding`), from
    ``input_shape``, or from the embedding's ``in_channels`` and ``image_size`` arguments.

    Args:
        embedding: the embedding network, e.g. ``RelationEmbedding(in_channels=1, image_size=28)``
            (the paper's), or a ``{"class_path", "init_args"}`` dict.  Its output must be a feature
            map and its BatchNorm layers must keep running statistics.
        input_shape: ``[channels, height, width]`` of the images, to size the relation module when
            the embedding has no ``output_shape`` (``None``: from the embedding).
        relation_channels: channels of the relation module's two convolutional blocks (64).
        relation_features: width of its hidden fully connected layer (8).
        relation_padding: padding of its convolutions; ``None``: 1 for feature maps smaller than
            10x10 (Omniglot), else 0 (mini-ImageNet), as the official code.
        Remaining arguments: see :class:`~lightning_meta.algorithms.metric.MetricLearner`.
            The official code clips gradient norms to 0.5 (``gradient_clip_val``; it clips the
            embedding and relation module separately, this clips them together).

    Reference:
        Sung, Yang, Zhang, Xiang, Torr, Hospedales. "Learning to Compare: Relation Network for
        Few-Shot Learning." CVPR 2018.

    Example::

        from lightning_meta import OmniglotDataModule
        from lightning_meta.algorithms.relation import RelationNetwork
        from lightning_meta.models.relation import RelationEmbedding

        model = RelationNetwork(RelationEmbedding(in_channels=1, image_size=28), gradient_clip_val=0.5)
        data = OmniglotDataModule("data", split="vinyals", ways=5, shots=1, queries=19, test_queries=15,
                                  meta_batch_size=1)
        pl.Trainer(max_epochs=10, inference_mode=False).fit(model, data)
    """

    def __init__(
        self,
        embedding: nn.Module,
        input_shape: Optional[Sequence[int]] = None,
        relation_channels: int = 64,
        relation_features: int = 8,
        relation_padding: Optional[int] = None,
        embed_together: bool = False,
        **kwargs: Any,
    ):
        super().__init__(embedding, embed_together=embed_together, **kwargs)
        require_positive(MODEL_ARGS + "relation_channels", relation_channels)
        require_positive(MODEL_ARGS + "relation_features", relation_features)
        if relation_padding is not None:
            require_positive(MODEL_ARGS + "relation_padding", relation_padding, allow_zero=True)
        self.feature_shape = self._feature_shape(input_shape)
        self._check_relation_size(relation_padding)
        self.relation = RelationModule(self.feature_shape, relation_channels, relation_features, relation_padding)

    # ------------------------------------------------------------------ sizing and checks
    def _feature_shape(self, input_shape: Optional[Sequence[int]]) -> tuple[int, int, int]:
        """``(C, h, w)`` of the embedding's feature maps, refusing embeddings that output vectors."""
        if input_shape is None:
            known = getattr(self.embedding, "output_shape", None)
            if known is not None:
                return self._require_map(torch.Size([2, *known]), "its output_shape")
            args = getattr(self.embedding, "init_args", {})
            if "in_channels" not in args or "image_size" not in args:
                raise ConfigurationError(
                    f"RelationNetwork cannot tell the size of the {type(self.embedding).__name__} embedding's feature "
                    f"maps, which sizes the relation module: set {MODEL_ARGS}input_shape to the images' [channels, height,"
                    " width], e.g. [1, 28, 28]")
            input_shape = [args["in_channels"], args["image_size"], args["image_size"]]
        shape = list(input_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ConfigurationError(f"{MODEL_ARGS}input_shape={input_shape!r} is invalid: it must be three positive "
                                     "integers [channels, height, width]")
        try:
            with torch.no_grad(), evaluation_mode(self.embedding) as embedding:
                output = embedding(torch.zeros(2, *shape))
        except RuntimeError as error:
            raise ConfigurationError(f"the embedding cannot take inputs of shape {shape} ({MODEL_ARGS}input_shape or the "
                                     f"embedding's in_channels/image_size): {error}") from error
        return self._require_map(output.shape, f"inputs of shape {shape}")

    def _require_map(self, shape: torch.Size, source: str) -> tuple[int, int, int]:
        if len(shape) != 4:
            raise ConfigurationError(
                f"RelationNetwork compares feature maps [channels, height, width], but the "
                f"{type(self.embedding).__name__} embedding outputs {list(shape[1:])} per image ({source}): a "
                "flattened or pooled vector. Use lightning_meta.models.relation.RelationEmbedding (the paper's "
                f"embedding module) for {MODEL_ARGS}embedding, or any embedding that ends with a convolutional block")
        return int(shape[1]), int(shape[2]), int(shape[3])

    def _check_relation_size(self, padding: Optional[int]) -> None:
        _, height, width = self.feature_shape
        chosen = padding if padding is not None else (1 if min(height, width) < 10 else 0)
        side = min(height, width)
        for _ in range(2):
            side = block_output_size(side, chosen, True)
        if side < 1:
            raise ConfigurationError(
                f"the embedding's {height}x{width} feature maps vanish in the relation module's two conv (padding "
                f"{chosen}) and 2x2 max-pool blocks: set {MODEL_ARGS}relation_padding to 1 (or leave it null), or use "
                "larger images or an embedding that downsamples less")

    def probe(self, x: Tensor) -> None:
        """Refuse data whose feature maps differ from those the relation module was sized for."""
        with evaluation_mode(self.embedding):
            shape = tuple(self.embed(x).shape[1:])
        if shape != self.feature_shape:
            raise ConfigurationError(
                f"the data's images of shape {list(x.shape[1:])} give feature maps {list(shape)}, but the relation "
                f"module was sized for {list(self.feature_shape)}: set the embedding's image_size/in_channels "
                f"({MODEL_ARGS}embedding.init_args) or {MODEL_ARGS}input_shape to the data's images")
        return None

    # ------------------------------------------------------------------ the MetricLearner hooks
    def class_maps(self, support_features: Tensor, support_y: Tensor, ways: int) -> Tensor:
        """``[ways, C, h, w]``: the element-wise sum of each class's support feature maps."""
        return support_features.new_zeros(ways, *support_features.shape[1:]).index_add(0, support_y, support_features)

    def support_state(self, support_features: Tensor, support_y: Tensor, ways: int) -> Tensor:
        return self.class_maps(support_features, support_y, ways)

    def classify(self, state: Tensor, query_features: Tensor) -> Tensor:
        """Relation logits ``[M, ways]`` of the query maps against the class maps: the relation score of
        the paper is their sigmoid."""
        return self.relation(state, query_features)

    def task_loss(self, logits: Tensor, query_y: Tensor) -> Tensor:
        """Mean squared error between the relation scores (sigmoid of the logits) and the one-hot relation
        targets (the paper's)."""
        targets = F.one_hot(query_y, logits.shape[-1]).to(logits.dtype)
        return F.mse_loss(torch.sigmoid(logits), targets)

    def probabilities(self, logits: Tensor) -> Tensor:
        """The relation scores normalised to sum to one over the classes (uniform if all are zero)."""
        scores = torch.sigmoid(logits).clamp_min(torch.finfo(logits.dtype).tiny)
        return scores / scores.sum(-1, keepdim=True)

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, None]:
        """Log relation scores ``[M, ways]``: predictions whose softmax is :meth:`probabilities` (and whose
        cross-entropy, the reported ``loss``, is that of the normalised scores)."""
        logits, _ = super().evaluate_task(support_x, support_y, query_x, query_y)
        return F.logsigmoid(logits), None
