"""FC100 (Oreshkin et al. 2018): CIFAR-100 split by super-class, 60 / 20 / 20 classes, as episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lightning_meta.data.cifar_fs import CIFAR100Classes, cifar100_splits, unpickle
from lightning_meta.data.class_images import ClassImages
from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_choice

Layout = Literal["auto", "cifar100", "metaoptnet"]
#: MetaOptNet's file of each split (Lee et al. 2019, github.com/kjunelee/MetaOptNet, data/FC100.py)
METAOPTNET_FILES = {"train": "FC100_train.pickle", "val": "FC100_val.pickle", "test": "FC100_test.pickle"}


class FC100DataModule(CIFAR100Classes):
    """FC100 ("Fewshot-CIFAR100"): CIFAR-100's 20 super-classes split 12 / 4 / 4, i.e. 60 / 20 / 20 fine
    classes of 600 colour images (32 x 32) for meta-train / validation / test, so that test classes
    are semantically far from the training ones (Oreshkin et al. 2018; the super-class lists, as
    torchmeta ships them, are in ``lightning_meta/data/splits/cifar100.json``).

    On-disk layouts (``layout``):

    * ``"metaoptnet"``: MetaOptNet's pickles ``root/FC100_{train,val,test}.pickle``, each a dict with
      ``"data"`` (uint8 ``[N, 32, 32, 3]``) and ``"labels"`` (CIFAR-100 fine label ids), Python 2
      pickles read with ``latin1``.  They are hosted on Google Drive without a published checksum, so
      ``download`` does not fetch them.
    * ``"cifar100"``: torchvision's CIFAR-100 layout ``root/cifar-100-python/``, split here by
      super-class.  ``download=True`` fetches the official archive (md5-checked), which is why it is
      the route this module downloads.  Both give the same 100 classes and 600 images per class.
    * ``"auto"`` (default): the MetaOptNet pickles when ``root/FC100_train.pickle`` exists, else CIFAR-100.

    ``image_size``, ``normalize``: see :class:`~lightning_meta.data.cifar_fs.CIFAR100Classes`; other
    arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = FC100DataModule("data", download=True, ways=5, shots=5, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 25, 3, 32, 32]

    References:
        Oreshkin, Rodriguez, Lacoste. "TADAM: Task dependent adaptive metric for improved few-shot learning." NeurIPS 2018.
        Lee, Maji, Ravichandran, Soatto. "Meta-Learning with Differentiable Convex Optimization." CVPR 2019.
    """

    title = "FC100"

    def __init__(self, root: str, download: bool = False, layout: Layout = "auto", image_size: int = 32,
                 normalize: bool = False, **kwargs):
        super().__init__(root, download=download, image_size=image_size, normalize=normalize, **kwargs)
        require_choice(DATA_ARGS + "layout", layout, Layout)
        self.layout = layout
        self._pickles: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def class_names(self, split: str) -> list[str]:
        splits = cifar100_splits()
        superclasses = set(splits["fc100"][split])
        return [fine for fine, coarse in splits["superclass"].items() if coarse in superclasses]

    @property
    def uses_metaoptnet(self) -> bool:
        if self.layout == "auto":
            return (Path(self.root).expanduser() / METAOPTNET_FILES["train"]).is_file()
        return self.layout == "metaoptnet"

    def prepare_data(self) -> None:
        if not self.uses_metaoptnet:
            super().prepare_data()

    # ----------------------------------------------------------------- MetaOptNet's pickles
    def metaoptnet(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [N, 32, 32, 3], labels [N])`` of MetaOptNet's pickle of ``split``, read once."""
        if split not in self._pickles:
            path = Path(self.root).expanduser() / METAOPTNET_FILES[split]
            if not path.is_file():
                root = Path(self.root).expanduser()
                where = f"folder {root.resolve()} does not exist" if not root.is_dir() else f"{path.resolve()} is missing"
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: FC100 (MetaOptNet's pickles) not found: {where}. Copy"
                    f" {', '.join(METAOPTNET_FILES.values())} (from github.com/kjunelee/MetaOptNet) into"
                    f" {root.resolve()}, or set data.init_args.layout: cifar100 and data.init_args.download: true to"
                    " build FC100 from the official CIFAR-100 archive")
            data = unpickle(path, self.root, "FC100 (MetaOptNet)")
            x = data.get("data") if isinstance(data, dict) else None
            y = data.get("labels") if isinstance(data, dict) else None
            if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[-1] != 3 or y is None or len(y) != len(x):
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {path.resolve()} is not in MetaOptNet's FC100 format: expected a"
                    " dict with 'data' (uint8 [N, 32, 32, 3]) and 'labels' (one CIFAR-100 fine label per image)")
            self._pickles[split] = (x, np.asarray(y, dtype=np.int64))
        return self._pickles[split]

    def metaoptnet_rows(self, split: str) -> tuple[list[str], list[np.ndarray]]:
        _, labels = self.metaoptnet(split)
        fine = cifar100_splits()["fine_names"]
        order = np.argsort(labels, kind="stable")
        values, starts = np.unique(labels[order], return_index=True)
        ends = list(starts[1:]) + [len(order)]
        names = [fine[v] if 0 <= v < len(fine) else str(v) for v in values.tolist()]
        return names, [order[s:e] for s, e in zip(starts, ends)]

    # ----------------------------------------------------------------- EpisodicDataModule hooks
    def split_counts(self, split: str) -> tuple[int, int]:
        if not self.uses_metaoptnet:
            return super().split_counts(split)
        _, rows = self.metaoptnet_rows(split)
        counts = [len(r) for r in rows]
        return len(counts), min(counts) if counts else 0

    def load_split(self, split: str) -> ClassImages:
        if not self.uses_metaoptnet:
            return super().load_split(split)
        names, rows = self.metaoptnet_rows(split)
        images, _ = self._pickles.pop(split)
        selected = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        if images.dtype != np.uint8:
            raise ConfigurationError(f"{DATA_ARGS}root={self.root!r}: {METAOPTNET_FILES[split]} holds {images.dtype}"
                                     " pixels; expected uint8")
        x = torch.from_numpy(images).index_select(0, torch.from_numpy(selected)).permute(0, 3, 1, 2).contiguous()
        preprocessing = self.preprocessing()
        return ClassImages(preprocessing.resize(x), [len(r) for r in rows], names=names,
                           mean=preprocessing.mean, std=preprocessing.std)
