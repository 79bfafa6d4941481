"""Shared helpers of the image dataset adapters: list class folders, read image headers, decode
to uint8 tensors in threads, cache the decoded tensors next to the data, split classes by seed.

Every check that can be made from a file listing or from image headers runs before any image is
decoded, so a wrong setting fails within seconds with a :class:`ConfigurationError` that names the
``data.init_args`` field to change.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_meta.errors import DATA_ARGS, ConfigurationError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
#: PIL modes decoded as one channel; every other mode is decoded as RGB.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
CACHE_VERSION = 1


def decode_workers() -> int:
    """Threads used to read and decode images (PIL releases the GIL while decoding and resizing)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, available))


# --------------------------------------------------------------------------- base class
# --------------------------------------------------------------------------- listing
@dataclass
class ClassFiles:
    """Image files grouped by class: ``names[c]`` and its sorted ``files[c]``."""

    names: list[str] = field(default_factory=list)
    files: list[list[Path]] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [len(f) for f in self.files]

    @property
    def min_count(self) -> int:
        return min(self.counts) if self.files else 0

    def __len__(self) -> int:
        return len(self.names)

    def select(self, indices: Sequence[int]) -> "ClassFiles":
        return ClassFiles([self.names[i] for i in indices], [self.files[i] for i in indices])

    def flat(self) -> list[Path]:
        return [path for files in self.files for path in files]

    def __add__(self, other: "ClassFiles") -> "ClassFiles":
        return ClassFiles(self.names + other.names, self.files + other.files)


def visible_subfolders(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder``, sorted, hidden ones (``.x``) left out."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def image_names(folder: Path) -> list[str]:
    """Names of the image files in ``folder`` (by extension), sorted, hidden ones left out."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())


def missing_folder(field_name: str, value: Any, path: Path, what: str, fix: str) -> ConfigurationError:
    return ConfigurationError(f"{DATA_ARGS}{field_name}={value!r}: {what} {path.resolve()} does not exist: {fix}")


def list_class_folders(folder: Path, field_name: str, value: Any, prefix: str = "") -> ClassFiles:
    """The class sub-folders of ``folder`` and their images (ImageFolder layout).

    Raises :class:`ConfigurationError` naming ``data.init_args.<field_name>`` when ``folder`` holds
    no class folder or a class folder holds no image.  ``prefix`` is prepended to class names.
    """
    classes = visible_subfolders(folder)
    if not classes:
        raise ConfigurationError(
            f"{DATA_ARGS}{field_name}={value!r}: {folder.resolve()} holds no class folders: expected one sub-folder"
            f" of images per class (ImageFolder layout: {folder}/<class>/<image>.png); point"
            f" --data.init_args.{field_name} at such a folder")
    listing = ClassFiles()
    for name in classes:
        path = folder / name
        files = image_names(path)
        if not files:
            raise ConfigurationError(
                f"{DATA_ARGS}{field_name}={value!r}: class folder {path.resolve()} holds no images"
                f" ({', '.join(IMAGE_EXTENSIONS)}): add images to it or remove it")
        listing.names.append(prefix + name)
        listing.files.append([path / f for f in files])
    return listing


# --------------------------------------------------------------------------- headers
@dataclass
class ImageHeaders:
    """Sizes ``(width, height)`` and PIL modes of some images, read from their headers only."""

    paths: list[Path]
    sizes: list[tuple[int, int]]
    modes: list[str]

    @classmethod
    def read(cls, paths: Sequence[Path]) -> "ImageHeaders":
        def header(path: Path) -> tuple[tuple[int, int], str]:
            with opened(path) as image:  # reads the header, decodes nothing
                return image.size, image.mode

        with ThreadPoolExecutor(decode_workers()) as pool:
            results = list(pool.map(header, paths, chunksize=256))
        return cls(list(paths), [r[0] for r in results], [r[1] for r in results])

    def uniform_size(self, field_name: str, root: Path) -> tuple[int, int]:
        """The one ``(width, height)`` of all images, or an error naming ``field_name``."""
        distinct: dict[tuple[int, int], Path] = {}
        for path, size in zip(self.paths, self.sizes):
            distinct.setdefault(size, path)
        if len(distinct) > 1:
            examples = ", ".join(f"{w}x{h} ({p.relative_to(root) if p.is_relative_to(root) else p})"
                                 for (w, h), p in list(distinct.items())[:3])
            raise ConfigurationError(
                f"{DATA_ARGS}{field_name} is not set and the images under {root.resolve()} have {len(distinct)}"
                f" different sizes (e.g. {examples}): set --data.init_args.{field_name} N to resize every"
                f" image to N x N")
        return next(iter(distinct))

    def channels(self, field_name: str, root: Path) -> int:
        """1 when every image is greyscale, 3 when every image is colour; 3 with a warning when mixed."""
        grey = sum(mode in GREY_MODES for mode in self.modes)
        if grey == len(self.modes):
            return 1
        if grey:
            warnings.warn(
                f"{DATA_ARGS}{field_name} is not set and the images under {root.resolve()} mix {grey} greyscale and"
                f" {len(self.modes) - grey} colour images: converting all of them to RGB (3 channels); set"
                f" --data.init_args.{field_name} 1 to convert them all to greyscale instead", stacklevel=2)
        return 3


def check_channels(value: Optional[int]) -> None:
    if value is not None and value not in (1, 3):
        raise ConfigurationError(
            f"{DATA_ARGS}channels={value!r} is invalid: choose 1 (greyscale), 3 (RGB) or null (infer)")


def check_image_size(value: Optional[int], optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(
            f"{DATA_ARGS}image_size={value!r} is invalid: it must be a positive integer (images become N x N)"
            + (" or null (keep the stored size)" if optional else ""))


def check_rotations(rotations: Sequence[int]) -> tuple[int, ...]:
    values = tuple(rotations)
    if not values or any(not isinstance(r, int) or isinstance(r, bool) or r % 90 for r in values) \
            or len({r % 360 for r in values}) != len(values):
        raise ConfigurationError(
            f"{DATA_ARGS}rotations={list(values)!r} is invalid: give distinct multiples of 90 degrees, e.g. [0] (no"
            f" rotation) or [0, 90, 180, 270] (each rotation of a meta-training class becomes a new class)")
    return values


# --------------------------------------------------------------------------- decoding
@contextmanager
def opened(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)``, where a file PIL cannot read (truncated, corrupt, not an image) becomes a
    :class:`ConfigurationError` naming it, raised while it is read or decoded inside the block."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        if isinstance(error, ConfigurationError):
            raise
        raise ConfigurationError(
            f"image file {Path(path).resolve()} cannot be read ({str(error) or type(error).__name__}): it is truncated"
            " or not an image; replace it with a good copy or delete it, then run again") from error


def decode_images(paths: Sequence[Path], channels: int, image_size: Optional[int] = None,
                  invert: bool = False) -> Tensor:
    """Decode ``paths`` to one uint8 tensor ``[N, channels, H, W]``.

    Each image is converted to greyscale (``channels=1``) or RGB (``3``), resized to
    ``image_size x image_size`` with Lanczos (antialiased) filtering when given (all images must
    then share one size otherwise), and inverted (``255 - x``) when ``invert``.
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if not paths:
        size = image_size or 0
        return torch.zeros(0, channels, size, size, dtype=torch.uint8)
    if image_size is None:
        with opened(paths[0]) as first:
            width, height = first.size
    else:
        width = height = image_size
    out = np.empty((len(paths), height, width, channels), dtype=np.uint8)

    def decode(i: int) -> None:
        with opened(paths[i]) as image:
            image = image.convert(mode)  # before resizing: PIL resizes mode "1" / "P" with NEAREST only
            if image.size != (width, height):
                if image_size is None:
                    raise ConfigurationError(
                        f"{DATA_ARGS}image_size is not set and {paths[i]} is {image.size[0]}x{image.size[1]}, not"
                        f" {width}x{height} like {paths[0]}: set --data.init_args.image_size N")
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            array = np.asarray(image, dtype=np.uint8)
        out[i] = array.reshape(height, width, channels)

    with ThreadPoolExecutor(decode_workers()) as pool:
        list(pool.map(decode, range(len(paths)), chunksize=64))
    if invert:
        np.subtract(255, out, out=out)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def resize_uint8(images: Tensor, image_size: int, chunk: int = 1024) -> Tensor:
    """Resize uint8 ``[N, C, H, W]`` to ``[N, C, image_size, image_size]`` (bilinear, antialiased)."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty(images.shape[0], images.shape[1], image_size, image_size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start:start + chunk] = TF.resize(images[start:start + chunk], [image_size, image_size], antialias=True)
    return out


# --------------------------------------------------------------------------- cache
def fingerprint(paths: Sequence[Path], root: Path, settings: str) -> str:
    """A key that changes when a file is added, removed, renamed or rewritten, or a setting changes."""
    digest = hashlib.sha1(f"v{CACHE_VERSION};{settings}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def load_cache(path: Path, key: str) -> Optional[dict[str, Any]]:
    """The payload saved under ``path`` when its key is ``key``, else ``None`` (stale, absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: decode again
        warnings.warn(f"ignoring the unreadable cache {path}: {error}", stacklevel=2)
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    return payload


def save_cache(path: Path, payload: dict[str, Any]) -> bool:
    """Write ``payload`` atomically (temporary file, then ``os.replace``); warn and go on when the
    folder is not writable.  Concurrent writers (DDP ranks) each write their own temporary file."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return True
    except OSError as error:
        warnings.warn(f"could not write the decoded-image cache {path} ({error}); the images will be decoded"
                      " again next time", stacklevel=2)
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def cached_decode(cache_path: Optional[Path], key: str, files: ClassFiles, decode) -> Tensor:
    """``decode()`` (a uint8 tensor of ``files.flat()``) read from ``cache_path`` when its key matches,
    computed and written there otherwise (``cache_path=None``: no cache)."""
    if cache_path is not None:
        payload = load_cache(cache_path, key)
        if payload is not None and payload.get("counts") == files.counts:
            return payload["images"]
    images = decode()
    if cache_path is not None:
        save_cache(cache_path, {"key": key, "counts": files.counts, "names": files.names, "images": images})
    return images


# --------------------------------------------------------------------------- class splits
def check_fractions(train_fraction: float, val_fraction: float) -> None:
    """Both fractions in (0, 1) and summing to less than 1 (the test split gets the rest)."""
    for name, value in (("train_fraction", train_fraction), ("val_fraction", val_fraction)):
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not 0 < value < 1):
            raise ConfigurationError(
                f"{DATA_ARGS}{name}={value!r} is invalid: it must be a fraction of the classes in (0, 1)")
    if train_fraction + val_fraction >= 1:
        raise ConfigurationError(
            f"{DATA_ARGS}train_fraction + {DATA_ARGS}val_fraction = {train_fraction} + {val_fraction} ="
            f" {train_fraction + val_fraction:g} leaves no classes for the test split: make them sum to less"
            " than 1 (the test split gets the rest)")


def split_classes(num_classes: int, train_fraction: float, val_fraction: float, seed: int) -> dict[str, list[int]]:
    """Disjoint class indices of "train", "val" and "test", from a permutation seeded by ``seed``.

    ``round(num_classes * train_fraction)`` classes go to train, ``round(num_classes *
    val_fraction)`` to val (both capped so that the splits never overlap), the rest to test; each
    list is sorted.
    """
    order = np.random.default_rng(seed).permutation(num_classes)
    n_train = min(num_classes, round(num_classes * train_fraction))
    n_val = min(num_classes - n_train, round(num_classes * val_fraction))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {split: sorted(int(i) for i in part) for split, part in parts.items()}


def check_seed(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{DATA_ARGS}{name}={value!r} is invalid: it must be an integer >= 0")
