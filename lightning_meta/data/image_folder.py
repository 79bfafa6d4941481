"""Any folder of class sub-folders of images (torchvision's ImageFolder layout) as episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.image_files import (
    ClassFiles,
    ImageHeaders,
    cached_decode,
    check_channels,
    check_fractions,
    check_image_size,
    check_rotations,
    check_seed,
    decode_images,
    fingerprint,
    list_class_folders,
    missing_folder,
    split_classes,
    visible_subfolders,
)
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: names of the folders of a predefined split, and the split each stands for
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class ImageFolderDataModule(EpisodicDataModule):
    """Episodes from a folder of class sub-folders of images (ImageFolder layout).

    Two layouts of ``root``:

    * ``root/<class>/<image>``: the classes are split into disjoint meta-train / validation / test
      sets by a permutation seeded by ``split_seed``: ``round(classes * train_fraction)`` classes
      for meta-training, ``round(classes * val_fraction)`` for validation, the rest for test.
    * ``root/train/<class>/<image>``, ``root/val/...`` (or ``validation`` / ``valid``) and
      ``root/test/...``: a predefined split, used as is (the fractions are then ignored).  It is
      chosen whenever ``root`` holds a ``train`` folder; class names must not repeat across splits.

    Images (any format PIL reads, by extension) are decoded once to uint8 tensors.  ``image_size``
    resizes every image to ``image_size x image_size`` (Lanczos); without it all images must share
    one size (checked from the image headers before decoding).  ``channels`` converts to greyscale
    (1) or RGB (3); ``None`` infers it: 1 when every image is greyscale, 3 otherwise (a mix of
    greyscale and colour images is converted to RGB, with a warning).  ``invert`` turns dark strokes
    on light paper into bright strokes on black (as for Omniglot).  ``rotations`` are applied to
    meta-training classes only, each rotation becoming a new class.  With ``cache`` the decoded
    tensors of each split are kept in ``root/.lightning_meta_<split>.pt`` (rebuilt when files or
    settings change).  Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = ImageFolderDataModule("data/my_classes", image_size=84, ways=5, shots=5, queries=15)
        dm.setup("fit")
    """

    def __init__(
        self,
        root: str,
        image_size: Optional[int] = None,
        channels: Optional[int] = None,
        train_fraction: float = 0.64,
        val_fraction: float = 0.16,
        split_seed: int = 0,
        invert: bool = False,
        rotations: Sequence[int] = (0,),
        cache: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_image_size(image_size)
        check_channels(channels)
        check_fractions(train_fraction, val_fraction)
        check_seed("split_seed", split_seed)
        self.root = str(root)
        self.image_size, self.channels = image_size, channels
        self.train_fraction, self.val_fraction, self.split_seed = train_fraction, val_fraction, split_seed
        self.invert = bool(invert)
        self.rotations = check_rotations(rotations)
        self.cache = cache
        self._layout: Optional[dict[str, ClassFiles]] = None
        self._format: Optional[tuple[int, Optional[int]]] = None
        self._stored_size: Optional[tuple[int, int]] = None
        self._fingerprint: Optional[str] = None

    @property
    def folder(self) -> Path:
        return Path(self.root).expanduser()

    def layout(self) -> dict[str, ClassFiles]:
        """The classes and files of "train", "val" and "test" (from a listing; nothing is decoded)."""
        if self._layout is not None:
            return self._layout
        root = self.folder
        if not root.is_dir():
            raise missing_folder("root", self.root, root, "folder",
                                 "set --data.init_args.root to a folder of class sub-folders of images")
        subfolders = visible_subfolders(root)
        if "train" in subfolders:
            unknown = [name for name in subfolders if name not in SPLIT_FOLDERS]
            if unknown:
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {root.resolve()} holds a 'train' folder, so it is read as a"
                    f" predefined split, but also {unknown}, which are not split names: expected train, val (or"
                    " validation, valid) and test, each holding class folders; rename them, or point root at a folder"
                    " of class folders")
            layout: dict[str, ClassFiles] = {}
            for name in subfolders:
                split = SPLIT_FOLDERS[name]
                if split in layout:
                    raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {root.resolve()} holds two folders for"
                                             f" the '{split}' split; keep one")
                layout[split] = list_class_folders(root / name, "root", self.root)
            for split in ("val", "test"):
                if split not in layout:
                    raise missing_folder("root", self.root, root / split, "predefined split folder",
                                         f"add {split}/<class>/<image> beside train/, or point root at one folder of"
                                         " class folders to split by train_fraction / val_fraction")
            seen: dict[str, str] = {}
            for split, files in layout.items():
                for name in files.names:
                    if name in seen:
                        raise ConfigurationError(
                            f"{DATA_ARGS}root={self.root!r}: class '{name}' is in both the '{seen[name]}' and the"
                            f" '{split}' split folders: few-shot splits must be disjoint in classes; rename or move it")
                    seen[name] = split
        else:
            listing = list_class_folders(root, "root", self.root)
            parts = split_classes(len(listing), self.train_fraction, self.val_fraction, self.split_seed)
            layout = {split: listing.select(indices) for split, indices in parts.items()}
        self._layout = layout
        return layout

    def image_format(self) -> tuple[int, Optional[int]]:
        """``(channels, image_size)``, resolved from the headers of every image of every split.

        All splits share one format, which the model needs; ``image_size=None`` stays ``None``
        (keep the one stored size, checked here).
        """
        if self._format is None:
            paths = [p for files in self.layout().values() for p in files.flat()]
            headers: Optional[ImageHeaders] = None
            channels = self.channels
            if channels is None or self.image_size is None:
                headers = ImageHeaders.read(paths)
            if self.image_size is None:
                self._stored_size = headers.uniform_size("image_size", self.folder)
            if channels is None:
                channels = headers.channels("channels", self.folder)
            self._format = (channels, self.image_size)
        return self._format

    def preprocessing(self) -> ImagePreprocessing:
        """Decoding of every image, training and prediction alike (see the class doc).

        With ``channels`` or ``image_size`` unset, the format is that of the training images (read
        from their headers under ``root``): prediction images must then have their size, and be
        greyscale when all of them were.
        """
        channels, size = (self.channels, self.image_size) if self.channels and self.image_size else self.image_format()
        converts = self.channels is not None or channels == 3  # inferred 3: greyscale images were converted too
        return ImagePreprocessing(channels=channels, image_size=size, invert=self.invert,
                                  stored_size=self._stored_size, converts_channels=converts)

    def files_fingerprint(self) -> str:
        """A key of every file of every split and of the decoding settings: the format of a split
        (inferred channels, one size) depends on the images of all splits."""
        if self._fingerprint is None:
            paths = [p for files in self.layout().values() for p in files.flat()]
            settings = (f"folder;size={self.image_size};channels={self.channels};invert={self.invert};"
                        f"{self.train_fraction};{self.val_fraction};{self.split_seed}")
            self._fingerprint = fingerprint(paths, self.folder, settings)
        return self._fingerprint

    def split_counts(self, split: str) -> tuple[int, int]:
        files = self.layout()[split]
        rotations = self.rotations if split == "train" else (0,)
        return len(files) * len(rotations), files.min_count

    def load_split(self, split: str) -> ClassImages:
        files = self.layout()[split]
        rotations = self.rotations if split == "train" else (0,)
        paths = files.flat()
        cache_path = self.folder / f".lightning_meta_{split}.pt" if self.cache else None
        key = f"{split};{self.files_fingerprint()}"

        def decode():
            return self.preprocessing().decode(paths, decode_images)

        images = cached_decode(cache_path, key, files, decode)
        return ClassImages(images, files.counts, names=files.names, rotations=rotations)
