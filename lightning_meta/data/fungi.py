"""FGVCx Fungi 2018 (the Danish Mycological Society's fungi; a Meta-Dataset source) as episodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_meta.data.image_files import ClassFiles
from lightning_meta.data.meta_dataset_sources import Archive, ClassKey, MetaDatasetSource
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: the competition's files (github.com/visipedia/fgvcx_fungi_comp); no checksum is published
ARCHIVES = (
    Archive("fungi_train_val.tgz", ("https://labs.gbif.org/fgvcx/2018/fungi_train_val.tgz",), md5=None,
            what="FGVCx Fungi 2018 training and validation images (GBIF, about 13 GB)"),
    Archive("train_val_annotations.tgz", ("https://labs.gbif.org/fgvcx/2018/train_val_annotations.tgz",), md5=None,
            what="FGVCx Fungi 2018 annotations (GBIF)"),
)
ANNOTATIONS = ("train.json", "val.json")


class FungiDataModule(MetaDatasetSource):
    """FGVCx Fungi 2018: 89,760 photographs of 1,394 fungi species (the competition's training and
    validation images together), split 994 / 200 / 200 species for meta-train / validation / test
    exactly as Meta-Dataset splits them.

    Reads the competition's layout: ``root/train.json`` and ``root/val.json`` (COCO-style:
    ``images`` with ``id`` and ``file_name``, ``annotations`` with ``image_id`` and ``category_id``,
    ``categories`` with ``id`` and ``name``) and the images they name (``root/images/<class>/*.JPG``).
    ``download=True`` fetches and unpacks ``fungi_train_val.tgz`` (about 13 GB) and
    ``train_val_annotations.tgz`` (no checksum is published, so none is checked).  Classes are named
    ``"<id:04d>.<name>"`` as Meta-Dataset names them (some species names repeat); the class split is
    Meta-Dataset's ``fungi_splits.json`` stored as category ids
    (``lightning_meta/data/splits/meta_dataset_fungi.json``: its converter reads the id from each
    name's first 4 characters); ``split_file`` replaces it (integer category ids).  Images are
    converted to RGB and resized to ``image_size`` x ``image_size`` (84, as Meta-Dataset), decoded
    once and cached in ``root/.lightning_meta_fungi_<split>_<image_size>.pt`` (about 1.9 GB for all
    three splits at 84 x 84).  Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = FungiDataModule("data/fungi", download=True, ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]

    References:
        Schroeder, Cui. "FGVCx Fungi Classification Challenge 2018." github.com/visipedia/fgvcx_fungi_comp.
        Triantafillou et al. "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples." ICLR 2020.
    """

    source_id = "fungi"
    title = "FGVCx Fungi 2018"
    archives = ARCHIVES
    folders = ("", "fungi")
    marker = "train.json"
    layout_hint = "giving train.json, val.json and images/<class>/*.JPG"

    def required_files(self) -> list[Path]:
        return [self.folder / name for name in ANNOTATIONS]

    def read_annotations(self, name: str) -> dict[str, Any]:
        path = self.folder / name
        try:
            with open(path) as f:
                data = json.load(f)
            if not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
                raise ValueError("no 'images', 'annotations' and 'categories' lists")
        except (OSError, ValueError, AttributeError) as error:
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not a Fungi annotation file ({error}): extract"
                " train_val_annotations.tgz again (or set data.init_args.download: true)") from error
        return data

    def read_catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        folder = self.folder
        files: dict[int, list[str]] = {}
        categories: dict[int, str] = {}
        for name in ANNOTATIONS:
            data = self.read_annotations(name)
            try:
                categories.update({int(c["id"]): str(c["name"]) for c in data["categories"]})
                image_files = {image["id"]: str(image["file_name"]) for image in data["images"]}
                for annotation in data["annotations"]:
                    files.setdefault(int(annotation["category_id"]), []).append(image_files[annotation["image_id"]])
            except (KeyError, TypeError, ValueError) as error:
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {(folder / name).resolve()} has an entry without the expected"
                    f" fields ({type(error).__name__}: {error}): extract train_val_annotations.tgz again") from error
        listing = ClassFiles()
        keys: list[ClassKey] = []
        for category in sorted(files):
            paths = [folder / f for f in sorted(files[category])]
            absent = [p for p in paths if not p.is_file()]
            if absent:
                raise self.missing(absent[0])
            listing.names.append(f"{category:04d}.{categories.get(category, '')}")
            listing.files.append(paths)
            keys.append(category)
        return listing, keys
