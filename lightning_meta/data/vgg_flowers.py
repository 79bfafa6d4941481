"""Oxford 102 Flowers (Nilsback & Zisserman 2008; "VGG Flower" in Meta-Dataset) as episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_meta.data.image_files import ClassFiles
from lightning_meta.data.meta_dataset_sources import Archive, ClassKey, MetaDatasetSource
from lightning_meta.errors import DATA_ARGS, ConfigurationError

#: the official files at the addresses torchvision.datasets.Flowers102 uses, with its md5 checksums
URL_PREFIX = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
ARCHIVES = (
    Archive("102flowers.tgz", (URL_PREFIX + "102flowers.tgz",), md5="52808999861908f626f3c1f4e79d11fa",
            what="Oxford 102 Flowers images (Oxford VGG, about 330 MB)"),
    Archive("imagelabels.mat", (URL_PREFIX + "imagelabels.mat",), md5="e0620be6f572b9609742df49c70aed4d",
            what="Oxford 102 Flowers labels (Oxford VGG)", extract=False),
)


def read_labels(path: Path, root: str) -> np.ndarray:
    """The label (1 .. 102) of each image of ``imagelabels.mat`` (MATLAB file: ``labels``, ``[1, 8189]``)."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise ConfigurationError(
            f"{DATA_ARGS}root={root!r}: reading {path.name} (a MATLAB file) needs scipy, which is not installed:"
            " pip install scipy") from error
    try:
        labels = np.asarray(loadmat(str(path))["labels"]).reshape(-1)
    except Exception as error:  # not a .mat file, no "labels" entry
        raise ConfigurationError(
            f"{DATA_ARGS}root={root!r}: {path.resolve()} is not the Flowers imagelabels.mat ({error}): download it"
            " again (delete it and set data.init_args.download: true)") from error
    return labels.astype(np.int64)


class VGGFlowersDataModule(MetaDatasetSource):
    """Oxford 102 Flowers: 8,189 photographs of 102 flower species (40 to 258 each), split 71 / 15 / 16
    species for meta-train / validation / test exactly as Meta-Dataset splits them.

    Reads the official files: ``root/jpg/image_00001.jpg`` ... (from ``102flowers.tgz``) and
    ``root/imagelabels.mat`` (the label 1 .. 102 of each image, read with scipy; a clear error asks
    for scipy when it is missing); ``root/flowers-102/`` (torchvision's layout) works too.
    ``download=True`` fetches both (md5 checked, torchvision's checksums).  Classes are named by
    their label, ``"001"`` .. ``"102"``.  The class split is Meta-Dataset's ``vgg_flower_splits.json``
    (labels; ``lightning_meta/data/splits/meta_dataset_vgg_flower.json``); ``split_file`` replaces
    it (integer labels).  Images are converted to RGB and resized to ``image_size`` x ``image_size``
    (84, as Meta-Dataset), decoded once and cached in ``root/.lightning_meta_vgg_flower_<split>_
    <image_size>.pt``.  Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = VGGFlowersDataModule("data/flowers", download=True, ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]

    References:
        Nilsback, Zisserman. "Automated Flower Classification over a Large Number of Classes." ICVGIP 2008.
        Triantafillou et al. "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples." ICLR 2020.
    """

    source_id = "vgg_flower"
    title = "Oxford 102 Flowers"
    archives = ARCHIVES
    folders = ("", "flowers-102")
    marker = "imagelabels.mat"
    layout_hint = "giving jpg/image_00001.jpg ... and imagelabels.mat"

    def required_files(self) -> list[Path]:
        return [self.folder / "imagelabels.mat", self.folder / "jpg"]

    def read_catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        folder = self.folder
        labels = read_labels(folder / "imagelabels.mat", self.root)
        listing = ClassFiles()
        keys: list[ClassKey] = []
        for label in sorted(set(labels.tolist())):
            rows = np.flatnonzero(labels == label)
            files = [folder / "jpg" / f"image_{i + 1:05d}.jpg" for i in rows]
            absent = [f for f in files if not f.is_file()]
            if absent:
                raise self.missing(absent[0])
            listing.names.append(f"{label:03d}")
            listing.files.append(files)
            keys.append(int(label))
        return listing, keys
