"""Training-time augmentation of episodes: random resized crop, horizontal flip, colour jitter.

The augmentations of the few-shot papers (Chen et al. 2019, "A Closer Look at Few-shot
Classification": ``RandomResizedCrop``, ``ImageJitter(brightness=0.4, contrast=0.4, color=0.4)``,
``RandomHorizontalFlip``; the same family as MetaOptNet's and FEAT's), applied to the uint8 images of
a whole meta-batch at once in the loader workers:

* **Seeded by the episode's address.** Each episode's parameters come from its own generator (the
  one its classes and samples were drawn from, :func:`~lightning_meta.data.episodes.episode_generator`
  of ``(seed, "train", index, epoch)``), after those draws: an augmented episode is the same whatever
  the number of workers, processes or a resume, and with augmentation off no draw is added (the
  episodes are the un-augmented ones bit for bit).
* **Batched.** One ``torch.rand`` per episode draws all its images' parameters; crop and flip are one
  affine resampling (``grid_sample``) of all the images, jitter a few tensor operations.
* **Training only.** The data module gives it to the training stream alone: validation and test
  episodes are never augmented.

Random resized crop differs from torchvision's in one way: a box that does not fit (scale x aspect
ratio beyond the image) is clamped to the image instead of redrawn up to 10 times (a batched draw
cannot loop per image); the scale ``(0.08, 1)`` and ratio ``(3/4, 4/3)`` ranges are torchvision's.
The crop is resampled bilinearly to the input size.  Jitter applies brightness, contrast and saturation
in that fixed order (as Chen et al.'s ``ImageJitter``), each by a factor uniform in ``[1 - 0.4, 1 + 0.4]``,
fused into one pass and clamped to ``[0, 255]`` once at the end (PIL clamps after each of the three, which
differs only where a pixel saturates half-way); saturation leaves one-channel images as they are.

Example::

    augment = EpisodeAugmentation(["crop", "flip", "jitter"])
    images = augment(images, generators, counts)   # uint8 [n, C, H, W] in, floats in [0, 255] out
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: the augmentations, in the order they apply
AUGMENTATIONS = ("crop", "flip", "jitter")
#: ITU-R 601 luma weights (PIL's ``convert("L")``, torchvision's ``rgb_to_grayscale``)
LUMA = (0.299, 0.587, 0.114)
#: random numbers drawn per image: scale, log ratio, x, y, flip, brightness, contrast, saturation
DRAWS = 8


class EpisodeAugmentation:
    """Random resized crop, horizontal flip and colour jitter of the images of a meta-batch (see the module
    docstring), each episode's from its own generator.

    Args:
        names: the augmentations to apply, of ``"crop"``, ``"flip"``, ``"jitter"`` (all by default).
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        jitter: the strength of brightness, contrast and saturation jitter (factors in ``1 +- jitter``).

    Example::

        augment = EpisodeAugmentation(["flip", "jitter"])
        out = augment(images, [torch.Generator().manual_seed(0)], [len(images)])
    """

    def __init__(self, names: Sequence[str] = AUGMENTATIONS, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), jitter: float = 0.4):
        unknown = [name for name in names if name not in AUGMENTATIONS]
        if unknown:
            raise ConfigurationError(f"{DATA_ARGS}augment={list(names)}: unknown augmentation {unknown[0]!r}; choose"
                                     f" from {list(AUGMENTATIONS)}, or true for all of them")
        self.names = tuple(name for name in AUGMENTATIONS if name in names)
        self.scale, self.ratio, self.jitter = scale, ratio, jitter

    def __repr__(self) -> str:
        return f"EpisodeAugmentation({list(self.names)})"

    def __call__(self, images: Tensor, generators: Sequence[torch.Generator], counts: Sequence[int]) -> Tensor:
        """``images`` (uint8 ``[n, C, H, W]``, the ``counts[e]`` images of episode ``e`` in turn) augmented,
        episode ``e``'s parameters drawn from ``generators[e]``: floats in ``[0, 255]``, same shape (not
        rounded back to uint8: :func:`~lightning_meta.data.class_images.scale_pixels` takes them as they are)."""
        if not self.names or images.shape[0] == 0:
            return images
        draws = torch.cat([torch.rand(count, DRAWS, generator=g) for g, count in zip(generators, counts)])
        x = images.float()
        flip = draws[:, 4] < 0.5
        if "crop" in self.names:
            x = self.resized_crop(x, draws, flip if "flip" in self.names else torch.zeros_like(flip))
        elif "flip" in self.names:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if "jitter" in self.names:
            x = self.color_jitter(x, draws[:, 5:8])
        return x.clamp_(0, 255)

    def resized_crop(self, x: Tensor, draws: Tensor, flip: Tensor) -> Tensor:
        """A random box of each image (area fraction in ``scale``, aspect in ``ratio``, clamped to the
        image), mirrored where ``flip``, resampled bilinearly to the image's size: one ``grid_sample``."""
        n, _, height, width = x.shape
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * draws[:, 0]
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * draws[:, 1])
        # box sides as fractions of the image's: w * h = area, (w * width) / (h * height) = aspect
        w = torch.sqrt(area * aspect * height / width).clamp(max=1.0)
        h = torch.sqrt(area / aspect * width / height).clamp(max=1.0)
        left, top = (1 - w) * draws[:, 2], (1 - h) * draws[:, 3]
        # the box is axis-aligned: each output column samples one input column, each row one row (a grid
        # built from its two axes; affine_grid's batched matrix product costs more than the resampling)
        columns = (torch.arange(width, dtype=x.dtype) + 0.5) * (2 / width) - 1
        rows = (torch.arange(height, dtype=x.dtype) + 0.5) * (2 / height) - 1
        grid_x = torch.where(flip, -w, w).unsqueeze(1) * columns + (2 * left + w - 1).unsqueeze(1)
        grid_y = h.unsqueeze(1) * rows + (2 * top + h - 1).unsqueeze(1)
        grid = torch.stack(torch.broadcast_tensors(grid_x.view(n, 1, width), grid_y.view(n, height, 1)), -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def color_jitter(self, x: Tensor, draws: Tensor) -> Tensor:
        """Brightness ``b``, contrast ``c``, then saturation ``s`` (PIL ``ImageEnhance`` semantics) by factors
        ``1 +- jitter``, fused into one pass: ``s c b x + (1 - s) c b gray(x) + (1 - c) b mean(gray(x))``."""
        b, c, s = (1 + self.jitter * (2 * draws - 1)).view(-1, 3, 1, 1, 1).unbind(1)
        gray = luma(x)
        offset = (1 - c) * b * gray.mean((1, 2, 3), keepdim=True)
        if x.shape[1] != 3:  # saturation leaves a greyscale image as it is
            return (x * (c * b)).add_(offset)
        return (x * (s * c * b)).add_(torch.addcmul(offset, gray, (1 - s) * c * b))


def luma(x: Tensor) -> Tensor:
    """The greyscale ``[n, 1, H, W]`` of ``x`` (``[n, 3, H, W]``: luma weights; one channel: itself)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    weights = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def make_augmentation(augment: Union[bool, Sequence[str], None]) -> "EpisodeAugmentation | None":
    """The augmentation ``augment`` asks for: ``True`` all of :data:`AUGMENTATIONS`, a list those named,
    ``False``/``None``/``[]`` none (``None`` returned)."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return EpisodeAugmentation()
    if isinstance(augment, str):
        augment = [augment]
    names = list(augment)
    return EpisodeAugmentation(names) if names else None
