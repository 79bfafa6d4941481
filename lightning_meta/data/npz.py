"""Episodes from one array of images ``[classes, samples, (C,) H, W]`` stored in an .npz (or .npy) file."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lightning_meta.data.bundled import bundled_names, resolve
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.image_files import (
    check_fractions,
    check_rotations,
    check_seed,
    split_classes,
)
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError
from lightning_meta.internals import npy_header_v3


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:  # format 3.0 (utf-8 field names): no public reader
        shape, _, dtype = npy_header_v3(f, version)
    return tuple(shape), dtype


def array_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``key`` of an .npz (or of an .npy), read from its header only."""
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            return _npy_header(f)
    with zipfile.ZipFile(path) as archive:
        members = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
        if key not in members:
            raise ConfigurationError(
                f"{DATA_ARGS}key={key!r}: {path.resolve()} holds no array named {key!r}; it holds {members}: set"
                " --data.init_args.key to the array of images")
        with archive.open(f"{key}.npy") as f:
            return _npy_header(f)


class NpzDataModule(EpisodicDataModule):
    """Episodes from an .npz file holding ``key`` (default ``"X"``): uint8 images
    ``[classes, samples, H, W]`` (greyscale) or ``[classes, samples, C, H, W]``, e.g. the 1200
    hanzi characters x 20 fonts of ``hanzi_fonts_1200x20.npz``.  A ``.npy`` file works as well.

    ``path`` is a file, or the name of a data set shipped with the package (no download):
    ``"hanzi"``, 300 Chinese characters x 20 font renders, 28x28 (see
    :mod:`lightning_meta.data.bundled`).  An existing file of that name wins over the bundled set;
    the name, not the installed location, is what the config and checkpoints keep.

    Classes are split into disjoint meta-train / validation / test sets by a permutation seeded by
    ``split_seed``: ``round(classes * train_fraction)`` for meta-training,
    ``round(classes * val_fraction)`` for validation, the rest for test.  ``rotations`` are applied
    to meta-training classes only, each rotation becoming a new class.  Shape, dtype and class
    counts are checked from the array header before the array is read.  Other arguments as
    :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = NpzDataModule("hanzi", ways=5, shots=1, queries=5, rotations=[0, 90, 180, 270])   # bundled
        dm = NpzDataModule("hanzi_fonts_1200x20.npz", ways=5, shots=1, queries=5)               # any file
        dm.setup("fit")
    """

    def __init__(
        self,
        path: str,
        key: str = "X",
        train_fraction: float = 0.64,
        val_fraction: float = 0.16,
        split_seed: int = 0,
        rotations: Sequence[int] = (0,),
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_fractions(train_fraction, val_fraction)
        check_seed("split_seed", split_seed)
        self.path, self.key = str(path), str(key)
        self.train_fraction, self.val_fraction, self.split_seed = train_fraction, val_fraction, split_seed
        self.rotations = check_rotations(rotations)
        self._shape: Optional[tuple[int, ...]] = None
        self._array: Optional[np.ndarray] = None

    @property
    def file(self) -> Path:
        """The file ``path`` names: that file, or the bundled data set of that name."""
        return resolve(self.path)

    def shape(self) -> tuple[int, ...]:
        """The array's shape, checked (from its header) to be uint8 ``[classes, samples, (C,) H, W]``."""
        if self._shape is None:
            file = self.file
            if not file.is_file():
                bundled = ", ".join(repr(name) for name in bundled_names())
                raise ConfigurationError(
                    f"{DATA_ARGS}path={self.path!r}: file {file.resolve()} does not exist and {self.path!r} is not a"
                    f" bundled data set ({bundled}): set --data.init_args.path to an .npz holding '{self.key}', uint8"
                    f" images [classes, samples, H, W], or to a bundled name")
            try:
                shape, dtype = array_header(file, self.key)
            except ConfigurationError:
                raise
            except Exception as error:
                raise ConfigurationError(f"{DATA_ARGS}path={self.path!r}: {file.resolve()} is not a readable .npz /"
                                         f" .npy file ({type(error).__name__}: {error})") from error
            if len(shape) not in (4, 5) or (len(shape) == 5 and shape[2] not in (1, 3)):
                raise ConfigurationError(
                    f"{DATA_ARGS}key={self.key!r}: array of shape {list(shape)} in {file.resolve()}: expected"
                    " [classes, samples, H, W] or [classes, samples, C, H, W] with C = 1 or 3 (channels before height"
                    " and width)")
            if dtype != np.uint8:
                raise ConfigurationError(
                    f"{DATA_ARGS}key={self.key!r}: array in {file.resolve()} is {dtype}, expected uint8 pixels in [0,"
                    " 255]: save it as (x * 255).round().astype(np.uint8) for [0, 1] images")
            self._shape = tuple(int(s) for s in shape)
        return self._shape

    def preprocessing(self) -> ImagePreprocessing:
        """How prediction images become the array's images: no resizing and no channel conversion (the
        array holds pixels as they are), so they must have its size and channels; scaled to [0, 1]."""
        shape = self.shape()
        channels = shape[2] if len(shape) == 5 else 1
        return ImagePreprocessing(channels=channels, stored_size=(shape[-1], shape[-2]), converts_channels=False)

    def assignment(self) -> dict[str, list[int]]:
        """Class indices (rows of the array) of "train", "val" and "test"."""
        return split_classes(self.shape()[0], self.train_fraction, self.val_fraction, self.split_seed)

    def array(self) -> np.ndarray:
        if self._array is None:
            file = self.file
            self._array = np.load(file) if file.suffix == ".npy" else np.load(file)[self.key]
        return self._array

    def split_counts(self, split: str) -> tuple[int, int]:
        rotations = self.rotations if split == "train" else (0,)
        return len(self.assignment()[split]) * len(rotations), self.shape()[1]

    def load_split(self, split: str) -> ClassImages:
        classes = self.assignment()[split]
        rotations = self.rotations if split == "train" else (0,)
        x = torch.from_numpy(np.ascontiguousarray(self.array()[classes]))
        return ClassImages.from_array(x, names=[str(c) for c in classes], rotations=rotations)
