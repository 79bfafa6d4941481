"""FGVC-Aircraft 2013b (Maji et al. 2013), a Meta-Dataset source, as episodes of its 100 model variants."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch

from lightning_meta.data.image_files import ClassFiles, decode_workers, opened
from lightning_meta.data.meta_dataset_sources import Archive, ClassKey, MetaDatasetSource
from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_choice

#: the official archive (the address torchvision.datasets.FGVCAircraft uses); no checksum is published
ARCHIVE = Archive("fgvc-aircraft-2013b.tar.gz",
                  ("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",),
                  md5=None, what="FGVC-Aircraft 2013b (Oxford VGG, about 2.6 GB)")
#: the image lists read (as Meta-Dataset's converter: all 10,000 images, the file-level splits do not matter)
LISTS = ("images_variant_trainval.txt", "images_variant_test.txt")
BANNER_PX = 20
Crop = Literal["box", "banner", "none"]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """``(image id, rest of the line)`` of each non-empty line of an FGVC-Aircraft list file."""
    pairs = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                image, _, rest = line.partition(" ")
                pairs.append((image, rest))
    return pairs


def decode_cropped(paths: Sequence[Path], boxes: Sequence[tuple[int, int, int, int]], image_size: int) -> torch.Tensor:
    """uint8 ``[N, 3, image_size, image_size]``: each image converted to RGB, cropped to its box
    ``(left, upper, right, lower)`` (PIL's ``crop``), resized with Lanczos filtering."""
    from PIL import Image

    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        with opened(paths[i]) as image:
            image = image.convert("RGB").crop(boxes[i]).resize((image_size, image_size), Image.Resampling.LANCZOS)
            out[i] = np.asarray(image, dtype=np.uint8)

    with ThreadPoolExecutor(decode_workers()) as pool:
        list(pool.map(decode, range(len(paths)), chunksize=64))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class AircraftDataModule(MetaDatasetSource):
    """FGVC-Aircraft: 10,000 photographs of 100 aircraft model variants (100 each), split 70 / 15 / 15
    variants for meta-train / validation / test exactly as Meta-Dataset splits them.

    Reads the official archive's layout ``root/fgvc-aircraft-2013b/data/``: ``images/<id>.jpg``,
    ``images_variant_trainval.txt`` and ``images_variant_test.txt`` (``<id> <variant>`` per line:
    both are read, as Meta-Dataset does; the file-level train/val/test lists do not matter for a
    class split), ``variants.txt`` (the 100 classes) and ``images_box.txt`` (``<id> xmin ymin xmax
    ymax``).  ``root`` is the folder holding ``fgvc-aircraft-2013b/`` (or that folder, or its
    ``data/``).  ``download=True`` fetches and unpacks ``fgvc-aircraft-2013b.tar.gz`` (about 2.6 GB;
    no checksum is published, so none is checked).

    ``crop``: ``"box"`` (default) crops each image to its bounding box from ``images_box.txt``, as
    Meta-Dataset's converter does (``dataset_to_records.py``, ``AircraftConverter``: the box picks
    the labelled aircraft and also removes the 20-pixel copyright banner at the bottom);
    ``"banner"`` only removes the bottom 20 pixels; ``"none"`` keeps whole images.  Images are then
    resized to ``image_size`` x ``image_size`` (84, as Meta-Dataset), decoded once and cached in
    ``<data folder>/.lightning_meta_aircraft_<split>_<image_size>[_crop].pt``.  The class split is
    Meta-Dataset's ``aircraft_splits.json`` (``lightning_meta/data/splits/meta_dataset_aircraft.json``);
    ``split_file`` replaces it.  Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = AircraftDataModule("data", download=True, ways=5, shots=1, queries=15, meta_batch_size=4)
        dm.setup("fit")
        next(iter(dm.train_dataloader())).support_x.shape   # [4, 5, 3, 84, 84]

    References:
        Maji et al. "Fine-Grained Visual Classification of Aircraft." arXiv:1306.5151, 2013.
        Triantafillou et al. "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples." ICLR 2020.
    """

    source_id = "aircraft"
    title = "FGVC-Aircraft"
    archives = (ARCHIVE,)
    folders = ("fgvc-aircraft-2013b/data", "data", "")
    marker = "images_variant_trainval.txt"
    layout_hint = "giving fgvc-aircraft-2013b/data/images/*.jpg and the list files beside images/"

    def __init__(self, root: str, crop: Crop = "box", **kwargs: Any):
        require_choice(DATA_ARGS + "crop", crop, Crop)
        super().__init__(root=root, **kwargs)
        self.crop = crop
        self._boxes: dict[str, tuple[int, int, int, int]] = {}

    def required_files(self) -> list[Path]:
        names = [*LISTS, "variants.txt", "images"] + (["images_box.txt"] if self.crop == "box" else [])
        return [self.folder / name for name in names]

    def read_catalog(self) -> tuple[ClassFiles, list[ClassKey]]:
        folder = self.folder
        with open(folder / "variants.txt") as f:
            variants = sorted({line.strip() for line in f if line.strip()})
        members: dict[str, list[str]] = {v: [] for v in variants}
        for name in LISTS:
            for image, variant in read_pairs(folder / name):
                if variant not in members:
                    raise ConfigurationError(
                        f"{DATA_ARGS}root={self.root!r}: {(folder / name).resolve()} labels image {image} with"
                        f" {variant!r}, which is not in variants.txt: the archive is damaged; extract it again")
                members[variant].append(image)
        if self.crop == "box":
            self._boxes = {}
            for image, rest in read_pairs(folder / "images_box.txt"):
                try:
                    left, upper, right, lower = (int(v) for v in rest.split())
                except ValueError as error:
                    raise ConfigurationError(
                        f"{DATA_ARGS}root={self.root!r}: {(folder / 'images_box.txt').resolve()} has a bad line for"
                        f" image {image} ({rest!r}): expected '<id> xmin ymin xmax ymax'") from error
                self._boxes[image] = (left, upper, right, lower)
        listing = ClassFiles()
        for variant in variants:
            files = [folder / "images" / f"{image}.jpg" for image in sorted(members[variant])]
            absent = [f for f in files if not f.is_file()]
            if absent:
                raise self.missing(absent[0])
            listing.names.append(variant)
            listing.files.append(files)
        return listing, list(variants)

    def settings(self) -> str:
        return f"{super().settings()};crop={self.crop}"

    def cache_path(self, split: str) -> Optional[Path]:
        path = super().cache_path(split)
        return path if path is None or self.crop == "box" else path.with_name(f"{path.stem}_{self.crop}.pt")

    def decode(self, files: ClassFiles) -> torch.Tensor:
        paths = files.flat()
        if self.crop == "none":
            return super().decode(files)
        if self.crop == "box":
            missing = [p.stem for p in paths if p.stem not in self._boxes]
            if missing:
                raise ConfigurationError(
                    f"{DATA_ARGS}crop='box': {(self.folder / 'images_box.txt').resolve()} has no box for image"
                    f" {missing[0]}: extract the archive again, or set data.init_args.crop: banner")
            boxes = [self._boxes[p.stem] for p in paths]
        else:
            boxes = []
            for path in paths:
                with opened(path) as image:
                    width, height = image.size
                boxes.append((0, 0, width, height - BANNER_PX))
        return decode_cropped(paths, boxes, self.image_size)
