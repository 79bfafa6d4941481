"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 with a 64 / 16 / 20 class split, as episodes; and the
CIFAR-100 reader that FC100 shares (:mod:`lightning_meta.data.fc100`)."""

from __future__ import annotations

import json
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.download import missing_where, unpack_archive
from lightning_meta.data.image_files import check_image_size
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: torchvision's extracted layout of the archive: ``root/cifar-100-python/{train,test,meta}``
CIFAR_FOLDER = "cifar-100-python"
CIFAR_FILES = ("train", "test", "meta")
CIFAR_ARCHIVE = "cifar-100-python.tar.gz"
#: the archive's address and md5, as torchvision.datasets.CIFAR100 (``url``, ``tgz_md5``) downloads it
CIFAR_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)
CIFAR_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR_SOURCE = "CIFAR-100 (Krizhevsky 2009, www.cs.toronto.edu/~kriz/cifar.html)"
#: CIFAR-100's per-channel pixel mean and std, as MetaOptNet (data/CIFAR_FS.py, data/FC100.py) normalises
CIFAR_MEAN = (129.37731888 / 255, 124.10583864 / 255, 112.47758569 / 255)
CIFAR_STD = (68.20947949 / 255, 65.43124043 / 255, 70.45866994 / 255)
SPLITS = ("train", "val", "test")


@lru_cache(maxsize=None)
def cifar100_splits() -> dict[str, Any]:
    """The shipped ``splits/cifar100.json``: CIFAR-100's fine class names (label order), each fine class's
    super-class, CIFAR-FS's class split and FC100's super-class split (sources in its ``_source``)."""
    with open(Path(__file__).parent / "splits" / "cifar100.json") as f:
        return json.load(f)


def unpickle(path: Path, root: str, what: str) -> Any:
    """A pickle of Python 2 origin (``latin1``: byte strings become str, uint8 arrays survive), or a
    one-line error naming ``path``."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as error:
        raise ConfigurationError(
            f"{DATA_ARGS}root={root!r}: {path.resolve()} is not a readable {what} pickle"
            f" ({type(error).__name__}: {error}): replace it (delete it and set data.init_args.download: true)") from error
    if isinstance(data, dict):  # keys pickled as bytes (Python 3 re-pickles) read as the str keys of Python 2's
        data = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in data.items()}
    return data


class CIFAR100Classes(EpisodicDataModule):
    """Episodes over classes of CIFAR-100 (60,000 colour 32 x 32 images, 600 per class: the archive's
    train and test images together), read from torchvision's layout ``root/cifar-100-python/``.

    Subclasses say which fine classes make each split (:meth:`class_names`).  Images stay uint8 (184 MB
    for all of CIFAR-100); the three ``.pkl``-like files are read once (about a second), so no cache
    is written.  ``image_size`` other than 32 resizes once (bilinear, antialiased); ``normalize=True``
    standardises with CIFAR-100's mean and std (MetaOptNet's values), otherwise pixels are scaled to
    [0, 1].  ``download=True`` fetches the archive (161 MB, md5-checked) and extracts it; an archive
    already in ``root`` is extracted without network access.

    Example::

        class FirstTen(CIFAR100Classes):
            def class_names(self, split):
                return cifar100_splits()["fine_names"][:10]
    """

    #: what a split of this data set is called in errors ("CIFAR-FS")
    title = "CIFAR-100"

    def __init__(self, root: str, download: bool = False, image_size: int = 32, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        check_image_size(image_size, optional=False)
        self.root = str(root)
        self.download = bool(download)
        self.image_size = image_size
        self.normalize = bool(normalize)
        self._cifar: Optional[tuple[np.ndarray, np.ndarray, list[str]]] = None

    # ----------------------------------------------------------------- subclass hook
    def class_names(self, split: str) -> list[str]:
        """The CIFAR-100 fine class names of ``split`` ("train", "val" or "test")."""
        raise NotImplementedError

    # ----------------------------------------------------------------- files
    @property
    def folder(self) -> Path:
        """``root/cifar-100-python`` (or ``root`` itself when it holds train, test and meta)."""
        root = Path(self.root).expanduser()
        if not (root / CIFAR_FOLDER).is_dir() and all((root / name).is_file() for name in CIFAR_FILES):
            return root
        return root / CIFAR_FOLDER

    def missing(self) -> list[Path]:
        return [self.folder / name for name in CIFAR_FILES if not (self.folder / name).is_file()]

    def prepare_data(self) -> None:
        if self.download and not self.predicting:  # predict decodes support_dir / query_dir only
            self.ensure_files()

    def ensure_files(self) -> None:
        """Extract ``root/cifar-100-python.tar.gz`` when the folder is missing, fetching it first with
        ``download``; a one-line error naming the missing file otherwise."""
        if not self.missing():
            return
        unpack_archive(self.root, CIFAR_ARCHIVE, CIFAR_URLS, download=self.download, md5=CIFAR_MD5, what=CIFAR_SOURCE)
        missing = self.missing()
        if missing:
            where = missing_where(self.root, missing[0])
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {self.title} needs {CIFAR_SOURCE}, not found: {where}. Set"
                f" --data.init_args.root to the folder holding {CIFAR_FOLDER}/ (torchvision's layout, extracted from"
                f" {CIFAR_URLS[0]}) or holding {CIFAR_ARCHIVE}, or set data.init_args.download: true to fetch it")

    def cifar(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(images uint8 [N, 3, 32, 32], fine labels [N], fine names)`` of the archive's train and test
        files together, read once."""
        if self._cifar is None:
            self.ensure_files()
            meta = unpickle(self.folder / "meta", self.root, "CIFAR-100 meta")
            names = meta.get("fine_label_names") if isinstance(meta, dict) else None
            arrays, labels = [], []
            for name in ("train", "test"):
                data = unpickle(self.folder / name, self.root, "CIFAR-100")
                x = data.get("data") if isinstance(data, dict) else None
                y = data.get("fine_labels") if isinstance(data, dict) else None
                if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y is None \
                        or len(y) != len(x) or not isinstance(names, list):
                    raise ConfigurationError(
                        f"{DATA_ARGS}root={self.root!r}: {(self.folder / name).resolve()} is not in CIFAR-100's python"
                        " format: expected a dict with 'data' (uint8 [N, 3072]) and 'fine_labels', and a 'meta' file"
                        f" with 'fine_label_names'; extract {CIFAR_ARCHIVE} again")
                arrays.append(x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(y, dtype=np.int64))
            names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
            self._cifar = (np.concatenate(arrays), np.concatenate(labels), names)
        return self._cifar

    # ----------------------------------------------------------------- splits
    def rows(self, split: str) -> tuple[list[str], list[np.ndarray]]:
        """The sorted class names of ``split`` and the rows of each in :meth:`cifar`'s arrays."""
        _, labels, names = self.cifar()
        wanted = sorted(self.class_names(split))
        index = {name: i for i, name in enumerate(names)}
        unknown = [name for name in wanted if name not in index]
        if unknown:
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: {self.folder.resolve()} has no CIFAR-100 class {unknown[0]!r} of the"
                f" {self.title} '{split}' split ({len(unknown)} missing): it is not the full CIFAR-100; extract"
                f" {CIFAR_ARCHIVE} again")
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(names) + 1))
        return wanted, [order[bounds[index[n]]:bounds[index[n] + 1]] for n in wanted]

    def split_counts(self, split: str) -> tuple[int, int]:
        _, rows = self.rows(split)
        counts = [len(r) for r in rows]
        return len(counts), min(counts) if counts else 0

    def preprocessing(self) -> ImagePreprocessing:
        """RGB, resized to ``image_size`` (bilinear, antialiased, on uint8), scaled to [0, 1] and, with
        ``normalize``, standardised with CIFAR-100's mean and std."""
        mean, std = (CIFAR_MEAN, CIFAR_STD) if self.normalize else (None, None)
        return ImagePreprocessing(channels=3, image_size=self.image_size, resampling="bilinear", mean=mean, std=std)

    def load_split(self, split: str) -> ClassImages:
        names, rows = self.rows(split)
        images, _, _ = self.cifar()
        selected = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        x = torch.from_numpy(images).index_select(0, torch.from_numpy(selected))
        if all(s in self.sources or s == split for s in SPLITS):
            self._cifar = None  # every split holds its own images now
        preprocessing = self.preprocessing()
        return ClassImages(preprocessing.resize(x), [len(r) for r in rows], names=names,
                           mean=preprocessing.mean, std=preprocessing.std)


class CIFARFSDataModule(CIFAR100Classes):
    """CIFAR-FS: CIFAR-100's 100 classes of 600 colour images (32 x 32) split 64 / 16 / 20 for
    meta-train / validation / test, the split of Bertinetto et al. (2019) (their split files, as
    torchmeta ships them, are in ``lightning_meta/data/splits/cifar100.json``).

    Reads torchvision's CIFAR-100 layout ``root/cifar-100-python/{train,test,meta}``; both archive
    files' images are used (600 per class).  ``download=True`` fetches
    ``cifar-100-python.tar.gz`` (www.cs.toronto.edu, md5 ``eb9058c3...``, as torchvision) when
    missing.  ``image_size``, ``normalize``: see :class:`CIFAR100Classes`; other arguments as
    :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = CIFARFSDataModule("data", download=True, ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 32, 32]

    References:
        Bertinetto, Henriques, Torr, Vedaldi. "Meta-learning with differentiable closed-form solvers." ICLR 2019.
    """

    title = "CIFAR-FS"

    def class_names(self, split: str) -> list[str]:
        return list(cifar100_splits()["cifar_fs"][split])
