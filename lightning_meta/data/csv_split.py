"""Any benchmark as CSV files, one per split (``filename,label``, the format of LibFewShot and of Ravi &
Larochelle's mini-ImageNet split files), over a folder of images: a new data set is a config, not code."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from lightning_meta.data.image_files import ClassFiles, missing_folder
from lightning_meta.data.listed_images import ListedImagesDataModule, Table, class_files
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: header names of the image column tried in turn when ``file_column`` is not set
FILE_COLUMNS = ("filename", "file_name")


class CSVSplitDataModule(ListedImagesDataModule):
    """Episodes from images listed by three CSV files, one per split (LibFewShot's data set format)::

        root/images/...        the images (``image_root``), in any sub-folders
        root/train.csv         filename,label     one row per image: its path relative to image_root
        root/val.csv           filename,label     and its class; a header row first
        root/test.csv          filename,label

    ``train_csv``, ``val_csv``, ``test_csv`` and ``image_root`` are relative to ``root`` (or absolute).
    The image column is the header cell ``file_column`` (default: ``filename`` or ``file_name``), the
    class column ``label_column`` (default ``label``); header names match case-insensitively and
    cells are stripped of spaces (LibFewShot's documentation writes ``filename    , label``).
    Before anything is decoded: a class in two splits' files is an error naming both files (few-shot
    splits are disjoint in classes), so is an image listed in two splits or twice in one; a listed
    image that does not exist is an error naming the CSV file, the row and the image.  Images are
    decoded once per split and cached in ``root/.lightning_meta_csv_<name>_<hash>.pt`` (``cache``);
    ``image_size``, ``channels`` and ``normalize`` as
    :class:`~lightning_meta.data.listed_images.ListedImagesDataModule`.  Other arguments as
    :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = CSVSplitDataModule("data/miniImageNet--ravi", image_size=84, ways=5, shots=1, queries=15)
        dm.setup("fit")
        dm.sources["train"].num_classes                      # 64 with Ravi & Larochelle's train.csv
    """

    def __init__(
        self,
        root: str,
        train_csv: str = "train.csv",
        val_csv: str = "val.csv",
        test_csv: str = "test.csv",
        image_root: str = "images",
        file_column: Optional[str] = None,
        label_column: str = "label",
        image_size: Optional[int] = None,
        channels: Optional[int] = None,
        normalize: bool = False,
        cache: bool = True,
        **kwargs,
    ):
        super().__init__(root, image_size=image_size, channels=channels, normalize=normalize, cache=cache, **kwargs)
        self.csv_files = {"train": str(train_csv), "val": str(val_csv), "test": str(test_csv)}
        self.image_root = str(image_root)
        self.file_column = file_column
        self.label_column = str(label_column)

    @property
    def image_folder(self) -> Path:
        return self.folder / Path(self.image_root).expanduser()

    def csv_path(self, split: str) -> Path:
        return self.folder / Path(self.csv_files[split]).expanduser()

    def read_layout(self) -> dict[str, ClassFiles]:
        if not self.folder.is_dir():
            raise missing_folder("root", self.root, self.folder, "folder",
                                 "set --data.init_args.root to the folder holding the CSV files and the images")
        if not self.image_folder.is_dir():
            raise missing_folder("image_root", self.image_root, self.image_folder, "image folder",
                                 "set --data.init_args.image_root to the folder the CSV file names are relative to"
                                 " (relative to root, or absolute)")
        tables: dict[str, Table] = {}
        classes: dict[str, dict[str, list[tuple[Path, int]]]] = {}
        for split in ("train", "val", "test"):
            field, path = f"{split}_csv", self.csv_path(split)
            if not path.is_file():
                raise missing_folder(field, self.csv_files[split], path, f"{split} split file",
                                     f"set --data.init_args.{field} to a CSV file of that split (filename,label rows;"
                                     " relative to root, or absolute)")
            table = tables[split] = Table.read(path, field, self.csv_files[split])
            file_column = table.column([self.file_column] if self.file_column else FILE_COLUMNS, "file_column")
            label_column = table.column([self.label_column], "label_column")
            classes[split] = table.classes(file_column, label_column, self.image_folder)
            if not classes[split]:
                raise table.error("lists no images: expected a header row, then one row per image (filename,label)")
        self.check_disjoint(tables, classes)
        return {split: class_files(found) for split, found in classes.items()}

    @staticmethod
    def check_disjoint(tables: dict[str, Table], classes: dict[str, dict[str, list[tuple[Path, int]]]]) -> None:
        """No class and no image in two splits' files (a leak of test classes into meta-training)."""
        splits = list(tables)
        for i, first in enumerate(splits):
            for second in splits[i + 1:]:
                shared = sorted(set(classes[first]) & set(classes[second]))
                if shared:
                    a, b = tables[first], tables[second]
                    raise ConfigurationError(
                        f"{DATA_ARGS}{a.field}={a.value!r} and {DATA_ARGS}{b.field}={b.value!r}: class {shared[0]!r}"
                        f" ({len(shared)} classes in all) is in both {a.path.resolve()} and {b.path.resolve()}:"
                        " few-shot splits must be disjoint in classes; list each class in one split only")
                rows = {path: line for found in classes[first].values() for path, line in found}
                for found in classes[second].values():
                    for path, line in found:
                        if path in rows:
                            a, b = tables[first], tables[second]
                            raise ConfigurationError(
                                f"{DATA_ARGS}{a.field}={a.value!r} and {DATA_ARGS}{b.field}={b.value!r}: image"
                                f" {path.resolve()} is in both {a.path.resolve()} (row {rows[path]}) and"
                                f" {b.path.resolve()} (row {line}): an image belongs to one split; remove one row")

    def cache_path(self, split: str) -> Path:
        path = self.csv_path(split).resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        return self.folder / f".lightning_meta_csv_{path.stem}_{digest}.pt"
