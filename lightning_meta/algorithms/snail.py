"""SNAIL, the simple neural attentive meta-learner (Mishra, Rohaninejad, Chen, Abbeel 2018)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.sequence import SequenceLearner
from lightning_meta.data.sequences import gather_steps
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, optional_positive, require_positive
from lightning_meta.models.shapes import infer_feature_dim
from lightning_meta.models.snail import SnailSequenceModel
from lightning_meta.tasks import TaskBatch

#: salt of the generators that shuffle each episode's support sequence (distinct from the sampler's)
SUPPORT_ORDER_SEED = 20180223


class SNAIL(SequenceLearner):
    """A sequence model reads the labelled support set, then predicts a query's label: meta-learning as sequence prediction.

    An episode is read as the paper does: the support examples in a shuffled order, each embedded
    and concatenated with its one-hot label, then ONE query with a null (all-zero) label; the
    prediction at the query's position is its class.  The queries of an episode are separate
    sequences sharing the support prefix: the prefix's activations are computed once per block and
    every query is appended to it on its own (:meth:`SnailSequenceModel.step`), so a query never
    sees another query and permuting the queries permutes the predictions, nothing else.  The
    sequence model is causal (a later element never changes an earlier output; tested).

    The support order is a random permutation drawn per episode from its address, and a single task
    (``predict_task``) gets a fixed one (:meth:`~lightning_meta.algorithms.sequence.SequenceLearner.episode_orders`):
    the data module lists the support set class by class, which a sequence model would otherwise read
    as a positional label code.  Evaluation embeds in ``eval()`` mode (running BatchNorm statistics).  On the
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
        Remaining arguments: see :class:`~lightning_meta.algorithms.sequence.SequenceLearner`.

    Hooks to override: :meth:`sequence_inputs` (what one element of the sequence is); swap the
    embedding through ``embedding``.

    Reference:
        Mishra, Rohaninejad, Chen, Abbeel. "A Simple Neural Attentive Meta-Learner." ICLR 2018.

    Example::

        from lightning_meta import OmniglotDataModule, SNAIL
        from lightning_meta.models import Conv4

        model = SNAIL(Conv4(out_features=None, pooling="max", batch_norm_stats="running"), ways=5, shots=1)
        data = OmniglotDataModule("data", ways=5, shots=1, queries=1, test_queries=15, meta_batch_size=32)
        pl.Trainer(max_epochs=10, inference_mode=False).fit(model, data)
        model.predict_task(support_x, support_y, query_x)      # [M, ways] probabilities
    """

    order_seed = SUPPORT_ORDER_SEED

    def __init__(
        self,
        embedding: nn.Module,
        ways: int,
        shots: int,
        attention: Sequence[Sequence[int]] = ((64, 32), (256, 128), (512, 256)),
        tc_filters: Sequence[int] = (128, 128),
        feature_dim: Optional[int] = None,
        episodes_per_pass: int = 4,
        **kwargs: Any,
    ):
        super().__init__(ways=ways, embedding=embedding, **kwargs)
        require_positive(MODEL_ARGS + "shots", shots)
        optional_positive(MODEL_ARGS + "feature_dim", feature_dim)
        require_positive(MODEL_ARGS + "episodes_per_pass", episodes_per_pass)
        pairs = [list(pair) for pair in attention] if isinstance(attention, (list, tuple)) else []
        if not pairs or not all(len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p) for p in pairs):
            raise ConfigurationError(f"{MODEL_ARGS}attention={attention!r} is invalid: give [key_size, value_size]"
                                     " pairs of positive integers, e.g. [[64, 32], [256, 128], [512, 256]]")
        filters = list(tc_filters) if isinstance(tc_filters, (list, tuple)) else [tc_filters]
        if len(filters) != len(pairs) - 1 or not all(isinstance(f, int) and f > 0 for f in filters):
            raise ConfigurationError(
                f"{MODEL_ARGS}tc_filters={tc_filters!r} is invalid: give {len(pairs) - 1} positive integers, one TC"
                f" block between each two of the {len(pairs)} attention blocks (e.g. [128, 128])")
        self.shots, self.episodes_per_pass = shots, episodes_per_pass
        self.feature_dim = feature_dim or infer_feature_dim(self.embedding, MODEL_ARGS + "embedding")
        self.sequence = SnailSequenceModel(self.feature_dim + ways, ways * shots + 1, ways, pairs, filters)

    # ------------------------------------------------------------------ the sequence
    def sequence_inputs(self, features: Tensor, labels: Optional[Tensor]) -> Tensor:
        """Sequence elements ``[n, feature_dim + ways]``: embeddings with one-hot labels (zeros: no label)."""
        features = features.flatten(1)
        if labels is None:
            return F.pad(features, (0, self.ways))
        return torch.cat([features, self.label_inputs(labels, features.dtype)], 1)

    def sequence_logits(self, support_features: Tensor, support_y: Tensor, query_features: Tensor,
                        ways: int) -> Tensor:
        """Query logits ``[G, M, ways]`` of ``G`` episodes at once, from their embedded support sets
        ``[G, S, ...]`` (in sequence order), labels ``[G, S]`` and embedded queries ``[G, M, ...]``: each
        query appended alone after its episode's support prefix, one sequence-model call for all."""
        episodes, shots, queries = *support_y.shape, query_features.shape[1]
        prefix = self.sequence_inputs(support_features.flatten(0, 1), support_y.flatten())
        appended = self.sequence_inputs(query_features.flatten(0, 1), None)
        prefix, appended = prefix.unflatten(0, (episodes, shots)), appended.unflatten(0, (episodes, queries))
        return self.sequence.step(prefix, appended)[..., :ways]

    def group_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, order: Tensor) -> Tensor:
        """Query logits ``[G, M, ways]`` of ``G`` episodes whose support sets ``[G, S, ...]`` are read in
        ``order [G, S]``, embedded as :meth:`~lightning_meta.algorithms.sequence.SequenceLearner.embed_episodes`
        does (in training each episode on its own)."""
        support_x, support_y = gather_steps(support_x, order), support_y.gather(1, order)
        shots = support_y.shape[1]
        features = self.embed_episodes(torch.cat([support_x, query_x], 1))
        return self.sequence_logits(features[:, :shots], support_y, features[:, shots:], int(support_y.max()) + 1)

    def task_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                    order: Optional[Tensor] = None) -> Tensor:
        """One task's query logits ``[M, ways]``, its support set read in ``order`` (default: a single
        task's, :meth:`~lightning_meta.algorithms.sequence.SequenceLearner.task_order`)."""
        order = self.task_order(len(support_y), support_y.device) if order is None else order.to(support_y.device)
        return self.group_logits(support_x[None], support_y[None], query_x[None], order[None])[0]

    def groups(self, count: int) -> list[slice]:
        """The episodes of a meta-batch of ``count``, ``episodes_per_pass`` at a time."""
        return [slice(start, start + self.episodes_per_pass) for start in range(0, count, self.episodes_per_pass)]

    # ------------------------------------------------------------------ the MetaLearner contract
    def training_objective(self, params: Any, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor, order: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        logits = self.task_logits(support_x, support_y, query_x, order)
        return self.loss(logits, query_y), logits

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                      order: Optional[Tensor] = None) -> tuple[Tensor, None]:
        return self.task_logits(support_x, support_y, query_x, order).detach(), None

    def outer_backward(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The meta-batch ``episodes_per_pass`` episodes at a time: one sequence-model call and one
        backward per group (the DDP all-reduce with the last)."""
        support_x, support_y, query_x, query_y = batch.tensors()
        order = self.episode_orders(batch, support_y.shape[1], "train")
        count = batch.num_tasks
        losses, logits = [], []
        for group in self.groups(count):
            group_logits = self.group_logits(support_x[group], support_y[group], query_x[group], order[group])
            group_losses = torch.stack([self.loss(task, y) for task, y in zip(group_logits, query_y[group])])
            losses.append(self.backpropagate(group_losses, scale=1 / count, last=group.stop >= count))
            logits.append(group_logits.detach())
        return torch.cat(losses), torch.cat(logits)

    def evaluate_batch(self, batch: TaskBatch) -> tuple[Tensor, None]:
        """Query logits ``[B, M, ways]`` of every episode, ``episodes_per_pass`` at a time."""
        support_x, support_y, query_x, _ = batch.tensors()
        order = self.episode_orders(batch, support_y.shape[1], self.evaluation_split())
        logits = [self.group_logits(support_x[group], support_y[group], query_x[group], order[group])
                  for group in self.groups(batch.num_tasks)]
        return torch.cat(logits).detach(), None
