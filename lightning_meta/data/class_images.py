"""Images grouped by class, decoded once and held as one uint8 tensor, drawn as episodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import Tensor

from lightning_meta.tasks import Task, TaskBatch

if TYPE_CHECKING:
    from lightning_meta.data.augmentation import EpisodeAugmentation


class ClassImages:
    """The classes of one split, drawn as N-way K-shot tasks.

    ``images`` is a uint8 tensor ``[total, C, H, W]`` holding the samples of class 0, then class 1,
    ...; ``counts[c]`` is the number of samples of class ``c``.  ``rotations`` (degrees, multiples of
    90) turn every class into ``len(rotations)`` classes, as Omniglot's augmentation does on
    meta-train: class ``c + k * base_classes`` is class ``c`` rotated by ``rotations[k]``, applied to
    every sample of the class, never per task.  Pixels become floats in ``[0, 1]``, then
    ``(x - mean) / std`` per channel when ``mean``/``std`` are given.

    Example::

        pool = ClassImages.from_array(x)             # x: uint8 [classes, samples, H, W]
        task = pool.sample(torch.Generator().manual_seed(0), ways=5, shots=1, queries=15)
        task.support_x.shape                          # torch.Size([5, 1, H, W])
    """

    #: ``sample_batch`` takes ``augment=`` (see :mod:`lightning_meta.data.augmentation`)
    supports_augmentation = True

    def __init__(
        self,
        images: Tensor,
        counts: Sequence[int],
        names: Optional[Sequence[str]] = None,
        rotations: Sequence[int] = (0,),
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"ClassImages expects uint8 images [total, C, H, W], got {images.dtype} {tuple(images.shape)}")
        counts = [int(c) for c in counts]
        if sum(counts) != images.shape[0]:
            raise ValueError(f"class counts sum to {sum(counts)} but there are {images.shape[0]} images")
        if any(r % 90 for r in rotations):
            raise ValueError(f"rotations must be multiples of 90 degrees, got {list(rotations)}")
        self.images = images
        self.counts = torch.tensor(counts, dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.counts.cumsum(0)])
        # the same as Python numbers, for the per-task loop of sample_batch
        self.class_sizes, self.first_sample = self.counts.tolist(), self.offsets.tolist()
        self.names = list(names) if names is not None else [str(i) for i in range(len(counts))]
        self.rotations = [int(r) // 90 % 4 for r in rotations]
        channels = images.shape[1]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(channels, 1, 1)

    @classmethod
    def from_array(cls, array: Tensor, **kwargs) -> "ClassImages":
        """From ``[classes, samples, H, W]`` (one channel) or ``[classes, samples, C, H, W]``."""
        array = torch.as_tensor(array)
        if array.dim() == 4:
            array = array.unsqueeze(2)
        classes, samples = array.shape[:2]
        return cls(array.reshape(classes * samples, *array.shape[2:]).contiguous(), [samples] * classes, **kwargs)

    @property
    def base_classes(self) -> int:
        return len(self.counts)

    @property
    def num_classes(self) -> int:
        return self.base_classes * len(self.rotations)

    @property
    def min_samples(self) -> int:
        return int(self.counts.min()) if len(self.counts) else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_samples(self, c: int, picks: Tensor) -> Tensor:
        """Samples ``picks`` of (possibly rotated) class ``c`` as floats ``[len(picks), C, H, W]``."""
        base, turn = c % self.base_classes, self.rotations[c // self.base_classes]
        x = self.images.index_select(0, self.offsets[base] + picks)
        if turn:
            x = torch.rot90(x, turn, dims=(-2, -1))
        return scale_pixels(x, self.mean, self.std)

    def sample(self, generator: torch.Generator, ways: int, shots: int, queries: int) -> Task:
        """One N-way K-shot task drawn from ``generator``: :meth:`sample_batch` of that generator alone."""
        return self.sample_batch([generator], ways, shots, queries)[0]

    def sample_batch(self, generators: Sequence[torch.Generator], ways: int, shots: int, queries: int,
                     augment: Optional["EpisodeAugmentation"] = None) -> TaskBatch:
        """One N-way K-shot task per generator, stacked ``[len(generators), ...]`` (no ``index``).

        From each generator in turn: ``ways`` distinct classes, then ``shots + queries`` distinct samples
        of each class, in that order; labels ``0 .. ways - 1`` in the order the classes were drawn (the
        first ``shots`` samples of a class are its support).  Only these draws run task by task: the
        images of all tasks are selected, rotated, augmented (``augment``, training only: its draws
        follow the task's own from the same generator) and scaled together, the same images as
        :meth:`class_samples` per class (a training step draws hundreds of small tasks, where
        per-task tensor calls would cost more than the step's learning).
        """
        size = shots + queries
        picks, first_samples, turns = [], [], []
        for generator in generators:
            for c in torch.randperm(self.num_classes, generator=generator)[:ways].tolist():
                base = c % self.base_classes
                picks.append(torch.randperm(self.class_sizes[base], generator=generator)[:size])
                first_samples.append(self.first_sample[base])
                turns.append(self.rotations[c // self.base_classes])
        rows = torch.cat(picks) + torch.tensor(first_samples).repeat_interleave(size)
        x = self.select(rows, torch.tensor(turns).repeat_interleave(size), generators,
                        [ways * size] * len(generators), augment)
        x = x.unflatten(0, (len(generators), ways, size))
        labels = torch.arange(ways).expand(len(generators), ways)
        return TaskBatch(
            x[:, :, :shots].flatten(1, 2).contiguous(), labels.repeat_interleave(shots, dim=1),
            x[:, :, shots:].flatten(1, 2).contiguous(), labels.repeat_interleave(queries, dim=1),
        )

    def select(self, rows: Tensor, turns: Tensor, generators: Sequence[torch.Generator] = (),
               counts: Sequence[int] = (), augment: Optional["EpisodeAugmentation"] = None) -> Tensor:
        """Images ``rows`` (of :attr:`images`), turned by ``turns`` quarter turns, augmented by ``augment`` (the
        ``counts[e]`` images of episode ``e`` from ``generators[e]``), scaled to floats ``[len(rows), C, H, W]``."""
        x = rotate_images(self.images.index_select(0, rows), turns)
        if augment is not None:
            x = augment(x, generators, counts)
        return scale_pixels(x, self.mean, self.std)

    def subset(self, classes: Sequence[int]) -> "ClassImages":
        """The base classes ``classes`` (in that order) alone, with the same rotations and scaling."""
        index = torch.as_tensor(list(classes), dtype=torch.long)
        rows = torch.cat([torch.arange(int(self.offsets[c]), int(self.offsets[c + 1])) for c in index.tolist()]
                         or [torch.zeros(0, dtype=torch.long)])
        subset = ClassImages(self.images.index_select(0, rows), self.counts[index].tolist(),
                             [self.names[c] for c in index.tolist()], [90 * r for r in self.rotations])
        subset.mean, subset.std = self.mean, self.std
        return subset


def rotate_images(images: Tensor, turns: Tensor) -> Tensor:
    """``images [n, C, H, W]``, image ``i`` turned by ``turns[i]`` quarter turns (``torch.rot90`` over the
    last two dimensions); one ``rot90`` per distinct turn.  (``index_select``, not ``[]``: indexing uint8
    images along dim 0 is an order of magnitude slower.)"""
    present = turns.unique().tolist()
    if present == [0]:
        return images
    groups = [(turns == turn).nonzero()[:, 0] for turn in present]
    turned = torch.cat([torch.rot90(images.index_select(0, rows), turn, dims=(-2, -1))
                        for turn, rows in zip(present, groups)])
    return turned.index_select(0, torch.cat(groups).argsort())


def scale_pixels(images: Tensor, mean: Optional[Tensor] = None, std: Optional[Tensor] = None) -> Tensor:
    """uint8 pixels (or floats in ``[0, 255]``, augmented ones) to floats in ``[0, 1]``, then ``(x - mean) / std``
    per channel when given (``[C, 1, 1]``).

    The one scaling of every image data module, shared by training episodes and prediction.
    """
    x = images.float().div_(255) if images.dtype == torch.uint8 else images / 255
    if mean is not None:
        x = (x - mean) / std
    return x
