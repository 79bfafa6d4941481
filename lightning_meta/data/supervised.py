"""Class-balanced supervised batches ``(x, y)`` of the meta-training classes: addressable, split
across ranks, resumable mid-epoch.

Methods that pre-train on ordinary batches (the fine-tuning baselines of Chen et al. 2019) train on
``(x [B, C, H, W], y [B])`` with ``y`` the index of a meta-training class (``0 ..
num_train_classes - 1``, each rotation of a rotated class a class of its own, as in the episodes);
validation and test stay episodic.  :class:`~lightning_meta.data.EpisodicDataModule` serves them with
``train_batches="supervised"`` and ``batch_size``.

* **Class-balanced.** An epoch is ``R`` rounds, ``R`` the fewest samples of a meta-training class.
  In each round every class gives one sample, the classes in an order permuted per round; each
  class's samples are drawn without replacement from a permutation drawn per epoch.  So every class
  appears exactly ``R`` times an epoch (with equal class sizes, an epoch is one pass over the split),
  and ``B`` consecutive samples hold no class more than ``ceil(B / classes) + 1`` times.
* **Addressable.** The order of epoch ``e`` is a pure function of ``(seed, e)``; batch ``t`` is
  positions ``t*B .. t*B + B - 1`` of it (a last partial batch is dropped).  With ``W`` processes,
  rank ``r`` takes the ``B/W`` positions from ``t*B + r*B/W`` (the root data module's
  :func:`~lightning_meta.data.root.train_plan`): the union of the ranks' batches is the
  single-process batch.
* **Resumable.** The stream is served by :class:`~lightning_meta.data.root.ItemLoader`, the
  stateful loader of every data module: a run resumed mid-epoch continues with the next batch.

Example::

    dm = NpzDataModule("hanzi.npz", train_batches="supervised", batch_size=16, test_ways=5, test_shots=1)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))     # x [16, 1, 28, 28], y [16] in 0 .. dm.num_train_classes - 1
"""

from __future__ import annotations

from typing import Iterator, Literal, Optional, Protocol

import numpy as np
import torch
from torch import Tensor

from lightning_meta.data.root import ItemStream, train_plan
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: what a data module's training batches are: episodes, or supervised ``(x, y)`` batches
TrainBatches = Literal["episodes", "supervised"]
#: distinguishes the seeds of supervised epochs from those of episodes (which use 0, 1, 2 for the splits)
_SUPERVISED_TAG = 3


class ClassSource(Protocol):
    """A split whose samples can be read per class (:class:`~lightning_meta.data.ClassImages` is one)."""

    num_classes: int
    base_classes: int
    counts: Tensor  # samples of each base class
    rotations: list

    def class_samples(self, c: int, picks: Tensor) -> Tensor: ...


def supervised_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of the order of one supervised epoch, a pure function of ``(seed, epoch)``."""
    state = np.random.SeedSequence([int(seed), _SUPERVISED_TAG, int(epoch) + 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def class_counts(source: ClassSource) -> Tensor:
    """Samples of every class of ``source``, rotated classes included (class ``c + k * base`` is ``c``)."""
    return source.counts.repeat(len(source.rotations))


def epoch_order(counts: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Classes and sample indices ``[classes * rounds]`` of one epoch (see the module docstring)."""
    classes, rounds = len(counts), int(counts.min())
    largest = int(counts.max())
    # a permutation of each class's samples: sort random keys, invalid slots (beyond the count) last
    keys = torch.rand(classes, largest, generator=generator)
    keys[torch.arange(largest) >= counts.unsqueeze(1)] = 2.0
    picks = keys.argsort(1)[:, :rounds]                                         # [classes, rounds]
    order = torch.rand(rounds, classes, generator=generator).argsort(1)        # [rounds, classes]
    round_index = torch.arange(rounds).unsqueeze(1).expand(rounds, classes)
    return order.flatten(), picks[order, round_index].flatten()


def check_supervised_split(source_name: str, num_classes: int, min_samples: Optional[int], batch_size: int) -> None:
    """Reject supervised batches that the meta-training split cannot supply, naming the field to change."""
    if num_classes < 2:
        raise ConfigurationError(
            f"{DATA_ARGS}train_batches='supervised': the '{source_name}' split has {num_classes} class(es); "
            "supervised pre-training needs at least 2")
    if min_samples is not None and min_samples < 1:
        raise ConfigurationError(
            f"{DATA_ARGS}train_batches='supervised': a class of the '{source_name}' split is empty")
    if min_samples is not None and num_classes * min_samples < batch_size:
        raise ConfigurationError(
            f"{DATA_ARGS}batch_size={batch_size} exceeds a class-balanced epoch of the '{source_name}' split "
            f"({num_classes} classes x {min_samples} samples): lower batch_size to at most {num_classes * min_samples}")


class SupervisedStream(ItemStream):
    """The supervised batches ``(x, y)`` of one rank, epoch by epoch (see the module docstring).

    ``epoch`` and ``start`` (batches already trained in a resumed epoch) are set by
    :class:`~lightning_meta.data.root.ItemLoader` before each iteration.
    """

    def __init__(self, source: ClassSource, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 epoch: int = 0):
        if not hasattr(source, "class_samples"):
            raise ConfigurationError(
                f"{DATA_ARGS}train_batches='supervised' needs a split of image classes; {type(source).__name__} draws "
                "whole tasks only: use train_batches: episodes")
        if batch_size % world_size:
            raise ConfigurationError(
                f"{DATA_ARGS}batch_size={batch_size} does not divide across {world_size} processes (devices x nodes):"
                f" choose a multiple of {world_size}")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.counts = class_counts(source)
        super().__init__(train_plan(self.samples_per_epoch // batch_size, batch_size, rank, world_size), epoch)

    @property
    def samples_per_epoch(self) -> int:
        return len(self.counts) * int(self.counts.min())

    def order(self, epoch: int) -> tuple[Tensor, Tensor]:
        """Classes and sample indices of every position of ``epoch``."""
        return epoch_order(self.counts, supervised_generator(self.seed, epoch))

    def batch(self, position: int, order: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        """Batch ``position`` of the current epoch: images ``[B/W, C, H, W]`` and class indices ``[B/W]``."""
        classes, picks = order if order is not None else self.order(int(self.epoch or 0))
        rows = self.plan[position]  # positions in the epoch's order of this rank's share of the batch
        y = classes[rows]
        x = torch.cat([self.source.class_samples(int(c), picks[i:i + 1]) for c, i in zip(y.tolist(), rows)])
        return x, y

    def batches(self, positions: range) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(int(self.epoch or 0))  # drawn once per iteration
        return (self.batch(position, order) for position in positions)
