"""``MetricLearner``: embed the images, summarise the support set, score the queries; no inner loop.

Metric-based meta-learners (Prototypical, Matching, Relation, Siamese networks) differ only in how
a task's support embeddings become a classifier of query embeddings.  A subclass implements two
hooks on embeddings:

* :meth:`MetricLearner.support_state` ``(support_features, support_y, ways) -> state``: what the
  method keeps of the support set (class prototypes, the support set itself, ...);
* :meth:`MetricLearner.classify` ``(state, query_features) -> logits [M, ways]``.

Training minimises :meth:`MetricLearner.episode_loss`, by default :meth:`MetricLearner.task_loss`
(cross-entropy) of the query logits; a method whose loss needs more than the class logits (Siamese
networks: the scores of (query, support) pairs) overrides it.

The base trains on meta-batches (one episode's forward and backward at a time, or the whole
meta-batch embedded in one pass: ``embed_together``), evaluates every episode on its own with the embedding in
``eval()`` mode (running BatchNorm statistics, so an episode's predictions never depend on the
other episodes of its batch), and offers the stateful interface of learn2learn and
pytorch-meta: ``process_support_set(support_x, support_y)`` then ``forward(query_x) -> logits``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.support_prediction import support_set_ways
from lightning_meta.errors import MODEL_ARGS, ConfigurationError
from lightning_meta.models.backbone import build_module
from lightning_meta.models.norm import evaluation_mode, require_norm_statistics
from lightning_meta.tasks import TaskBatch


class MetricLearner(MetaLearner):
    """Base class of metric-based meta-learners (see the module docstring for the two hooks).

    Args:
        embedding: the embedding network, e.g. ``Conv4(out_features=None, pooling="max",
            batch_norm_stats="running")`` (or a ``{"class_path", "init_args"}`` dict).  Its
            BatchNorm layers must keep running statistics: episodes are evaluated in ``eval()``
            mode, independently of each other.
        embed_together: in training, embed the support and query images of all episodes of a
            meta-batch in one forward pass instead of one pass (and one backward) per episode.
            BatchNorm then normalises over the meta-batch.  Off by default: on a 2-core CPU it was
            0.6-0.8x as fast and took 11x the memory (``python -m benchmarks.protonet_step``,
            Conv4, 5-way 1-shot, meta-batch 32); it may pay on a GPU, where a step is overhead-bound.
        Remaining arguments (``outer_lr``, ``gradient_clip_val``, ``accumulate_grad_batches``): see
            :class:`~lightning_meta.algorithms.learner.Learner`.

    Example::

        class NearestNeighbour(MetricLearner):
            def support_state(self, features, labels, ways):
                return features.flatten(1), labels, ways
            def classify(self, state, query):
                support, labels, ways = state
                similarity = -torch.cdist(query.flatten(1), support)
                return torch.full((len(query), ways), -1e9).scatter_reduce(
                    1, labels.expand(len(query), -1), similarity, "amax")
    """

    evaluation_needs_grad = False
    has_batching_choice = False

    def __init__(
        self,
        embedding: nn.Module,
        embed_together: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.embedding = build_module(embedding)
        self.embed_together = embed_together
        self._support: Optional[Any] = None
        require_norm_statistics(self.embedding, running=True, field=MODEL_ARGS + "embedding",
                                why="episodes are evaluated in eval() mode, so that an episode's predictions never"
                                    " depend on the other images")

    # ------------------------------------------------------------------ the subclass contract
    def support_state(self, support_features: Tensor, support_y: Tensor, ways: int) -> Any:
        """What the method keeps of one task's support set (embedded), for :meth:`classify`."""
        raise NotImplementedError

    def classify(self, state: Any, query_features: Tensor) -> Tensor:
        """Logits ``[M, ways]`` of the embedded queries given :meth:`support_state`'s result."""
        raise NotImplementedError

    def task_loss(self, logits: Tensor, query_y: Tensor) -> Tensor:
        """The training loss of one episode's query logits (cross-entropy; Relation uses MSE)."""
        return F.cross_entropy(logits, query_y)

    def episode_loss(self, support_features: Tensor, support_y: Tensor, query_features: Tensor,
                     query_y: Tensor) -> tuple[Tensor, Tensor]:
        """One training episode's loss and query logits ``[M, ways]`` from its embeddings.

        The default is :meth:`task_loss` of :meth:`task_logits`; override it when the loss needs
        more than the class logits (Siamese networks train on the scores of (query, support) pairs).
        """
        logits = self.task_logits(support_features, support_y, query_features)
        return self.task_loss(logits, query_y), logits

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities from :meth:`classify`'s logits (softmax)."""
        return logits.softmax(-1)

    # ------------------------------------------------------------------ embedding and one task
    def embed(self, x: Tensor) -> Tensor:
        """Embed a batch of inputs ``[n, ...]``."""
        return self.embedding(x)

    def task_logits(self, support_features: Tensor, support_y: Tensor, query_features: Tensor) -> Tensor:
        """Query logits of one task from its embedded support and query sets."""
        ways = int(support_y.max()) + 1  # labels checked by the data module or support_set_ways
        return self.classify(self.support_state(support_features, support_y, ways), query_features)

    def process_support_set(self, support_x: Tensor, support_y: Tensor) -> None:
        """Embed and keep a support set (labels ``0..N-1``); :meth:`forward` then classifies queries.

        Example::

            model.eval()
            model.process_support_set(support_images, support_labels)
            probabilities = model.probabilities(model(query_images))
        """
        ways = support_set_ways(support_y)
        self._support = self.support_state(self.embed(support_x), support_y, ways)

    def forward(self, query_x: Tensor) -> Tensor:
        """Logits ``[M, ways]`` of ``query_x`` against the support set of :meth:`process_support_set`."""
        if self._support is None:
            raise RuntimeError(f"{type(self).__name__}: call process_support_set(support_x, support_y) before "
                               "classifying queries")
        return self.classify(self._support, self.embed(query_x))

    # ------------------------------------------------------------------ the MetaLearner contract
    def training_objective(self, params: Any, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor) -> tuple[Tensor, Tensor]:
        features = self.embed(torch.cat([support_x, query_x]))
        return self.episode_loss(features[: len(support_x)], support_y, features[len(support_x):], query_y)

    def outer_backward(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        if not self.embed_together:
            return super().outer_backward(batch)
        support_x, support_y, query_x, query_y = batch.tensors()
        tasks, shots, queries = batch.num_tasks, support_x.shape[1], query_x.shape[1]
        features = self.embed(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))
        support_features = features[: tasks * shots].unflatten(0, (tasks, shots))
        query_features = features[tasks * shots:].unflatten(0, (tasks, queries))
        outputs = [self.episode_loss(support_features[i], support_y[i], query_features[i], query_y[i])
                   for i in range(tasks)]
        losses = torch.stack([loss for loss, _ in outputs])
        logits = torch.stack([logits for _, logits in outputs])
        return self.backpropagate(losses, scale=1 / tasks), logits.detach()

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, None]:
        logits = self.task_logits(self.embed(support_x), support_y, self.embed(query_x))
        return logits.detach(), None

    def flat_features(self, x: Tensor, feature_dim: Optional[int]) -> Tensor:
        """The embedding of ``x`` flattened to ``[n, D]``, refusing a width other than ``feature_dim`` (the
        width the learner's own layers were built for; ``None``: any)."""
        features = self.embedding(x).flatten(1)
        if feature_dim is not None and features.shape[1] != feature_dim:
            raise ConfigurationError(
                f"the embedding outputs {features.shape[1]} features per example but {MODEL_ARGS}feature_dim="
                f"{feature_dim}: set {MODEL_ARGS}feature_dim to {features.shape[1]}")
        return features

    def probe(self, x: Tensor) -> None:
        with evaluation_mode(self.embedding):  # a forward in training mode would move the running statistics
            self.embed(x)
        return None

