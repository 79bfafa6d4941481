"""Shared machinery of the loaders of the Meta-Dataset sources (Triantafillou et al. 2020) that a user
can obtain: FGVC-Aircraft, VGG Flowers, DTD, Quickdraw and Fungi, read from their official archives'
layouts (no TensorFlow records).

Each source's module says where its files come from and how its classes are listed; this module
holds what they share: the class splits of Meta-Dataset (``lightning_meta/data/splits/meta_dataset_
<source>.json``, copied from google-research/meta-dataset's ``dataset_conversion/splits/<source>_
splits.json``, with keys ``train`` / ``valid`` / ``test``), the download of the official archives
through :mod:`lightning_meta.data.download`, the one-line error for a missing file, and the decoding
of each split once to uint8 with the cache next to the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.image_files import ClassFiles, cached_decode, check_image_size, decode_images, fingerprint
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError

SPLITS_FOLDER = Path(__file__).resolve().parent / "splits"
#: split of the data module -> its key in Meta-Dataset's split files
SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}
#: a class of a split file: a name (DTD, Aircraft, Quickdraw) or an integer id (VGG Flowers, Fungi)
ClassKey = Union[str, int]


@dataclass(frozen=True)
class Archive:
    """One file of a source's official distribution: its name, its addresses (tried in turn), its
    checksum where one is published (``None`` where not), and whether it is an archive to unpack."""

    filename: str
    urls: tuple[str, ...]
    md5: Optional[str]
    what: str
    extract: bool = True


def read_split_file(path: Path, field: str = "split_file") -> dict[str, list[ClassKey]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from a JSON file in Meta-Dataset's format
    (keys ``train``, ``valid``, ``test``; entries class names or integer ids), checked to be disjoint."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigurationError(
            f"{DATA_ARGS}{field}={str(path)!r} cannot be read ({error}): give a JSON file with the lists"
            ' "train", "valid" and "test" of class names (Meta-Dataset\'s *_splits.json format)') from error
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in SPLIT_KEYS.values()) \
            or any(not isinstance(c, (str, int)) or isinstance(c, bool) for k in SPLIT_KEYS.values() for c in data[k]):
        raise ConfigurationError(
            f"{DATA_ARGS}{field}={str(path)!r} is not a split file: expected a JSON object with the lists"
            ' "train", "valid" and "test" of class names or integer ids')
    parts = {split: list(data[key]) for split, key in SPLIT_KEYS.items()}
    seen: dict[ClassKey, str] = {}
    for split, classes in parts.items():
        for c in classes:
            if c in seen:
                raise ConfigurationError(
                    f"{DATA_ARGS}{field}={str(path)!r} puts class {c!r} in both the '{seen[c]}' and the '{split}'"
                    " split (or twice in one): few-shot splits must be disjoint in classes")
            seen[c] = split
    return parts


class MetaDatasetSource(EpisodicDataModule):
    """Base of the Meta-Dataset source loaders: classes of files, split as Meta-Dataset splits them.

    A subclass names its source (:attr:`source_id`, the split file ``meta_dataset_<source>.json``),
    its title, its official files (:attr:`archives`), the sub-folders of ``root`` where the
    extracted data may lie (:attr:`folders`, first match of :attr:`marker` wins), and implements
    :meth:`read_catalog` (every class of the data, its files and its key in the split file).
    :meth:`decode` turns the files of a split into uint8 ``[N, 3, image_size, image_size]``
    (default: RGB, resized to a square with Lanczos filtering, as Meta-Dataset resizes whole images
    to ``image_size``); each split's images are cached in ``<folder>/.lightning_meta_<source>_
    <split>_<image_size>.pt`` (rebuilt when a file or a setting changes).

    ``split_file`` replaces Meta-Dataset's split with a JSON file in its format (``{"train": [...],
    "valid": [...], "test": [...]}``), e.g. to train on a subset of the classes; classes of the data
    that no split lists are left out.  Every class a split lists must be in the data.

    Example::

        class MySource(MetaDatasetSource):         # root/my_source/images/<class>/*.jpg
            source_id, title, folders, marker = "my_source", "My source", ("my_source",), "images"

            def read_catalog(self):
                listing = list_class_folders(self.folder / "images", "root", self.root)
                return listing, list(listing.names)

        dm = MySource("data", split_file="my_split.json", ways=5, shots=1, queries=15)
    """

    source_id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    archives: ClassVar[tuple[Archive, ...]] = ()
    #: sub-folders of ``root`` that may hold the extracted data ("" is root itself), in order of preference
    folders: ClassVar[tuple[str, ...]] = ("",)
    #: a file (relative to the data folder) whose presence says "the data is here"
    marker: ClassVar[str] = ""
    #: how the extracted layout looks, for error messages
    layout_hint: ClassVar[str] = ""

    def __init__(self, root: str, download: bool = False, image_size: int = 84, split_file: Optional[str] = None,
                 cache: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        check_image_size(image_size, optional=False)
        self.root = str(root)
        self.download = bool(download)
        self.image_size = image_size
        self.split_file = None if split_file is None else str(split_file)
        self.cache = bool(cache)
        self._catalog: Optional[tuple[ClassFiles, list[ClassKey]]] = None
        self._assignment: Optional[dict[str, list[int]]] = None

    # ----------------------------------------------------------------- files
    @property
    def folder(self) -> Path:
        """The folder holding the extracted data: the first of :attr:`folders` under ``root`` that holds
        :attr:`marker`, else the first of them (where a download extracts to)."""
        root = Path(self.root).expanduser()
        for name in self.folders:
            if (root / name / self.marker).exists():
                return root / name
        return root / self.folders[0]

    def required_files(self) -> list[Path]:
        """Files that must exist before the catalog is read (default: the marker)."""
        return [self.folder / self.marker]

    def prepare_data(self) -> None:
        if self.download and not self.predicting:  # predict decodes support_dir / query_dir only
            self.ensure_files()

    def fetch_archives(self) -> None:
        """Download (checked, with a progress bar) and unpack the official files into ``root``."""
        from lightning_meta.data.download import extract, fetch

        root = Path(self.root).expanduser()
        for archive in self.archives:
            path = fetch(list(archive.urls), root / archive.filename, md5=archive.md5, what=archive.what)
            if archive.extract:
                extract(path, root)

    def ensure_files(self) -> None:
        """Fetch the official files when :meth:`required_files` are missing and ``download`` is set; then
        raise the one-line error of :meth:`missing` for a file still missing."""
        missing = [p for p in self.required_files() if not p.exists()]
        if missing and self.download:
            self.fetch_archives()
            missing = [p for p in self.required_files() if not p.exists()]
        if missing:
            raise self.missing(missing[0])

    def missing(self, path: Path) -> ConfigurationError:
        """The one-line error for a missing ``path``: which file, where it comes from, the ``download`` flag."""
        origin = "; ".join(f"{a.filename} from {a.urls[0]}" for a in self.archives)
        root = Path(self.root).expanduser().resolve()
        return ConfigurationError(
            f"{DATA_ARGS}root={self.root!r}: {self.title} not found: {path.resolve()} is missing. It comes from"
            f" {origin}: set data.init_args.download: true to fetch it, or extract it into {root}"
            f" ({self.layout_hint})")

    # ----------------------------------------------------------------- classes and splits
    def read_catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        """Every class of the data (names and files) and its key in the split file."""
        raise NotImplementedError

    def catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        if self._catalog is None:
            self.ensure_files()
            self._catalog = self.read_catalog()
        return self._catalog

    def split_path(self) -> Path:
        return Path(self.split_file).expanduser() if self.split_file else SPLITS_FOLDER / f"meta_dataset_{self.source_id}.json"

    def assignment(self) -> dict[str, list[int]]:
        """Indices into :meth:`catalog` of the classes of "train", "val" and "test", in the split file's order."""
        if self._assignment is not None:
            return self._assignment
        listing, keys = self.catalog()
        parts = read_split_file(self.split_path())
        index = {key: i for i, key in enumerate(keys)}
        where = f"{DATA_ARGS}split_file={self.split_file!r}" if self.split_file else \
            f"Meta-Dataset's split ({self.split_path().name})"
        assignment: dict[str, list[int]] = {}
        for split, entries in parts.items():
            absent = [e for e in entries if e not in index]
            if absent:
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {self.title} under {self.folder.resolve()} lacks {len(absent)}"
                    f" class(es) of the '{split}' split of {where}, e.g. {absent[0]!r}: the copy is incomplete"
                    " (extract the archive again or set data.init_args.download: true), or give"
                    " data.init_args.split_file listing the classes you have")
            assignment[split] = [index[e] for e in entries]
        self._assignment = assignment
        return assignment

    def class_names(self, split: str) -> list[str]:
        """The class names of ``split`` ("train", "val" or "test")."""
        listing, _ = self.catalog()
        return [listing.names[i] for i in self.assignment()[split]]

    def split_files(self, split: str) -> ClassFiles:
        listing, _ = self.catalog()
        return listing.select(self.assignment()[split])

    def class_counts(self, split: str) -> list[int]:
        """Samples of each class of ``split`` (from the listing, nothing decoded)."""
        return self.split_files(split).counts

    def split_counts(self, split: str) -> tuple[int, int]:
        counts = self.class_counts(split)
        return len(counts), min(counts) if counts else 0

    # ----------------------------------------------------------------- decoding
    def preprocessing(self) -> ImagePreprocessing:
        """RGB, resized to ``image_size`` x ``image_size`` (Lanczos), scaled to [0, 1]."""
        return ImagePreprocessing(channels=3, image_size=self.image_size)

    def settings(self) -> str:
        """What, beside the files, the decoded images depend on (part of the cache key)."""
        return f"{self.source_id};size={self.image_size};RGB;lanczos"

    def decode(self, files: ClassFiles) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` of ``files.flat()``."""
        return self.preprocessing().decode(files.flat(), decode_images)

    def cache_path(self, split: str) -> Optional[Path]:
        return self.folder / f".lightning_meta_{self.source_id}_{split}_{self.image_size}.pt" if self.cache else None

    def load_split(self, split: str) -> ClassImages:
        files = self.split_files(split)
        key = fingerprint(files.flat(), self.folder, self.settings())
        images = cached_decode(self.cache_path(split), key, files, lambda: self.decode(files))
        return ClassImages(images, self.class_counts(split), names=files.names)

