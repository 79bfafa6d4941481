"""The Describable Textures Dataset (DTD; Cimpoi et al. 2014), a Meta-Dataset source, as episodes."""

from __future__ import annotations

from lightning_meta.data.image_files import ClassFiles, list_class_folders
from lightning_meta.data.meta_dataset_sources import Archive, ClassKey, MetaDatasetSource

#: the official archive; the md5 is torchvision's (torchvision/datasets/dtd.py)
ARCHIVE = Archive("dtd-r1.0.1.tar.gz", ("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
                  md5="fff73e5086ae6bdbea199a49dfb8a4c1", what="DTD r1.0.1 (Oxford VGG, about 600 MB)")


class DTDDataModule(MetaDatasetSource):
    """DTD: 5,640 texture images of 47 classes (120 each, 300x300 to 640x640 pixels), split 33 / 7 / 7
    classes for meta-train / validation / test exactly as Meta-Dataset splits them.

    Reads the official archive's layout ``root/dtd/images/<class>/*.jpg`` (``root`` is the folder
    that holds ``dtd/``, as for Omniglot; ``root`` may also be ``dtd/`` itself).  ``download=True``
    fetches and unpacks ``dtd-r1.0.1.tar.gz`` (about 600 MB, md5 checked) when it is missing.  The
    class split is Meta-Dataset's ``dtd_splits.json`` (shipped as
    ``lightning_meta/data/splits/meta_dataset_dtd.json``); ``split_file`` replaces it.  Images are
    converted to RGB and resized to ``image_size`` x ``image_size`` (84, as Meta-Dataset), decoded
    once and cached in ``root/dtd/.lightning_meta_dtd_<split>_<image_size>.pt``.  Other arguments as
    :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = DTDDataModule("data", download=True, ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]

    References:
        Cimpoi et al. "Describing Textures in the Wild." CVPR 2014.
        Triantafillou et al. "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples." ICLR 2020.
    """

    source_id = "dtd"
    title = "DTD"
    archives = (ARCHIVE,)
    folders = ("dtd", "")
    marker = "images"
    layout_hint = "giving dtd/images/<class>/*.jpg"

    def read_catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        listing = list_class_folders(self.folder / "images", "root", self.root)
        return listing, list(listing.names)
