"""Image data sets whose classes are listed in CSV tables (Meta-Album's ``labels.csv``, LibFewShot's
``train.csv`` / ``val.csv`` / ``test.csv``): reading the tables with errors that name the file, the row
and the image, and the base class that decodes each split once through the shared cache.

Everything checkable from the tables and the file system (missing images, duplicated rows, classes or
images in two splits, episode settings a split cannot supply) fails before any image is decoded.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.image_files import (
    ClassFiles,
    cached_decode,
    check_channels,
    check_image_size,
    decode_images,
    fingerprint,
)
from lightning_meta.data.image_folder import ImageFolderDataModule
from lightning_meta.data.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError


class Table:
    """A CSV file's header and rows (cells stripped of surrounding spaces, blank lines skipped), with the
    field that named it, for errors of the form ``data.init_args.<field>='value': <file> row <n>: ...``.

    Example::

        table = Table.read(Path("data/mini/train.csv"), "train_csv", "train.csv")
        files = table.column(("filename", "file_name"), "file_column")      # index of the file column
    """

    def __init__(self, path: Path, field: str, value: Any, header: list[str], rows: list[tuple[int, list[str]]]):
        self.path, self.field, self.value, self.header, self.rows = path, field, value, header, rows

    @classmethod
    def read(cls, path: Path, field: str, value: Any) -> "Table":
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                lines = [(reader.line_num, [cell.strip() for cell in row])
                         for reader in [csv.reader(handle)] for row in reader if any(cell.strip() for cell in row)]
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise ConfigurationError(f"{DATA_ARGS}{field}={value!r}: {path.resolve()} cannot be read as a CSV file"
                                     f" ({error}): fix or replace it") from error
        if not lines:
            raise ConfigurationError(f"{DATA_ARGS}{field}={value!r}: {path.resolve()} is empty: it needs a header row"
                                     " and one row per image")
        return cls(path, field, value, lines[0][1], lines[1:])

    def error(self, message: str) -> ConfigurationError:
        return ConfigurationError(f"{DATA_ARGS}{self.field}={self.value!r}: {self.path.resolve()} {message}")

    def column(self, names: Sequence[str], name_field: str) -> int:
        """The index of the first header cell equal to one of ``names`` (case-insensitive); ``name_field``
        is the argument that chooses the name, for the error."""
        lowered = [cell.lower() for cell in self.header]
        for name in names:
            if name.lower() in lowered:
                return lowered.index(name.lower())
        raise self.error(f"has no column {' or '.join(repr(n) for n in names)} (its header is {self.header}): set"
                         f" {DATA_ARGS}{name_field} to the header of that column")

    def classes(self, file_column: int, label_column: int, image_folder: Path) -> dict[str, list[tuple[Path, int]]]:
        """``{label: [(image path, CSV line), ...]}`` of the rows, image paths relative to ``image_folder``.  A short row, an empty cell, an image listed twice or an image that
        does not exist is an error naming this file and the row."""
        found: dict[str, list[tuple[Path, int]]] = {}
        first_row: dict[Path, int] = {}
        missing: list[tuple[int, Path]] = []
        width = max(file_column, label_column) + 1
        for line, cells in self.rows:
            if len(cells) < width or not cells[file_column] or not cells[label_column]:
                raise self.error(f"row {line} ({','.join(cells)!r}) has no image name or no label in columns"
                                 f" {self.header[file_column]!r} / {self.header[label_column]!r}: fix that row")
            label = cells[label_column]
            path = image_folder / cells[file_column]
            if path in first_row:
                raise self.error(f"lists image {cells[file_column]!r} twice (rows {first_row[path]} and {line}): an"
                                 " image must be one sample of one class; remove one of the rows")
            first_row[path] = line
            if not path.is_file():
                missing.append((line, path))
            found.setdefault(label, []).append((path, line))
        if missing:
            line, path = missing[0]
            raise self.error(f"row {line}: image {path.resolve()} does not exist ({len(missing)} of the {len(first_row)}"
                             f" images it lists are missing): copy the images into {image_folder.resolve()}, or fix"
                             " the rows")
        return found


def class_files(classes: dict[str, list[tuple[Path, int]]], names: Optional[Sequence[str]] = None) -> ClassFiles:
    """The classes ``names`` (default: every class, sorted) with their images sorted, as :class:`ClassFiles`."""
    names = sorted(classes) if names is None else list(names)
    return ClassFiles(names, [sorted(path for path, _ in classes[name]) for name in names])


class ListedImagesDataModule(EpisodicDataModule):
    """Episodes from image files that a subclass lists by class for each split (:meth:`read_layout`).

    Images (any format PIL reads) are decoded once per split to uint8 and cached beside the data
    (:meth:`cache_path`; rebuilt when the split's files, their order or the settings change).
    ``image_size`` resizes every image to ``image_size x image_size`` (Lanczos); without it all images
    must share one size (checked from the image headers before decoding).  ``channels`` converts to
    greyscale (1) or RGB (3); ``None`` infers it (1 when every image is greyscale, else 3).
    ``normalize`` standardises pixels with ImageNet's mean and std (their channel averages for
    greyscale) after scaling to [0, 1]; by default pixels are only scaled.

    Example::

        class MyListing(ListedImagesDataModule):
            def read_layout(self):
                return {"train": ClassFiles(...), "val": ClassFiles(...), "test": ClassFiles(...)}

            def cache_path(self, split):
                return self.folder / f".lightning_meta_mine_{split}.pt"
    """

    #: the format (channels, one stored size) is resolved from the headers of every image, as
    #: ImageFolderDataModule resolves it (it reads :meth:`layout`, ``channels``, ``image_size``, ``folder``)
    image_format = ImageFolderDataModule.image_format

    def __init__(self, root: str, image_size: Optional[int] = None, channels: Optional[int] = None,
                 normalize: bool = False, cache: bool = True, **kwargs):
        super().__init__(**kwargs)
        check_image_size(image_size)
        check_channels(channels)
        self.root = str(root)
        self.image_size, self.channels = image_size, channels
        self.normalize = bool(normalize)
        self.cache = bool(cache)
        self._layout: Optional[dict[str, ClassFiles]] = None
        self._format: Optional[tuple[int, Optional[int]]] = None
        self._stored_size: Optional[tuple[int, int]] = None

    @property
    def folder(self) -> Path:
        return Path(self.root).expanduser()

    # ----------------------------------------------------------------- subclass hooks
    def read_layout(self) -> dict[str, ClassFiles]:
        """The classes and image files of "train", "val" and "test" (read from the tables, checked)."""
        raise NotImplementedError

    def cache_path(self, split: str) -> Path:
        """Where the decoded images of ``split`` are kept (when ``cache``)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- listing
    def layout(self) -> dict[str, ClassFiles]:
        """:meth:`read_layout`, read once."""
        if self._layout is None:
            self._layout = self.read_layout()
        return self._layout

    def split_counts(self, split: str) -> tuple[int, int]:
        files = self.layout()[split]
        return len(files), files.min_count

    # ----------------------------------------------------------------- decoding
    def preprocessing(self) -> ImagePreprocessing:
        """Decoding of every image, training and prediction alike (see the class doc)."""
        channels, size = (self.channels, self.image_size) if self.channels and self.image_size else self.image_format()
        mean = std = None
        if self.normalize:
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else \
                ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
        converts = self.channels is not None or channels == 3  # inferred 3: greyscale images were converted too
        return ImagePreprocessing(channels=channels, image_size=size, mean=mean, std=std,
                                  stored_size=self._stored_size, converts_channels=converts)

    def load_split(self, split: str) -> ClassImages:
        files = self.layout()[split]
        paths = files.flat()
        preprocessing = self.preprocessing()
        base = self.folder.resolve()
        root = base if all(p.resolve().is_relative_to(base) for p in paths) else Path(base.anchor)
        settings = (f"{type(self).__name__};{split};size={preprocessing.image_size};stored={self._stored_size};"
                    f"channels={preprocessing.channels}")
        key = fingerprint([p.resolve() for p in paths], root, settings)
        images = cached_decode(self.cache_path(split) if self.cache else None, key, files,
                               lambda: preprocessing.decode(paths, decode_images))
        return ClassImages(images, files.counts, names=files.names, mean=preprocessing.mean, std=preprocessing.std)
