"""Episodes as sequences, for the learners that read one (SNAIL, MANN), built from the same :class:`TaskBatch`.

There is no second data path: a sequence learner receives the episodic ``TaskBatch`` every
algorithm receives and orders its examples here (through
:meth:`~lightning_meta.algorithms.sequence.SequenceLearner.episode_orders`).  Orders are drawn from a
generator seeded by the episode's address (its index in ``TaskBatch.index``, the split and, in
training, the epoch), so a task's sequence is the same whatever batch it is in, on every DDP rank
and on resume.

* :func:`episode_permutations`: one random order per task, a pure function of its address.
* :class:`OrderedTasks`: a ``TaskBatch`` carrying such an order per task, which the base class's
  per-task loop (and vmap) hands to ``training_objective``/``evaluate_task`` as a fifth tensor
  (Reptile's inner mini-batches).
* :func:`gather_steps`: examples ``[B, T, ...]`` in such orders (SNAIL's support sequences).
* :func:`label_stream`: MANN's stream: the support and query examples of a task pooled and
  shuffled, each with its label, the previous step's label (the one-step delay; ``-1`` = no label
  yet) and the how-many-th presentation of its class it is (1, 2, ...).

Example::

    orders = episode_permutations(batch, size=batch.support_x.shape[1], salt=7, split="train", epoch=0)
    stream = label_stream(batch, episode_permutations(batch, 50, salt=7, split="test"))
    stream.x.shape, stream.previous[:, 0]          # [B, 50, 1, 28, 28], all -1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from lightning_meta.data.episodes import episode_generators
from lightning_meta.tasks import TaskBatch


def episode_addresses(batch: TaskBatch, fallback_start: int = 0) -> list[int]:
    """Each task's episode number: ``batch.index`` (padding entries ``-1`` read as 0), or, for a batch
    built by hand without an index, ``fallback_start + i`` (e.g. ``global_step * num_tasks``)."""
    if batch.index is not None:
        return [max(int(i), 0) for i in batch.index.tolist()]
    return [fallback_start + i for i in range(batch.num_tasks)]


def episode_permutations(batch: TaskBatch, size: int, salt: int, split: str, epoch: Optional[int] = None,
                         fallback_start: int = 0) -> Tensor:
    """A random permutation of ``range(size)`` per task, ``[B, size]`` on the batch's device, drawn from
    ``episode_generator(salt, split, address, epoch)`` (``split``: ``"train"``, ``"val"`` or ``"test"``)."""
    orders = [torch.randperm(size, generator=generator)
              for generator in episode_generators(salt, split, episode_addresses(batch, fallback_start), epoch)]
    return torch.stack(orders).to(batch.support_x.device)


@dataclass
class OrderedTasks(TaskBatch):
    """A :class:`TaskBatch` that also carries an order per task, ``order [B, L]``.

    ``tensors()`` returns it as a fifth tensor, so ``MetaLearner.outer_backward`` and
    ``MetaLearner.evaluate_batch`` hand it to ``training_objective(..., order)`` and
    ``evaluate_task(..., order)`` in loop and vmap mode alike (Reptile's inner mini-batches).
    """

    order: Optional[Tensor] = None

    def tensors(self) -> tuple[Tensor, ...]:  # type: ignore[override]
        return self.support_x, self.support_y, self.query_x, self.query_y, self.order


def gather_steps(values: Tensor, order: Tensor) -> Tensor:
    """``values [B, T, ...]`` reordered along dim 1 by ``order [B, T]``.  (Indexing copies whole examples;
    ``gather`` would read an index per pixel, three times slower on a meta-batch of image streams.)"""
    return values[torch.arange(len(order), device=order.device).unsqueeze(1), order]


@dataclass
class LabelStream:
    """A task as one labelled stream: ``x [B, T, ...]``, ``y [B, T]``; ``previous [B, T]`` is the label
    of step ``t - 1`` (``-1`` at ``t = 0``), what the learner sees beside ``x[:, t]``; ``presentation
    [B, T]`` counts the presentations of ``y[:, t]``'s class up to and including step ``t`` (1-based)."""

    x: Tensor
    y: Tensor
    previous: Tensor
    presentation: Tensor


def label_stream(batch: TaskBatch, order: Tensor) -> LabelStream:
    """The support and query examples of each task pooled (support first) and reordered by ``order [B, T]``."""
    x = gather_steps(torch.cat([batch.support_x, batch.query_x], 1), order)
    y = gather_steps(torch.cat([batch.support_y, batch.query_y], 1), order)
    previous = torch.cat([torch.full_like(y[:, :1], -1), y[:, :-1]], 1)
    ways = int(y.max()) + 1
    presentation = (torch.nn.functional.one_hot(y, ways).cumsum(1) * torch.nn.functional.one_hot(y, ways)).sum(-1)
    return LabelStream(x, y, previous, presentation)
