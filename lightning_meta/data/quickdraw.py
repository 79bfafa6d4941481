"""Quick, Draw! (Jongejan et al. 2016; a Meta-Dataset source) as episodes, from its 28x28 numpy bitmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import numpy as np
import torch

from lightning_meta.data.image_files import ClassFiles, resize_uint8
from lightning_meta.data.meta_dataset_sources import ClassKey, MetaDatasetSource, read_split_file
from lightning_meta.data.npz import array_header
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError, optional_positive

#: Google's public bucket of the bitmaps, one file per class; no checksum is published
URL_PREFIX = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/"
SIDE = 28


class QuickdrawDataModule(MetaDatasetSource):
    """Quick, Draw!: 345 classes of 28x28 greyscale drawings (about 50 million in all, 70,000 to
    300,000 per class), split 241 / 52 / 52 classes for meta-train / validation / test exactly as
    Meta-Dataset splits them.

    Reads the numpy bitmaps, one file per class: ``root/<class name>.npy`` (uint8 ``[N, 784]``,
    bright strokes on black, as Google publishes them).  ``download=True`` fetches the missing
    class files from Google's bucket (about 37 GB for all 345 files; no checksum is published).
    The files are memory-mapped, and only the first ``samples_per_class`` drawings of each class
    are decoded: Meta-Dataset reads all of them, which at 84 x 84 RGB would take about a terabyte.
    The default, 100, holds 34,500 drawings: about 730 MB at ``image_size`` 84 with ``channels`` 3
    (21 KB a drawing), 27 MB at ``image_size`` 28 with ``channels`` 1; memory grows linearly with
    it; ``null`` reads every drawing.

    Drawings are resized to ``image_size`` x ``image_size`` (84, as Meta-Dataset; bilinear,
    antialiased) and repeated to ``channels`` 3 (Meta-Dataset converts them to RGB; 1 keeps them
    greyscale), decoded once and cached in ``root/.lightning_meta_quickdraw_<split>_<image_size>_
    c<channels>_n<samples_per_class>.pt``.  The class split is Meta-Dataset's
    ``quickdraw_splits.json`` (``lightning_meta/data/splits/meta_dataset_quickdraw.json``);
    ``split_file`` replaces it.  Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = QuickdrawDataModule("data/quickdraw", samples_per_class=100, ways=5, shots=1, queries=15)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [32, 5, 3, 84, 84]

    References:
        Jongejan et al. "The Quick, Draw! - A.I. Experiment." 2016. github.com/googlecreativelab/quickdraw-dataset.
        Triantafillou et al. "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples." ICLR 2020.
    """

    source_id = "quickdraw"
    title = "Quickdraw"
    folders = ("",)
    layout_hint = "one <class name>.npy per class"

    def __init__(self, root: str, samples_per_class: Optional[int] = 100, channels: int = 3, **kwargs: Any):
        optional_positive(DATA_ARGS + "samples_per_class", samples_per_class)
        if channels not in (1, 3):
            raise ConfigurationError(f"{DATA_ARGS}channels={channels!r} is invalid: choose 3 (RGB, as Meta-Dataset)"
                                     " or 1 (greyscale)")
        super().__init__(root=root, **kwargs)
        self.samples_per_class, self.channels = samples_per_class, channels

    # ----------------------------------------------------------------- files
    def class_list(self) -> list[str]:
        """The classes of the split file (all three splits), in file order."""
        parts = read_split_file(self.split_path())
        return [str(c) for split in ("train", "val", "test") for c in parts[split]]

    def class_file(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def required_files(self) -> list[Path]:
        return [self.class_file(name) for name in self.class_list()]

    def fetch_archives(self) -> None:
        from lightning_meta.data.download import fetch

        for path in self.required_files():
            if not path.exists():
                fetch(URL_PREFIX + quote(path.name), path, what=f"Quickdraw bitmaps of '{path.stem}' (Google, about"
                      " 100 MB)")

    def missing(self, path: Path) -> ConfigurationError:
        return ConfigurationError(
            f"{DATA_ARGS}root={self.root!r}: Quickdraw not found: {path.resolve()} is missing. It comes from"
            f" {URL_PREFIX}{quote(path.name)} (Google's numpy bitmaps, one file per class): set"
            f" data.init_args.download: true to fetch the missing classes, or copy the .npy files into"
            f" {self.folder.resolve()}")

    def read_catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        names = self.class_list()
        listing = ClassFiles(list(names), [[self.class_file(name)] for name in names])
        return listing, list(names)

    def drawings(self, path: Path) -> int:
        """How many drawings of ``path`` are read: all its rows, at most ``samples_per_class`` (header only)."""
        try:
            shape, dtype = array_header(path, "")
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not a .npy file"
                                     f" ({error}): download it again") from error
        if len(shape) != 2 or shape[1] != SIDE * SIDE or dtype not in (np.uint8, np.bool_):
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {path.resolve()} holds {dtype} {list(shape)}, not Quickdraw's"
                f" uint8 [N, {SIDE * SIDE}] bitmaps: download it again")
        return shape[0] if self.samples_per_class is None else min(shape[0], self.samples_per_class)

    def class_counts(self, split: str) -> list[int]:
        return [self.drawings(path) for path in self.split_files(split).flat()]

    # ----------------------------------------------------------------- decoding
    def preprocessing(self) -> ImagePreprocessing:
        """``channels``, resized to ``image_size`` (bilinear, antialiased, on uint8), scaled to [0, 1]."""
        return ImagePreprocessing(channels=self.channels, image_size=self.image_size, resampling="bilinear")

    def settings(self) -> str:
        return f"quickdraw;size={self.image_size};channels={self.channels};n={self.samples_per_class};bilinear"

    def cache_path(self, split: str) -> Optional[Path]:
        if not self.cache:
            return None
        return self.folder / (f".lightning_meta_quickdraw_{split}_{self.image_size}_c{self.channels}"
                              f"_n{self.samples_per_class or 'all'}.pt")

    def decode(self, files: ClassFiles) -> torch.Tensor:
        """The first ``samples_per_class`` rows of each memory-mapped file, resized class by class."""
        paths = files.flat()
        counts = [self.drawings(path) for path in paths]
        size = self.image_size
        out = torch.empty(sum(counts), self.channels, size, size, dtype=torch.uint8)
        start = 0
        for path, count in zip(paths, counts):
            rows = np.load(path, mmap_mode="r")[:count]
            x = torch.from_numpy(np.array(rows, dtype=np.uint8)).view(count, 1, SIDE, SIDE)  # reads the rows
            if rows.dtype == np.bool_:
                x = x * 255
            out[start:start + count] = resize_uint8(x, size).expand(count, self.channels, size, size)
            start += count
        return out

