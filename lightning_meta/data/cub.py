"""CUB-200-2011 (Wah et al. 2011) as few-shot episodes, with Chen et al.'s 100 / 50 / 50 class split."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.download import missing_where, unpack_archive
from lightning_meta.data.image_files import (
    ClassFiles,
    cached_decode,
    check_image_size,
    decode_images,
    decode_workers,
    fingerprint,
    opened,
)
from lightning_meta.data.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError

FOLDER = "CUB_200_2011"
TEXT_FILES = ("images.txt", "image_class_labels.txt", "classes.txt")
BOXES = "bounding_boxes.txt"
ARCHIVE = "CUB_200_2011.tgz"
#: the official archive on CaltechDATA (www.vision.caltech.edu/datasets/cub_200_2011 links there), and
#: its md5 as the CUB loaders of avalanche (CUB200.tgz_md5) and TDeVries/cub2011_dataset verify it
URLS = ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",)
MD5 = "97eceeb196236b17998738112f37df78"
SOURCE = "CUB-200-2011 (Wah et al. 2011, CaltechDATA record 65de6-vp158)"


def chen_split(index: int) -> str:
    """The split of the class at ``index`` of the sorted class folders, as Chen et al.'s
    ``filelists/CUB/write_CUB_filelist.py`` (CloserLookFewShot): even -> base (train), ``% 4 == 1`` ->
    val, ``% 4 == 3`` -> novel (test); 100 / 50 / 50 of CUB's 200 classes."""
    return "train" if index % 2 == 0 else "val" if index % 4 == 1 else "test"


def decode_cropped(paths: Sequence[Path], boxes: np.ndarray, image_size: int) -> torch.Tensor:
    """RGB uint8 ``[N, 3, image_size, image_size]``: image ``i`` cropped to ``boxes[i]`` (x, y, width,
    height in pixels, CUB's ``bounding_boxes.txt``; clipped to the image) and resized with Lanczos."""
    from PIL import Image

    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        with opened(paths[i]) as image:
            image = image.convert("RGB")
            x, y, w, h = boxes[i]
            left, top = max(0, int(x)), max(0, int(y))
            right, bottom = min(image.width, int(np.ceil(x + w))), min(image.height, int(np.ceil(y + h)))
            if right > left and bottom > top:
                image = image.crop((left, top, right, bottom))
            out[i] = np.asarray(image.resize((image_size, image_size), Image.Resampling.LANCZOS), dtype=np.uint8)

    with ThreadPoolExecutor(decode_workers()) as pool:
        list(pool.map(decode, range(len(paths)), chunksize=64))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class CUBDataModule(EpisodicDataModule):
    """CUB-200-2011: 11,788 photographs of 200 bird species (JPEGs of varied sizes), split 100 / 50 / 50
    species for meta-train / validation / test as Chen et al. (2019) (the even-numbered classes of the
    sorted class folders are meta-train, ``% 4 == 1`` validation, ``% 4 == 3`` test: :func:`chen_split`).

    Reads the official tree ``root/CUB_200_2011/`` (``images/``, ``images.txt``,
    ``image_class_labels.txt``, ``classes.txt`` and, for ``crop_to_bounding_box``,
    ``bounding_boxes.txt``); ``root`` is the folder holding ``CUB_200_2011/`` (as for Omniglot) or
    that folder itself.  Every image is converted to RGB, optionally cropped to its bird's bounding
    box, and resized to ``image_size x image_size`` (Lanczos), once: the uint8 tensors are cached in
    ``CUB_200_2011/.lightning_meta_<image_size>[_bbox].pt`` (about 250 MB at 84; rebuilt when a file
    changes).  ``normalize=True`` standardises with ImageNet's mean and std (as Chen et al.'s code),
    otherwise pixels are scaled to [0, 1].  ``download=True`` fetches the official archive (1.1 GB,
    md5-checked) and extracts it; an archive already in ``root`` is extracted without network access.

    Example::

        dm = CUBDataModule("data", download=True, ways=5, shots=1, queries=16, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]

    References:
        Wah, Branson, Welinder, Perona, Belongie. "The Caltech-UCSD Birds-200-2011 Dataset." CNS-TR-2011-001.
        Chen, Liu, Kira, Wang, Huang. "A Closer Look at Few-shot Classification." ICLR 2019.
    """

    def __init__(self, root: str, download: bool = False, image_size: int = 84, crop_to_bounding_box: bool = False,
                 normalize: bool = False, cache: bool = True, **kwargs):
        super().__init__(**kwargs)
        check_image_size(image_size, optional=False)
        self.root = str(root)
        self.download = bool(download)
        self.image_size = image_size
        self.crop_to_bounding_box = bool(crop_to_bounding_box)
        self.normalize = bool(normalize)
        self.cache = bool(cache)
        self._catalog: Optional[tuple[ClassFiles, np.ndarray]] = None
        self._images: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------- files
    @property
    def folder(self) -> Path:
        """``root/CUB_200_2011`` (or ``root`` itself when it holds images.txt)."""
        root = Path(self.root).expanduser()
        if not (root / FOLDER).is_dir() and (root / "images.txt").is_file():
            return root
        return root / FOLDER

    def needed(self) -> tuple[str, ...]:
        return TEXT_FILES + ((BOXES,) if self.crop_to_bounding_box else ())

    def missing(self) -> list[Path]:
        folder = self.folder
        return [folder / name for name in self.needed() if not (folder / name).is_file()] + \
            ([folder / "images"] if not (folder / "images").is_dir() else [])

    def prepare_data(self) -> None:
        if self.download and not self.predicting:  # predict decodes support_dir / query_dir only
            self.ensure_files()

    def ensure_files(self) -> None:
        """Extract ``root/CUB_200_2011.tgz`` when files are missing, fetching it first with ``download``;
        a one-line error naming the first missing file otherwise."""
        if not self.missing():
            return
        unpack_archive(self.root, ARCHIVE, URLS, download=self.download, md5=MD5, what=SOURCE)
        missing = self.missing()
        if missing:
            where = missing_where(self.root, missing[0])
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: CUB-200-2011 not found: {where}. Set --data.init_args.root to the"
                f" folder holding {FOLDER}/ (the official tree: images/, images.txt, image_class_labels.txt,"
                f" classes.txt, {BOXES}; {SOURCE}) or holding {ARCHIVE}, or set data.init_args.download: true to"
                " fetch it")

    def read_table(self, name: str, columns: int) -> dict[int, list[str]]:
        """``{id: [the other columns]}`` of one of CUB's ``<id> <value> ...`` text files."""
        path = self.folder / name
        table: dict[int, list[str]] = {}
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split(maxsplit=columns - 1) if columns > 1 else line.split()
                parts = [p.strip() for p in parts]
                if len(parts) != columns or not parts[0].isdigit():
                    raise ConfigurationError(
                        f"{DATA_ARGS}root={self.root!r}: {path.resolve()} line {number} is {line.strip()!r}, not"
                        f" '<id> ...' with {columns} columns as in CUB-200-2011; extract {ARCHIVE} again")
                table[int(parts[0])] = parts[1:]
        return table

    def catalog(self) -> tuple[ClassFiles, np.ndarray]:
        """Every class (sorted by name, e.g. ``001.Black_footed_Albatross``) with its image files sorted by
        image id, and the bounding box (x, y, width, height) of each image in the same (flat) order."""
        if self._catalog is not None:
            return self._catalog
        self.ensure_files()
        images = self.read_table("images.txt", 2)
        labels = self.read_table("image_class_labels.txt", 2)
        classes = self.read_table("classes.txt", 2)
        boxes = self.read_table(BOXES, 5) if self.crop_to_bounding_box else {}
        unlabelled = sorted(set(images) - set(labels))
        unknown = sorted(i for i, (c,) in labels.items() if not c.isdigit() or int(c) not in classes)
        unboxed = sorted(set(images) - set(boxes)) if self.crop_to_bounding_box else []
        if unlabelled or unknown or unboxed:
            what, image = (("has no class in image_class_labels.txt", unlabelled[0]) if unlabelled else
                           ("has a class missing from classes.txt", unknown[0]) if unknown else
                           (f"has no box in {BOXES}", unboxed[0]))
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: image {image} of {(self.folder / 'images.txt').resolve()} {what}: the"
                f" CUB-200-2011 files do not match; extract {ARCHIVE} again")
        names = sorted(name for (name,) in classes.values())
        by_name: dict[str, list[int]] = {name: [] for name in names}
        for image in sorted(images):
            by_name[classes[int(labels[image][0])][0]].append(image)
        listing = ClassFiles()
        box_rows = []
        for name in names:
            if not by_name[name]:
                continue  # a class without images (a shrunk copy) is left out
            listing.names.append(name)
            listing.files.append([self.folder / "images" / images[i][0] for i in by_name[name]])
            box_rows += [[float(v) for v in boxes[i]] for i in by_name[name]] if boxes else []
        absent = next((p for p in listing.flat() if not p.is_file()), None)
        if absent is not None:
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {absent.resolve()} is listed in images.txt but missing: extract"
                f" {ARCHIVE} again")
        self._catalog = (listing, np.asarray(box_rows, dtype=np.float64).reshape(-1, 4))
        return self._catalog

    def assignment(self) -> dict[str, list[int]]:
        """Indices into :meth:`catalog`'s classes of "train", "val" and "test" (:func:`chen_split`)."""
        listing, _ = self.catalog()
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for i in range(len(listing)):
            parts[chen_split(i)].append(i)
        return parts

    def class_names(self, split: str) -> list[str]:
        listing, _ = self.catalog()
        return [listing.names[i] for i in self.assignment()[split]]

    # ----------------------------------------------------------------- loading
    def preprocessing(self) -> ImagePreprocessing:
        """RGB, Lanczos-resized to ``image_size`` (prediction images are not cropped), scaled to [0, 1]
        and, with ``normalize``, standardised with ImageNet's mean and std."""
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.normalize else (None, None)
        return ImagePreprocessing(channels=3, image_size=self.image_size, mean=mean, std=std)

    def decoded(self) -> torch.Tensor:
        """All classes' images, uint8 ``[total, 3, image_size, image_size]``, in :meth:`catalog` order."""
        if self._images is None:
            listing, boxes = self.catalog()
            folder = self.folder
            paths = listing.flat()
            crop = "_bbox" if self.crop_to_bounding_box else ""
            cache_path = folder / f".lightning_meta_{self.image_size}{crop}.pt" if self.cache else None
            watched = paths + [folder / name for name in self.needed()]
            key = fingerprint(watched, folder, f"cub;size={self.image_size};RGB;lanczos;crop={bool(crop)}")
            if self.crop_to_bounding_box:
                decode = lambda: decode_cropped(paths, boxes, self.image_size)  # noqa: E731
            else:
                decode = lambda: self.preprocessing().decode(paths, decode_images)  # noqa: E731
            self._images = cached_decode(cache_path, key, listing, decode)
        return self._images

    def split_counts(self, split: str) -> tuple[int, int]:
        listing, _ = self.catalog()
        counts = [len(listing.files[i]) for i in self.assignment()[split]]
        return len(counts), min(counts) if counts else 0

    def load_split(self, split: str) -> ClassImages:
        listing, _ = self.catalog()
        indices = self.assignment()[split]
        images = self.decoded()
        offsets = np.concatenate([[0], np.cumsum(listing.counts)])
        rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in indices]) if indices \
            else torch.zeros(0, dtype=torch.long)
        preprocessing = self.preprocessing()
        return ClassImages(images.index_select(0, rows), [len(listing.files[i]) for i in indices],
                           names=[listing.names[i] for i in indices], mean=preprocessing.mean, std=preprocessing.std)
