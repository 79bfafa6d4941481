"""Meta-Album data sets (Ullah et al. 2022): ``labels.csv`` + ``info.json`` + ``images/``, as episodes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from lightning_meta.data.image_files import ClassFiles, check_fractions, check_seed, missing_folder, split_classes
from lightning_meta.data.listed_images import ListedImagesDataModule, Table, class_files
from lightning_meta.errors import DATA_ARGS, ConfigurationError

LABELS, INFO, IMAGES = "labels.csv", "info.json", "images"
#: the column names Meta-Album's format recommends, used where info.json does not name its columns
DEFAULT_COLUMNS = {"image_column_name": "FILE_NAME", "category_column_name": "CATEGORY"}
SPLITS = ("train", "val", "test")


class MetaAlbumDataModule(ListedImagesDataModule):
    """Episodes from one Meta-Album data set (Ullah et al. 2022), in its released format.

    ``root`` is the data set's folder::

        root/labels.csv     one row per image: its file name, its category (class) and super-category
        root/info.json      names those columns: "image_column_name", "category_column_name"
                            (defaults FILE_NAME, CATEGORY), with the data set's statistics
        root/images/        the images (128x128 JPEGs in the released sets; Meta-Album's format
                            also allows them beside labels.csv, read when images/ does not exist)

    Classes are the categories.  They are split into disjoint meta-train / validation / test sets by
    a permutation seeded by ``split_seed``: ``round(classes * train_fraction)`` for meta-training,
    ``round(classes * val_fraction)`` for validation, the rest for test; the defaults 0.7 / 0.15 /
    0.15 are Meta-Album's within-domain few-shot split (its ``train_within_domain_fsl.py``).  Or
    ``split`` gives the categories of each split by name (``{"train": [...], "val": [...], "test":
    [...]}``; the fractions are then ignored).  Images are decoded once per split and cached in
    ``root/.lightning_meta_meta_album_<split>.pt``; ``image_size``, ``channels``, ``normalize`` and
    ``cache`` as :class:`~lightning_meta.data.listed_images.ListedImagesDataModule`.  Other arguments
    as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = MetaAlbumDataModule("data/meta-album/BRD_Mini", ways=5, shots=1, queries=16)
        dm.setup("fit")
        dm.sources["train"].num_classes                      # 70% of the categories
    """

    def __init__(
        self,
        root: str,
        image_size: Optional[int] = None,
        channels: Optional[int] = None,
        train_fraction: float = 0.7,
        val_fraction: float = 0.15,
        split_seed: int = 0,
        split: Optional[dict[str, list[str]]] = None,
        normalize: bool = False,
        cache: bool = True,
        **kwargs,
    ):
        super().__init__(root, image_size=image_size, channels=channels, normalize=normalize, cache=cache, **kwargs)
        check_fractions(train_fraction, val_fraction)
        check_seed("split_seed", split_seed)
        if split is not None and (not isinstance(split, dict) or sorted(split) != sorted(SPLITS)
                                  or not all(isinstance(v, (list, tuple)) for v in split.values())):
            raise ConfigurationError(
                f"{DATA_ARGS}split={split!r} is invalid: give the categories of each split by name, as"
                " {train: [...], val: [...], test: [...]}, or leave it unset to split by train_fraction / val_fraction")
        self.train_fraction, self.val_fraction, self.split_seed = train_fraction, val_fraction, split_seed
        self.split = None if split is None else {k: [str(c) for c in v] for k, v in split.items()}

    # ----------------------------------------------------------------- files
    def required(self, name: str) -> Path:
        path = self.folder / name
        if not self.folder.is_dir():
            raise missing_folder("root", self.root, self.folder, "Meta-Album data set folder",
                                 "set --data.init_args.root to the folder holding labels.csv, info.json and images/")
        if not path.is_file():
            raise missing_folder("root", self.root, path, "Meta-Album file",
                                 "point --data.init_args.root at a Meta-Album data set folder (labels.csv, info.json"
                                 " and images/, as released on OpenML / meta-album.github.io)")
        return path

    def info(self) -> dict:
        """``info.json``, parsed (a trailing comma before ``}``, as in the format's own example, is accepted)."""
        path = self.required(INFO)
        text = path.read_text(encoding="utf-8-sig")
        try:
            info = json.loads(text)
        except json.JSONDecodeError:
            try:
                info = json.loads(re.sub(r",(\s*[}\]])", r"\1", text))
            except json.JSONDecodeError as error:
                raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not valid JSON ({error}):"
                                         " fix it (Meta-Album's info.json is one object)") from error
        if not isinstance(info, dict):
            raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not a JSON object: expected"
                                     " Meta-Album's info.json, with image_column_name and category_column_name")
        return info

    @property
    def image_folder(self) -> Path:
        images = self.folder / IMAGES
        return images if images.is_dir() else self.folder

    def catalog(self) -> dict[str, list[tuple[Path, int]]]:
        """Every category of ``labels.csv`` and its images (with their rows), read by info.json's column names."""
        info = self.info()
        table = Table.read(self.required(LABELS), "root", self.root)
        names = {key: str(info.get(key) or default) for key, default in DEFAULT_COLUMNS.items()}
        try:
            file_column = table.column([names["image_column_name"]], "root")
            label_column = table.column([names["category_column_name"]], "root")
        except ConfigurationError:
            raise table.error(f"has no column {names['image_column_name']!r} or {names['category_column_name']!r}"
                              f" (its header is {table.header}), which info.json names as image_column_name /"
                              " category_column_name: make info.json name the columns of labels.csv") from None
        catalog = table.classes(file_column, label_column, self.image_folder)
        if not catalog:
            raise table.error("lists no images: expected one row per image")
        return catalog

    def read_layout(self) -> dict[str, ClassFiles]:
        catalog = self.catalog()
        categories = sorted(catalog)
        if self.split is None:
            parts = split_classes(len(categories), self.train_fraction, self.val_fraction, self.split_seed)
            return {s: class_files(catalog, [categories[i] for i in parts[s]]) for s in SPLITS}
        seen: dict[str, str] = {}
        for part in SPLITS:
            for name in self.split[part]:
                if name not in catalog:
                    raise ConfigurationError(
                        f"{DATA_ARGS}split.{part} names category {name!r}, which labels.csv of {self.root!r} does not"
                        f" have ({len(categories)} categories, e.g. {categories[:3]}): use its CATEGORY names")
                if name in seen:
                    raise ConfigurationError(
                        f"{DATA_ARGS}split puts category {name!r} in both '{seen[name]}' and '{part}': few-shot splits"
                        " must be disjoint in classes; keep it in one")
                seen[name] = part
        return {s: class_files(catalog, sorted(self.split[s])) for s in SPLITS}

    def check_split(self, split: str, num_classes: int, min_samples: Optional[int]) -> None:
        """As :class:`~lightning_meta.data.EpisodicDataModule`, with the fix for small data sets: Meta-Album's
        Micro sets have 20 categories, which 0.7 / 0.15 split 14 / 3 / 3."""
        try:
            super().check_split(split, num_classes, min_samples)
        except ConfigurationError as error:
            if self.split is not None or split == "train" or "ways" not in str(error).split(" asks", 1)[0]:
                raise
            raise ConfigurationError(
                f"{error}; or lower {DATA_ARGS}train_fraction={self.train_fraction} and raise val_fraction={self.val_fraction}"
                " (a Micro set's 20 categories split 0.5 / 0.25 give 10 / 5 / 5)") from None

    def cache_path(self, split: str) -> Path:
        return self.folder / f".lightning_meta_meta_album_{split}.pt"
