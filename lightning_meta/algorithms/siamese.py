"""Siamese networks for one-shot classification (Koch, Zemel, Salakhutdinov 2015)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.errors import MODEL_ARGS, require_positive


class SiameseSupport(NamedTuple):
    """What a Siamese network keeps of a support set: its embeddings and labels."""

    features: Tensor  #: ``[N*K, D]``
    labels: Tensor  #: ``[N*K]``
    ways: int


class SiameseNetwork(MetricLearner):
    """Score whether two images show the same class; classify a query as its best-matching support example.

    Both images of a pair go through the one (twin) ``embedding``; the pair's logit is a learned
    weighting of the component-wise L1 distance of their embeddings, ``s(x1, x2) = w . |h1 - h2| + b``
    (:meth:`pair_logits`), and ``sigmoid(s)`` is the probability that they are of the same class.
    The score is symmetric in the pair by construction.

    Training (verification): every (query, support) pair of a training episode is a same-class
    (positive) or different-class (negative) example for a binary cross-entropy on ``s``.  An
    N-way episode has N-1 times more negatives than positives, so the two groups are weighted to
    contribute equally (half the loss each), as in the paper's balanced verification set.  All pairs
    are used rather than a sample: they cost no further embedding, and the loss stays a
    deterministic function of the episode (no extra random draw, so resumed runs match).

    Evaluation (one-shot classification, the paper's protocol): a query gets the class of its most
    similar support example.  :meth:`classify` returns, per class, the largest pair logit of the
    query with that class's support examples, so the argmax of the class logits is that rule; with
    K shots it is the maximum over the class's K examples (a nearest-neighbour rule, the natural
    extension of the paper's one-shot rule).  :meth:`probabilities` is the softmax of these logits
    over the classes (a ranking score, not the pair probability).

    Differences from the paper, on purpose: the embedding is the library's Conv4 on 28x28 images
    (the paper uses a larger network on 105x105 images) and the pairs come from the episodes of
    the meta-training classes (the paper samples verification pairs and uses affine distortions).

    Args:
        embedding: the twin embedding network (see :class:`~lightning_meta.algorithms.metric.MetricLearner`),
            e.g. ``Conv4(out_features=None, pooling="max", batch_norm_stats="running")``.
        feature_dim: width of the flattened embeddings, the input size of the pair scorer (64 for
            Conv4 with 64 channels on 28x28 images, 1600 on 84x84 images); checked at the first
            forward pass.
        Remaining arguments: see :class:`~lightning_meta.algorithms.metric.MetricLearner`.

    Reference:
        Koch, Zemel, Salakhutdinov. "Siamese Neural Networks for One-shot Image Recognition." ICML
        Deep Learning Workshop 2015.

    Example::

        from lightning_meta import OmniglotDataModule
        from lightning_meta.algorithms.siamese import SiameseNetwork
        from lightning_meta.models import Conv4

        model = SiameseNetwork(Conv4(out_features=None, pooling="max", batch_norm_stats="running"), feature_dim=64)
        data = OmniglotDataModule("data", ways=20, test_ways=5, shots=1, queries=5, test_queries=15)
        pl.Trainer(max_epochs=10).fit(model, data)
    """

    def __init__(
        self,
        embedding: nn.Module,
        feature_dim: int,
        embed_together: bool = False,
        **kwargs: Any,
    ):
        super().__init__(embedding, embed_together=embed_together, **kwargs)
        require_positive(MODEL_ARGS + "feature_dim", feature_dim)
        self.feature_dim = feature_dim
        self.scorer = nn.Linear(feature_dim, 1)

    def embed(self, x: Tensor) -> Tensor:
        return self.flat_features(x, self.feature_dim)

    def pair_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """Same-class logits ``[M, S]`` of every pair of embeddings ``first [M, D]`` x ``second [S, D]``."""
        distance = (first.flatten(1).unsqueeze(1) - second.flatten(1).unsqueeze(0)).abs()
        return self.scorer(distance).squeeze(-1)

    # ------------------------------------------------------------------ the MetricLearner hooks
    def support_state(self, support_features: Tensor, support_y: Tensor, ways: int) -> SiameseSupport:
        return SiameseSupport(support_features.flatten(1), support_y, ways)

    def classify(self, state: SiameseSupport, query_features: Tensor) -> Tensor:
        return self.class_logits(self.pair_logits(query_features, state.features), state)

    @staticmethod
    def class_logits(pairs: Tensor, state: SiameseSupport) -> Tensor:
        """Per class, the best pair logit ``[M, ways]`` of each query with that class's support examples."""
        member = state.labels.unsqueeze(0) == torch.arange(state.ways, device=state.labels.device).unsqueeze(1)
        lowest = torch.finfo(pairs.dtype).min  # a class without support examples can never win
        return pairs.unsqueeze(1).masked_fill(~member, lowest).amax(-1)

    def episode_loss(self, support_features: Tensor, support_y: Tensor, query_features: Tensor,
                     query_y: Tensor) -> tuple[Tensor, Tensor]:
        """Balanced binary cross-entropy of all (query, support) pairs; the class logits for logging."""
        state = self.support_state(support_features, support_y, int(support_y.max()) + 1)
        pairs = self.pair_logits(query_features, state.features)
        same = query_y.unsqueeze(1) == support_y.unsqueeze(0)
        losses = F.binary_cross_entropy_with_logits(pairs, same.to(pairs.dtype), reduction="none")
        positives, negatives = same.sum(), (~same).sum()
        weights = torch.where(same, 1 / positives.clamp_min(1), 1 / negatives.clamp_min(1)).to(pairs.dtype)
        groups = (positives > 0).to(pairs.dtype) + (negatives > 0).to(pairs.dtype)
        return (losses * weights).sum() / groups, self.class_logits(pairs, state)
