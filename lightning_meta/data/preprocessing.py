"""``ImagePreprocessing``: how an image data module turns image files into model inputs.

One object per data module, used both to decode its training images and to decode the images of
a prediction (``support_dir`` / ``query_dir``), so a trained model always sees new images exactly
as it saw its training images: same channels, size, resampling filter, inversion and scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from lightning_meta.data.class_images import scale_pixels
from lightning_meta.data.image_files import decode_images, resize_uint8

RESAMPLING = ("lanczos", "bilinear")


@dataclass(frozen=True)
class ImagePreprocessing:
    """Decoding and scaling of one data module's images.

    Args:
        channels: 1 (greyscale) or 3 (RGB); every image is converted to it when ``converts_channels``.
        image_size: resize every image to ``image_size x image_size``; ``None`` keeps the stored size,
            which must then be ``stored_size``.
        invert: ``255 - x`` after decoding (bright strokes on black, as for Omniglot).
        resampling: ``"lanczos"`` (PIL, while decoding) or ``"bilinear"`` (antialiased, torchvision,
            on the decoded uint8 tensor, as mini-ImageNet's pickled arrays are resized).
        mean, std: per-channel standardisation after scaling pixels to ``[0, 1]`` (``None``: none).
        stored_size: ``(width, height)`` every image must have when ``image_size`` is ``None``.
        converts_channels: whether training converted images of other channels (``False``: an image
            must already be greyscale for 1 channel, colour for 3, as for arrays stored in an .npz).

    Example::

        pre = ImagePreprocessing(channels=1, image_size=28, invert=True)      # Omniglot
        x = pre.to_float(pre.decode(paths))                                   # [N, 1, 28, 28] in [0, 1]
    """

    channels: int
    image_size: Optional[int] = None
    invert: bool = False
    resampling: str = "lanczos"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    stored_size: Optional[tuple[int, int]] = None
    converts_channels: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {self.resampling!r}")

    @property
    def resizes(self) -> bool:
        return self.image_size is not None

    def decode(self, paths: Sequence[Path], decoder: Callable[..., Tensor] = decode_images) -> Tensor:
        """uint8 ``[N, channels, H, W]`` of ``paths`` (what training stores before scaling).

        ``decoder`` is :func:`~lightning_meta.data.image_files.decode_images` or a stand-in with its
        signature (data modules pass the one they import, so tests can observe their decoding).
        """
        if self.resampling == "lanczos" or self.image_size is None:
            return decoder(paths, self.channels, self.image_size, invert=self.invert)
        # bilinear: decode each image at its own size, then resize the uint8 tensor as training does
        images = [self.resize(decoder([path], self.channels, None, invert=self.invert)) for path in paths]
        if not images:
            return torch.zeros(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        return torch.cat(images)

    def resize(self, images: Tensor) -> Tensor:
        """Resize decoded uint8 images ``[N, C, H, W]`` with this module's tensor resampling."""
        if self.image_size is None:
            return images
        return resize_uint8(images, self.image_size)

    def to_float(self, images: Tensor) -> Tensor:
        """Model inputs: uint8 ``[N, C, H, W]`` scaled to ``[0, 1]`` and standardised (as in training)."""
        mean = None if self.mean is None else torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = None if self.std is None else torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return scale_pixels(images, mean, std)

    def load(self, paths: Sequence[Path]) -> Tensor:
        """Decoded and scaled model inputs ``[N, C, H, W]`` of ``paths``."""
        return self.to_float(self.decode(paths))
