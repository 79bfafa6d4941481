"""Images grouped by class, decoded once and held as one uint8 tensor, drawn as episodes."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_meta.tasks import Task


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
        classes = torch.randperm(self.num_classes, generator=generator)[:ways].tolist()
        support, query = [], []
        for c in classes:
            count = int(self.counts[c % self.base_classes])
            picks = torch.randperm(count, generator=generator)[: shots + queries]
            x = self.class_samples(c, picks)
            support.append(x[:shots])
            query.append(x[shots:])
        labels = torch.arange(ways)
        return Task(
            torch.cat(support), labels.repeat_interleave(shots),
            torch.cat(query), labels.repeat_interleave(queries),
        )


def scale_pixels(images: Tensor, mean: Optional[Tensor] = None, std: Optional[Tensor] = None) -> Tensor:
    """uint8 pixels to floats in ``[0, 1]``, then ``(x - mean) / std`` per channel when given (``[C, 1, 1]``).

    The one scaling of every image data module, shared by training episodes and prediction.
    """
    x = images.float().div_(255)
    if mean is not None:
        x = (x - mean) / std
    return x
