"""SNAIL, the simple neural attentive meta-learner (Mishra, Rohaninejad, Chen, Abbeel 2018)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import FIELD
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.data.episodes import episode_generator
from lightning_meta.data.sequences import OrderedTasks, episode_permutations, gather_steps
from lightning_meta.errors import ConfigurationError, optional_positive, require_positive
from lightning_meta.models.shapes import infer_feature_dim
from lightning_meta.models.snail import SnailSequenceModel
from lightning_meta.tasks import TaskBatch

#: salt of the generators that shuffle each episode's support sequence (distinct from the sampler's)
SUPPORT_ORDER_SEED = 20180223


class SNAIL(MetricLearner):
    """A sequence model reads the labelled support set, then predicts a query's label: meta-learning as sequence prediction.

    An episode is read as the paper does: the support examples in a shuffled order, each embedded
    and concatenated with its one-hot label, then ONE query with a null (all-zero) label; the
    prediction at the query's position is its class.  The queries of an episode are separate
    sequences sharing the support prefix: the prefix's activations are computed once per block and
    every query is appended to it on its own (:meth:`SnailSequenceModel.step`), so a query never
    sees another query and permuting the queries permutes the predictions, nothing else.  The
    sequence model is causal (a later element never changes an earlier output; tested).

    The support order is a random permutation drawn per episode from its address (index, split
    and, in training, epoch; see :mod:`lightning_meta.data.sequences`): the data module lists the
    support set class by class, which a sequence model would otherwise read as a positional label
    code.  A single task (``predict_task``, ``process_support_set``) gets a fixed permutation.
    Evaluation embeds in ``eval()`` mode (running BatchNorm statistics), as the metric learners.  On the
    hanzi learning test, normalising each test episode by its own statistics instead scored 2.4-4.5
    points higher (seed 0: 94.2% vs 91.8%); that number is transductive, so it is not what we report.
    Re-estimating the running statistics with the final weights (400 training episodes, cumulative
    average) changed nothing (91.9%): the gap is the per-episode normalisation, not stale statistics.

    The label space is fixed by ``ways`` (the one-hot width and the output layer): test episodes
    may have fewer classes (their logits are the first ``ways`` outputs), never more.  The TC blocks
    are sized for sequences of ``ways * shots + 1`` (``ceil(log2 T)`` dilated layers); longer support
    sets still run (attention sees all of it), shorter ones too.

    Args:
        embedding: the embedding network (headless, running BatchNorm statistics): the paper uses
            ``Conv4(out_features=None, pooling="max", batch_norm_stats="running")`` on Omniglot and a
            ResNet-12 on mini-ImageNet.
        ways: classes per episode (one-hot label width and outputs); the data's ``ways``.
        shots: support examples per class the TC blocks are sized for (the data's ``shots``).
        attention: ``[key_size, value_size]`` of each attention block (the paper's:
            ``[[64, 32], [256, 128], [512, 256]]``).
        tc_filters: filters of the TC block between consecutive attention blocks (the paper's: ``[128, 128]``).
        feature_dim: width of the (flattened) embeddings; ``None`` infers it with one forward pass.
        episodes_per_pass: episodes whose sequences run through the sequence model in one call, with one
            backward per group in training (their embeddings' activations are held until it).  Each
            episode is still embedded on its own (BatchNorm over one episode); results do not depend on
            it (tested).  One episode at a time, the sequence model's small matrix products are
            overhead-bound: a meta-batch-32 Omniglot step took 1.56x ProtoNet's time on one CPU thread,
            1.15x with 4 per pass (2.6x ProtoNet's peak memory), 1.08x with 8 (4.9x), 1.02x with 32
            (13x), measured side by side in one run of ``benchmarks/black_box_step.py``'s step with the
            per-pass count varied.  Lower it for large embeddings on a small GPU.
        Remaining arguments: see :class:`~lightning_meta.algorithms.metric.MetricLearner`.

    Hooks to override: :meth:`sequence_inputs` (what one element of the sequence is), and any
    :class:`MetricLearner` hook; swap the embedding through ``embedding``.

    Reference:
        Mishra, Rohaninejad, Chen, Abbeel. "A Simple Neural Attentive Meta-Learner." ICLR 2018.

    Example::

        from lightning_meta import OmniglotDataModule, SNAIL
        from lightning_meta.models import Conv4

        model = SNAIL(Conv4(out_features=None, pooling="max", batch_norm_stats="running"), ways=5, shots=1)
        data = OmniglotDataModule("data", ways=5, shots=1, queries=1, test_queries=15, meta_batch_size=32)
        pl.Trainer(max_epochs=10).fit(model, data)
    """

    def __init__(
        self,
        embedding: nn.Module,
        ways: int,
        shots: int,
        attention: Sequence[Sequence[int]] = ((64, 32), (256, 128), (512, 256)),
        tc_filters: Sequence[int] = (128, 128),
        feature_dim: Optional[int] = None,
        episodes_per_pass: int = 4,
        outer_lr: float = 1e-3,
        gradient_clip_val: Optional[float] = None,
        accumulate_grad_batches: int = 1,
    ):
        super().__init__(embedding, embed_together=False, outer_lr=outer_lr, gradient_clip_val=gradient_clip_val,
                         accumulate_grad_batches=accumulate_grad_batches)
        self.remove_ignored_hparams(["embed_together"])
        require_positive(FIELD + "ways", ways)
        require_positive(FIELD + "shots", shots)
        optional_positive(FIELD + "feature_dim", feature_dim)
        require_positive(FIELD + "episodes_per_pass", episodes_per_pass)
        pairs = [list(pair) for pair in attention] if isinstance(attention, (list, tuple)) else []
        if not pairs or not all(len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p) for p in pairs):
            raise ConfigurationError(f"{FIELD}attention={attention!r} is invalid: give [key_size, value_size] pairs of"
                                     " positive integers, e.g. [[64, 32], [256, 128], [512, 256]]")
        filters = list(tc_filters) if isinstance(tc_filters, (list, tuple)) else [tc_filters]
        if len(filters) != len(pairs) - 1 or not all(isinstance(f, int) and f > 0 for f in filters):
            raise ConfigurationError(
                f"{FIELD}tc_filters={tc_filters!r} is invalid: give {len(pairs) - 1} positive integers, one TC block"
                f" between each two of the {len(pairs)} attention blocks (e.g. [128, 128])")
        self.ways, self.shots, self.episodes_per_pass = ways, shots, episodes_per_pass
        self.feature_dim = feature_dim or infer_feature_dim(self.embedding, FIELD + "embedding")
        self.sequence = SnailSequenceModel(self.feature_dim + ways, ways * shots + 1, ways, pairs, filters)

    # ------------------------------------------------------------------ the sequence
    def sequence_inputs(self, features: Tensor, labels: Optional[Tensor]) -> Tensor:
        """Sequence elements ``[n, feature_dim + ways]``: embeddings with one-hot labels (zeros: no label)."""
        features = features.flatten(1)
        if labels is None:
            return F.pad(features, (0, self.ways))
        return torch.cat([features, F.one_hot(labels, self.ways).to(features.dtype)], 1)

    def sequence_logits(self, support_features: Tensor, support_y: Tensor, query_features: Tensor,
                        ways: int) -> Tensor:
        """Query logits ``[G, M, ways]`` of ``G`` episodes at once, from their embedded support sets
        ``[G, S, ...]`` (in sequence order), labels ``[G, S]`` and embedded queries ``[G, M, ...]``: each
        query appended alone after its episode's support prefix, one sequence-model call for all."""
        if ways > self.ways:
            raise ConfigurationError(
                f"an episode has {ways} classes but this SNAIL reads labels of {self.ways} classes ({FIELD}ways,"
                f" fixed by training): test with at most {self.ways} ways (data.init_args.test_ways)")
        episodes, shots, queries = *support_y.shape, query_features.shape[1]
        prefix = self.sequence_inputs(support_features.flatten(0, 1), support_y.flatten())
        appended = self.sequence_inputs(query_features.flatten(0, 1), None)
        prefix, appended = prefix.unflatten(0, (episodes, shots)), appended.unflatten(0, (episodes, queries))
        return self.sequence.step(prefix, appended)[..., :ways]

    def support_state(self, support_features: Tensor, support_y: Tensor, ways: int) -> Any:
        return support_features, support_y, ways

    def classify(self, state: Any, query_features: Tensor) -> Tensor:
        support_features, support_y, ways = state
        return self.sequence_logits(support_features[None], support_y[None], query_features[None], ways)[0]

    # ------------------------------------------------------------------ episodes, a group at a time
    def group_objective(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                        order: Tensor) -> tuple[Tensor, Tensor]:
        """Training losses ``[G]`` and query logits ``[G, M, ways]`` of ``G`` episodes (supports in ``order``).

        Each episode is embedded on its own (training-mode BatchNorm normalises over one episode's
        images, as with one episode at a time); the sequence model then reads all ``G`` at once.
        """
        support_x, support_y = ordered_supports(support_x, support_y, order)
        shots = support_y.shape[1]
        features = torch.stack([self.embed(torch.cat([s, q])) for s, q in zip(support_x, query_x)])
        logits = self.sequence_logits(features[:, :shots], support_y, features[:, shots:],
                                      int(support_y.max()) + 1)
        return torch.stack([self.task_loss(task, y) for task, y in zip(logits, query_y)]), logits

    def group_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, order: Tensor) -> Tensor:
        """Evaluation logits ``[G, M, ways]`` of ``G`` episodes: in ``eval()`` mode every image is embedded
        independently of the others, so the group is embedded in one pass."""
        support_x, support_y = ordered_supports(support_x, support_y, order)
        episodes, shots = support_y.shape
        features = self.embed(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))
        support_features = features[: episodes * shots].unflatten(0, (episodes, shots))
        query_features = features[episodes * shots:].unflatten(0, (episodes, query_x.shape[1]))
        return self.sequence_logits(support_features, support_y, query_features, int(support_y.max()) + 1)

    def groups(self, count: int) -> list[slice]:
        """The episodes of a meta-batch of ``count``, ``episodes_per_pass`` at a time."""
        return [slice(start, start + self.episodes_per_pass) for start in range(0, count, self.episodes_per_pass)]

    def training_objective(self, params: Any, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor, order: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        order = self._order(order, len(support_y), support_y.device)
        losses, logits = self.group_objective(support_x[None], support_y[None], query_x[None], query_y[None],
                                              order[None])
        return losses[0], logits[0]

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                      order: Optional[Tensor] = None) -> tuple[Tensor, None]:
        order = self._order(order, len(support_y), support_y.device)
        return self.group_logits(support_x[None], support_y[None], query_x[None], order[None])[0].detach(), None

    def process_support_set(self, support_x: Tensor, support_y: Tensor) -> None:
        order = self._order(None, len(support_y), support_y.device)
        super().process_support_set(support_x[order], support_y[order])

    def outer_backward(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The meta-batch ``episodes_per_pass`` episodes at a time: one sequence-model call and one
        ``manual_backward`` per group (the DDP all-reduce with the last)."""
        support_x, support_y, query_x, query_y, order = self._with_orders(batch, "train").tensors()
        count = batch.num_tasks
        losses, logits = [], []
        for group in self.groups(count):
            group_losses, group_logits = self.group_objective(support_x[group], support_y[group], query_x[group],
                                                              query_y[group], order[group])
            losses.append(self.backpropagate(group_losses, scale=1 / count, last=group.stop >= count))
            logits.append(group_logits.detach())
        return torch.cat(losses), torch.cat(logits)

    def evaluate_batch(self, batch: TaskBatch) -> tuple[Tensor, None]:
        support_x, support_y, query_x, _, order = self._with_orders(batch, "test").tensors()
        logits = [self.group_logits(support_x[group], support_y[group], query_x[group], order[group])
                  for group in self.groups(batch.num_tasks)]
        return torch.cat(logits).detach(), None

    @staticmethod
    def _order(order: Optional[Tensor], size: int, device: torch.device) -> Tensor:
        if order is None:  # a single task: a fixed shuffle
            order = torch.randperm(size, generator=episode_generator(SUPPORT_ORDER_SEED, "test", 0))
        return order.to(device)

    def _with_orders(self, batch: TaskBatch, split: str) -> OrderedTasks:
        epoch = self.current_epoch if split == "train" else None
        orders = episode_permutations(batch, batch.support_x.shape[1], SUPPORT_ORDER_SEED, split, epoch,
                                      fallback_start=self.global_step * batch.num_tasks)
        return OrderedTasks(*batch.tensors(), index=batch.index, order=orders)

    def check_data(self, datamodule: Any, split: str) -> None:
        """Also refuse episodes with more classes than ``ways``; ``fit`` checks the validation episodes too."""
        super().check_data(datamodule, split)
        for checked in ("train", "val") if split == "train" else (split,):
            ways = datamodule.setting(checked)[0]
            if ways <= self.ways:
                continue
            prefix = "" if checked == "train" else "test_"
            raise ConfigurationError(
                f"data.init_args.{prefix}ways={ways} exceeds {FIELD}ways={self.ways}, the label space SNAIL reads and"
                f" predicts: set {FIELD}ways to at least {ways} (a trained model's is fixed: test with fewer ways)")


def ordered_supports(support_x: Tensor, support_y: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """Support sets ``[G, S, ...]`` and labels ``[G, S]`` in each episode's sequence ``order [G, S]``."""
    return gather_steps(support_x, order), support_y.gather(1, order)
