"""mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle splits) from learn2learn's pickle files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.image_files import check_image_size
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: split of the data module -> learn2learn's name of the split in the pickle file names
MODES = {"train": "train", "val": "validation", "test": "test"}
#: learn2learn 0.2.0's sources of each pickle (learn2learn/vision/datasets/mini_imagenet.py)
SOURCES = {
    "train": ("https://zenodo.org/record/7978538/files/mini-imagenet-cache-train.pkl",
              "https://www.dropbox.com/s/9g8c6w345s2ek03/mini-imagenet-cache-train.pkl?dl=1",
              "1I3itTXpXxGV68olxM5roceUMG8itH9Xj"),
    "validation": ("https://zenodo.org/record/7978538/files/mini-imagenet-cache-validation.pkl",
                   "https://www.dropbox.com/s/ip1b7se3gij3r1b/mini-imagenet-cache-validation.pkl?dl=1",
                   "1KY5e491bkLFqJDp0-UWou3463Mo8AOco"),
    "test": ("https://zenodo.org/record/7978538/files/mini-imagenet-cache-test.pkl",
             "https://www.dropbox.com/s/ye9jeb5tyz0x01b/mini-imagenet-cache-test.pkl?dl=1",
             "1wpmY-hmiJUUlRBkO9ZDCXAcIpHEFdOhD"),
}
#: ImageNet's per-channel mean and standard deviation, used when ``normalize=True``
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pickle_name(split: str) -> str:
    return f"mini-imagenet-cache-{MODES[split]}.pkl"


class MiniImageNetDataModule(EpisodicDataModule):
    """mini-ImageNet: 100 ImageNet classes of 600 colour images (84 x 84), 64 / 16 / 20 classes for
    meta-train / validation / test (Ravi & Larochelle 2017), as episodes.

    Reads learn2learn's files ``root/mini-imagenet-cache-{train,validation,test}.pkl``, each a
    pickled dict with ``"image_data"`` (uint8 ``[N, 84, 84, 3]``) and ``"class_dict"`` (class name
    -> row indices).  Images stay uint8 in memory (about 1.7 GB for the three splits; learn2learn's
    own ``MiniImagenet`` class holds float32, four times as much), grouped by class in sorted class
    name order.  ``image_size`` other than the stored size resizes them once (bilinear,
    antialiased).  ``normalize=True`` standardises pixels with ImageNet's per-channel mean and std
    after scaling them to [0, 1]; by default pixels are only scaled to [0, 1], as in MAML.
    ``download=True`` fetches missing pickles from learn2learn's sources (Zenodo, Dropbox, Google
    Drive; about 1.2 GB in all).  Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = MiniImageNetDataModule("data", ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]
    """

    def __init__(self, root: str, download: bool = False, image_size: int = 84, normalize: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        check_image_size(image_size, optional=False)
        self.root = str(root)
        self.download = bool(download)
        self.image_size = image_size
        self.normalize = bool(normalize)
        self._pickles: dict[str, dict[str, Any]] = {}

    def path(self, split: str) -> Path:
        return Path(self.root).expanduser() / pickle_name(split)

    def prepare_data(self) -> None:
        if self.download and not self.predicting:  # predict decodes support_dir / query_dir only
            for split in MODES:
                if not self.path(split).is_file():
                    self._download(split)

    def _download(self, split: str) -> None:
        """Fetch one pickle with learn2learn's helpers into a temporary file, then move it in place."""
        path = self.path(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.part{os.getpid()}")
        errors = []
        try:
            from learn2learn.data.utils import download_file, download_file_from_google_drive
        except Exception as error:  # learn2learn is optional (the "reference" extra)
            raise ConfigurationError(
                f"{DATA_ARGS}download=true needs learn2learn for mini-ImageNet ({error}): pip install learn2learn,"
                f" or download {pickle_name(split)} yourself into {path.parent.resolve()}") from error
        zenodo, dropbox, drive = SOURCES[MODES[split]]
        attempts = [(zenodo, lambda: download_file(zenodo, str(tmp))),
                    (dropbox, lambda: download_file(dropbox, str(tmp))),
                    (f"Google Drive id {drive}", lambda: download_file_from_google_drive(drive, str(tmp)))]
        for source, fetch in attempts:
            try:
                fetch()
                with open(tmp, "rb") as f:
                    head = f.read(2)
                if head[:1] != b"\x80" or tmp.stat().st_size < 1 << 20:  # not a pickle (an HTML error page)
                    raise OSError("the download is not a pickle file")
                os.replace(tmp, path)
                return
            except Exception as error:
                errors.append(f"{source}: {type(error).__name__}: {error}")
            finally:
                if tmp.exists():
                    tmp.unlink()
        raise ConfigurationError(
            f"{DATA_ARGS}download=true: could not download {pickle_name(split)} ({'; '.join(errors)}). Without network"
            f" access, copy the three mini-imagenet-cache-*.pkl files into {path.parent.resolve()} and set"
            " --data.init_args.root to that folder")

    def read(self, split: str) -> dict[str, Any]:
        path = self.path(split)
        if not path.is_file() and self.download:
            self._download(split)
        if not path.is_file():
            root = Path(self.root).expanduser()
            where = f"folder {root.resolve()} does not exist" if not root.is_dir() else f"{path.resolve()} is missing"
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: mini-ImageNet not found: {where}. Set --data.init_args.root to the"
                " folder holding mini-imagenet-cache-{train,validation,test}.pkl (learn2learn's files), or set"
                " data.init_args.download: true to fetch them")
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)
        except Exception as error:
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not a readable mini-ImageNet pickle ({error}):"
                " download it again (delete it and set data.init_args.download: true)") from error
        images, classes = (data.get("image_data"), data.get("class_dict")) if isinstance(data, dict) else (None, None)
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 \
                or not isinstance(classes, dict):
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not in learn2learn's mini-ImageNet format:"
                " expected a dict with 'image_data' (uint8 [N, H, W, 3]) and 'class_dict' (class name -> row indices)")
        return data

    def pickle(self, split: str) -> dict[str, Any]:
        """The unpickled file of ``split``, kept until :meth:`load_split` turns it into tensors."""
        if split not in self._pickles:
            self._pickles[split] = self.read(split)
        return self._pickles[split]

    def preprocessing(self) -> ImagePreprocessing:
        """RGB, resized to ``image_size`` (bilinear, antialiased, on uint8), scaled to [0, 1] and, with
        ``normalize``, standardised with ImageNet's mean and std."""
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.normalize else (None, None)
        return ImagePreprocessing(channels=3, image_size=self.image_size, resampling="bilinear", mean=mean, std=std)

    def split_counts(self, split: str) -> tuple[int, int]:
        # the counts are inside the pickle: reading it is the cheapest way to know them
        counts = [len(rows) for rows in self.pickle(split)["class_dict"].values()]
        return len(counts), min(counts) if counts else 0

    def load_split(self, split: str) -> ClassImages:
        data = self.pickle(split)
        del self._pickles[split]
        classes = {name: np.asarray(rows, dtype=np.int64) for name, rows in data["class_dict"].items()}
        names = sorted(classes)
        counts = [len(classes[name]) for name in names]
        array = data.pop("image_data")
        if array.dtype != np.uint8:
            if array.min() < 0 or array.max() > 255:
                raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {self.path(split)} holds {array.dtype} pixels"
                                         " outside [0, 255]; expected uint8")
            array = array.astype(np.uint8)
        rows = np.concatenate([classes[name] for name in names]) if names else np.zeros(0, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(array)):
            raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {self.path(split)} has class_dict rows outside"
                                     f" its {len(array)} images")
        images = torch.from_numpy(array)
        if not np.array_equal(rows, np.arange(len(array))):
            images = images[torch.from_numpy(rows)]
        images = images.permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W], grouped by class
        del array, data
        preprocessing = self.preprocessing()
        images = preprocessing.resize(images)
        return ClassImages(images, counts, names=names, mean=preprocessing.mean, std=preprocessing.std)
