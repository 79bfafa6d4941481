"""Addressable episodes, split across ranks, resumable mid-epoch.

* Episode ``i`` of training epoch ``e`` is drawn from a generator seeded by ``(seed, "train", e, i)``;
  validation and test episode ``i`` by ``(seed, split, i)``: a fixed set, identical whatever the
  meta-batch size, the number of workers or the number of processes.
* Training step ``t`` uses episodes ``t*B .. t*B + B - 1``.  With ``W`` processes, rank ``r`` draws
  the ``B/W`` episodes starting at ``t*B + r*B/W``, so the union of the ranks' batches at step ``t``
  is the single-process batch at step ``t`` (Lightning's ``DistributedSampler`` would instead give
  every rank ``B`` tasks of its own).
* Evaluation episodes are dealt to ranks by ``i % W``; a rank short of episodes pads its last batch
  with a repeated episode whose ``index`` is ``-1``, which evaluation drops, so every rank runs the
  same number of batches and each episode counts once.
* :class:`EpisodeLoader` is stateful (``state_dict``/``load_state_dict``, Lightning's protocol): a
  run resumed from a mid-epoch checkpoint continues with the episode after the last one trained.

Batches are built in an ``IterableDataset`` (whole meta-batches, ``batch_size=None``), so Lightning
never swaps in a sampler of its own; workers take every ``num_workers``-th batch in order.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_meta.tasks import Task, TaskBatch

SPLITS = ("train", "val", "test")

# Each worker takes every num_workers-th batch (EpisodeStream.__iter__), so the length is exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class EpisodeSource(Protocol):
    """Anything that draws one N-way K-shot task from a seeded generator.

    ``num_classes`` and ``min_samples`` (the fewest samples of any class; ``None`` when unbounded,
    as for regression) let the data module reject impossible settings before training.
    """

    num_classes: int
    min_samples: Optional[int]

    def sample(self, generator: torch.Generator, ways: int, shots: int, queries: int) -> Task: ...


def episode_generator(seed: int, split: str, index: int, epoch: Optional[int] = None) -> torch.Generator:
    """The generator of one episode, a pure function of its address."""
    # epoch + 1: numpy's SeedSequence pads its entropy with zeros, so a trailing 0 would collide
    key = [seed, SPLITS.index(split), index] if epoch is None else [seed, SPLITS.index(split), index, epoch + 1]
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


def train_plan(num_batches: int, meta_batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Episode indices of each training batch on ``rank`` (see the module docstring)."""
    per_rank = meta_batch_size // world_size
    return [[t * meta_batch_size + rank * per_rank + j for j in range(per_rank)] for t in range(num_batches)]


def eval_plan(episodes: int, per_rank: int, rank: int, world_size: int) -> list[list[int]]:
    """Evaluation episodes of ``rank`` in batches of ``per_rank``; padding entries are ``-1``."""
    mine = list(range(rank, episodes, world_size))
    longest = -(-episodes // world_size)
    mine += [-1] * (longest - len(mine))
    return [mine[i:i + per_rank] for i in range(0, len(mine), per_rank)]


class EpisodeStream(IterableDataset):
    """The meta-batches of one split for one rank, as :class:`TaskBatch` objects.

    ``epoch`` is ``None`` for the fixed validation/test sets.  ``start`` skips the batches already
    trained in a resumed epoch.
    """

    def __init__(
        self,
        source: EpisodeSource,
        split: str,
        plan: Sequence[Sequence[int]],
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        epoch: Optional[int] = None,
    ):
        super().__init__()
        self.source, self.split, self.plan = source, split, [list(b) for b in plan]
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        self.epoch = epoch
        self.start = 0

    def __len__(self) -> int:
        return len(self.plan)

    def episode(self, index: int) -> Task:
        generator = episode_generator(self.seed, self.split, max(index, 0), self.epoch)
        return self.source.sample(generator, self.ways, self.shots, self.queries)

    def batch(self, position: int) -> TaskBatch:
        indices = self.plan[position]
        return TaskBatch.stack([self.episode(i) for i in indices], index=indices)

    def __iter__(self):
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        for position in range(self.start + worker_id, len(self.plan), workers):
            yield self.batch(position)


class EpisodeLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpisodeStream` that knows its epoch and resumes mid-epoch.

    ``clock()`` returns ``(epoch, batches already trained in it)`` from the Trainer; without a
    Trainer the loader counts epochs itself.  Training streams read the epoch on every ``iter``
    (and, after ``load_state_dict``, continue where the checkpoint stopped); evaluation streams are
    fixed.
    """

    def __init__(self, stream: EpisodeStream, num_workers: int = 0, pin_memory: bool = False,
                 clock: Optional[Callable[[], tuple[int, int]]] = None):
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=False)
        self.stream = stream
        self.clock = clock
        self._resume: Optional[dict[str, int]] = None
        self._iterations = 0

    def __iter__(self):
        if self.stream.epoch is not None:
            if self._resume is not None:
                # The first iteration after a restore continues the checkpoint's epoch; a checkpoint
                # taken after its last batch continues with the next epoch (Lightning counts that
                # epoch as completed only after this call).
                epoch, start = self._resume["epoch"], self._resume["batches_done"]
                if start >= len(self.stream):
                    epoch, start = epoch + 1, 0
                self._resume = None
            else:
                epoch = self.clock()[0] if self.clock is not None else self._iterations
                start = 0
            self.stream.epoch, self.stream.start = epoch, start
        self._iterations += 1
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        done = self.clock()[1] if self.clock is not None else 0
        return {"epoch": int(self.stream.epoch or 0), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
