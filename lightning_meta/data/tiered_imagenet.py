"""tiered-ImageNet (Ren et al. 2018) from learn2learn's pickles of PNG-encoded images, decoded once to uint8."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.download import extract, fetch, google_drive_url
from lightning_meta.data.image_files import ClassFiles, cached_decode, check_image_size, decode_workers, fingerprint
from lightning_meta.data.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: learn2learn's folder (``root/tiered-imagenet/``) and the split of the data module -> its file prefix
FOLDER = "tiered-imagenet"
PREFIXES = {"train": "train", "val": "val", "test": "test"}
#: learn2learn's sources (learn2learn/vision/datasets/tiered_imagenet.py): one Zenodo file per pickle
#: (``tiered-imagenet-<name>`` in record 7978538), else Google Drive's tar of the folder (12 GB). Neither
#: publishes a checksum, so none is verified (the pickles' structure is checked when they are read).
ZENODO = "https://zenodo.org/record/7978538/files/tiered-imagenet-{name}"
DRIVE_TAR_ID = "1g1aIDy2Ar_MViF2gDXFYDBTR-HYecV07"
SOURCE = "tiered-ImageNet (Ren et al. 2018, learn2learn's copy on Zenodo record 7978538 / Google Drive)"
#: images decoded per chunk (each chunk resized and written in place: memory stays the output's)
CHUNK = 4096


def image_file(split: str) -> str:
    return f"{PREFIXES[split]}_images_png.pkl"


def label_file(split: str) -> str:
    return f"{PREFIXES[split]}_labels.pkl"


def load_pickle(path: Path) -> Any:
    """A pickle written by Python 3 or, failing that, by Python 2 (byte strings kept as bytes)."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:
            f.seek(0)
            return pickle.load(f, encoding="bytes")


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_png_blobs(blobs: Sequence[Any], order: np.ndarray, preprocessing: ImagePreprocessing,
                     source: Path) -> torch.Tensor:
    """Decode ``blobs[order[i]]`` (PNG bytes, or uint8 arrays of them) into row ``i`` of one uint8
    tensor ``[len(order), 3, S, S]``, in chunks: each chunk is decoded in threads at its stored size
    (all images must share it), resized with ``preprocessing`` and written in place."""
    from PIL import Image

    if len(order) == 0:
        size = preprocessing.image_size or 0
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)

    def open_rgb(i: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(memoryview(blobs[int(order[i])]).tobytes())) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except Exception as error:
            raise ConfigurationError(
                f"{source.resolve()}: image {int(order[i])} is not a readable PNG ({error}): the file is damaged;"
                " delete it and download it again (data.init_args.download: true)") from error

    height, width = open_rgb(0).shape[:2]
    out: Optional[torch.Tensor] = None
    with ThreadPoolExecutor(decode_workers()) as pool:
        for start in range(0, len(order), CHUNK):
            stop = min(start + CHUNK, len(order))
            chunk = np.empty((stop - start, height, width, 3), dtype=np.uint8)

            def decode(i: int) -> None:
                array = open_rgb(i)
                if array.shape[:2] != (height, width):
                    raise ConfigurationError(
                        f"{source.resolve()}: image {int(order[i])} is {array.shape[1]}x{array.shape[0]}, not"
                        f" {width}x{height} like the others: not learn2learn's tiered-ImageNet")
                chunk[i - start] = array

            list(pool.map(decode, range(start, stop)))
            x = preprocessing.resize(torch.from_numpy(chunk).permute(0, 3, 1, 2))
            if out is None:
                out = torch.empty(len(order), 3, x.shape[-2], x.shape[-1], dtype=torch.uint8)
            out[start:stop] = x
    assert out is not None
    return out


class TieredImageNetDataModule(EpisodicDataModule):
    """tiered-ImageNet: 608 ImageNet classes (779,165 colour images, 84 x 84) grouped into 34
    categories; whole categories make the 351 / 97 / 160 classes of meta-train / validation / test
    (Ren et al. 2018), so test classes are semantically far from training ones.

    Reads learn2learn's files ``root/tiered-imagenet/{train,val,test}_images_png.pkl`` (a pickled
    list of PNG-encoded images) and ``{split}_labels.pkl`` (a dict with ``"label_specific"``, one
    class index per image, and ``"label_specific_str"``, the class names, when present); ``root``
    may also be the ``tiered-imagenet`` folder itself.  The PNGs are decoded once, in threads, into
    uint8 tensors grouped by class and cached beside the pickles
    (``.lightning_meta_<split>_<image_size>.pt``; about 9.5 GB for the training split at 84 x 84,
    rebuilt when a pickle changes); later runs read the cache and never load the PNG pickles.
    Nothing is held as float.  ``image_size`` other than 84 resizes once (bilinear, antialiased);
    ``normalize=True`` standardises with ImageNet's mean and std, otherwise pixels are scaled to [0, 1].

    ``download=True`` fetches the six pickles from learn2learn's Zenodo record, else its Google Drive
    tar (12 GB); no checksum is published for either, so none is verified.

    Example::

        dm = TieredImageNetDataModule("data", ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]

    References:
        Ren et al. "Meta-Learning for Semi-Supervised Few-Shot Classification." ICLR 2018.
    """

    def __init__(self, root: str, download: bool = False, image_size: int = 84, normalize: bool = False,
                 cache: bool = True, **kwargs):
        super().__init__(**kwargs)
        check_image_size(image_size, optional=False)
        self.root = str(root)
        self.download = bool(download)
        self.image_size = image_size
        self.normalize = bool(normalize)
        self.cache = bool(cache)
        self._labels: dict[str, tuple[np.ndarray, list[str]]] = {}

    # ----------------------------------------------------------------- files
    @property
    def folder(self) -> Path:
        """``root/tiered-imagenet`` (or ``root`` itself when it holds the pickles)."""
        root = Path(self.root).expanduser()
        if not (root / FOLDER).is_dir() and (root / label_file("train")).is_file():
            return root
        return root / FOLDER

    def missing(self) -> list[Path]:
        return [self.folder / name for split in PREFIXES for name in (image_file(split), label_file(split))
                if not (self.folder / name).is_file()]

    def prepare_data(self) -> None:
        if self.download and not self.predicting:  # predict decodes support_dir / query_dir only
            self.ensure_files()

    def ensure_files(self) -> None:
        """Fetch the missing pickles with ``download`` (Zenodo, else the Google Drive tar); a one-line
        error naming the first missing file otherwise."""
        missing = self.missing()
        if missing and self.download:
            try:
                for path in missing:
                    fetch([ZENODO.format(name=path.name)], path, what=SOURCE)
            except ConfigurationError:
                root = Path(self.root).expanduser()
                archive = fetch([google_drive_url(DRIVE_TAR_ID)], root / "tiered_imagenet.tar", what=SOURCE)
                unpacked = root / ".tiered_imagenet_tar"
                extract(archive, unpacked)  # then move in only what is missing (Zenodo may have given some)
                for path in self.missing():
                    found = next(unpacked.rglob(path.name), None)
                    if found is not None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(found, path)
                shutil.rmtree(unpacked, ignore_errors=True)
                archive.unlink()
            missing = self.missing()
        if missing:
            root = Path(self.root).expanduser()
            where = f"folder {root.resolve()} does not exist" if not root.is_dir() else \
                f"{missing[0].resolve()} is missing"
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: tiered-ImageNet not found: {where}. Set --data.init_args.root to"
                f" the folder holding {FOLDER}/{{train,val,test}}_images_png.pkl and _labels.pkl (learn2learn's files,"
                f" {SOURCE}), or set data.init_args.download: true to fetch them")

    def labels(self, split: str) -> tuple[np.ndarray, list[str]]:
        """``(class index of each image, class names)`` of ``split`` from its small labels pickle."""
        if split not in self._labels:
            self.ensure_files()
            path = self.folder / label_file(split)
            try:
                data = load_pickle(path)
            except Exception as error:
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not a readable pickle ({error}): delete it"
                    " and set data.init_args.download: true") from error
            if isinstance(data, dict):
                data = {text(k): v for k, v in data.items()}
            labels = data.get("label_specific") if isinstance(data, dict) else None
            if labels is None or np.ndim(labels) != 1:
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not in learn2learn's tiered-ImageNet format:"
                    " expected a dict with 'label_specific' (one class index per image)")
            labels = np.asarray(labels, dtype=np.int64)
            count = int(labels.max()) + 1 if labels.size else 0
            given = data.get("label_specific_str")
            names = [text(n) for n in given] if given is not None and len(given) >= count else \
                [f"class{i:03d}" for i in range(count)]
            self._labels[split] = (labels, names)
        return self._labels[split]

    def listing(self, split: str) -> tuple[ClassFiles, np.ndarray]:
        """The classes present in ``split`` (by index) with their image rows, and the row order that
        groups the images by class."""
        labels, names = self.labels(split)
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        ends = list(starts[1:]) + [len(order)]
        rows = [order[s:e].tolist() for s, e in zip(starts, ends)]
        # ClassFiles holds the image rows of each class (not paths): cached_decode reads names and counts
        return ClassFiles([names[i] for i in present.tolist()], rows), order  # type: ignore[arg-type]

    def split_counts(self, split: str) -> tuple[int, int]:
        listing, _ = self.listing(split)
        return len(listing), listing.min_count

    # ----------------------------------------------------------------- loading
    def preprocessing(self) -> ImagePreprocessing:
        """RGB, resized to ``image_size`` (bilinear, antialiased, on uint8), scaled to [0, 1] and, with
        ``normalize``, standardised with ImageNet's mean and std."""
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.normalize else (None, None)
        return ImagePreprocessing(channels=3, image_size=self.image_size, resampling="bilinear", mean=mean, std=std)

    def decode_split(self, split: str, order: np.ndarray) -> torch.Tensor:
        """Load the PNG pickle of ``split`` and decode its images in ``order``."""
        path = self.folder / image_file(split)
        try:
            blobs = load_pickle(path)
        except Exception as error:
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not a readable pickle ({error}): delete it and"
                " set data.init_args.download: true") from error
        if isinstance(blobs, dict):  # some copies wrap the list: {"images": [...]}
            blobs = next((v for k, v in blobs.items() if text(k) in ("images", "data")), blobs)
        if not isinstance(blobs, (list, tuple, np.ndarray)) or len(blobs) != len(order):
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not in learn2learn's tiered-ImageNet format:"
                f" expected a list of {len(order)} PNG-encoded images (one per label of {label_file(split)})")
        return decode_png_blobs(blobs, order, self.preprocessing(), path)

    def load_split(self, split: str) -> ClassImages:
        listing, order = self.listing(split)
        folder = self.folder
        paths = [folder / image_file(split), folder / label_file(split)]
        cache_path = folder / f".lightning_meta_{PREFIXES[split]}_{self.image_size}.pt" if self.cache else None
        key = fingerprint(paths, folder, f"tiered;{split};size={self.image_size};RGB;bilinear")
        images = cached_decode(cache_path, key, listing, lambda: self.decode_split(split, order))
        del self._labels[split]
        preprocessing = self.preprocessing()
        return ClassImages(images, listing.counts, names=listing.names, mean=preprocessing.mean, std=preprocessing.std)
