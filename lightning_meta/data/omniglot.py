"""Omniglot (Lake et al. 2015) as N-way K-shot episodes, from torchvision's extracted folder layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.image_files import (
    ClassFiles,
    cached_decode,
    check_image_size,
    check_rotations,
    check_seed,
    decode_images,
    fingerprint,
    image_names,
    visible_subfolders,
)
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_positive

FOLDER = "omniglot-py"
SETS = ("images_background", "images_evaluation")
SPLIT_KINDS = ("background", "vinyals")
# torchvision.datasets.Omniglot's download location and checksums
URL_PREFIX = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
ZIPS_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}


class OmniglotDataModule(EpisodicDataModule):
    """Omniglot: 1623 handwritten characters of 50 alphabets, 20 drawings each, as episodes.

    Reads torchvision's extracted layout ``root/omniglot-py/images_background/<alphabet>/<character>/*.png``
    and ``root/omniglot-py/images_evaluation/...`` (``root`` is the parent of ``omniglot-py``, as in
    ``torchvision.datasets.Omniglot``; the folders alone are enough, the zip files are not needed).
    ``download=True`` fetches torchvision's two zip files when a folder is missing.

    Images are converted to greyscale, resized to ``image_size`` with Lanczos (antialiased) filtering,
    and inverted so that strokes are bright (1.0) on a dark (0.0) background.  The decoded uint8
    tensors are cached in ``root/omniglot-py/.lightning_meta_<image_size>.pt``; later runs read
    them in about a second (the cache is rebuilt when a file is added, removed or changed).

    Class splits (``split``), always disjoint and deterministic:

    * ``"background"`` (default): meta-test is the 659 characters of the 20 evaluation alphabets;
      the 30 background alphabets are meta-train, except ``val_alphabets`` whole alphabets held out
      for validation.  ``val_alphabets`` is either a list of alphabet names, or a number ``n``: the
      first ``n`` of the sorted background alphabet names permuted by
      ``numpy.random.default_rng(split_seed).permutation``.
    * ``"vinyals"``: the 1200 / 423 character split of Vinyals et al. (2016), irrespective of
      alphabets.  All 1623 characters are listed in the order: ``images_background`` then
      ``images_evaluation``, alphabets sorted by name, characters sorted by name; this list is
      permuted by ``numpy.random.default_rng(split_seed).permutation``.  The first
      ``train_characters - val_characters`` (1100) permuted characters are meta-train, the next
      ``val_characters`` (100) validation, the remaining 423 meta-test (as MAML's code, which
      shuffled a listing with Python's ``random.seed(1)``; the exact characters differ from it).
      :meth:`class_names` lists the characters of each split.

    ``rotations`` (degrees) turn every meta-training character into ``len(rotations)`` classes
    (Santoro et al. 2016; Finn et al. 2017); validation and test characters are never rotated.
    Other arguments as :class:`~lightning_meta.data.EpisodicDataModule`.

    Example::

        dm = OmniglotDataModule("data", download=True, ways=5, shots=1, queries=15, meta_batch_size=32)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))      # TaskBatch, support_x [32, 5, 1, 28, 28]

    References:
        Lake, Salakhutdinov, Tenenbaum. "Human-level concept learning through probabilistic program induction." Science 2015.
        Vinyals et al. "Matching Networks for One Shot Learning." NeurIPS 2016.
    """

    def __init__(
        self,
        root: str,
        download: bool = False,
        split: str = "background",
        val_alphabets: Union[int, list[str]] = 5,
        train_characters: int = 1200,
        val_characters: int = 100,
        split_seed: int = 0,
        image_size: int = 28,
        rotations: Sequence[int] = (0, 90, 180, 270),
        cache: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if split not in SPLIT_KINDS:
            raise ConfigurationError(
                f"{DATA_ARGS}split={split!r} is unknown: choose 'background' (background alphabets for meta-training,"
                " evaluation alphabets for meta-test) or 'vinyals' (1200 / 423 characters)")
        if isinstance(val_alphabets, bool) or not (
                (isinstance(val_alphabets, int) and val_alphabets >= 1)
                or (isinstance(val_alphabets, (list, tuple)) and val_alphabets
                    and all(isinstance(a, str) for a in val_alphabets))):
            raise ConfigurationError(
                f"{DATA_ARGS}val_alphabets={val_alphabets!r} is invalid: give a number of background alphabets >= 1"
                " or a list of background alphabet names")
        require_positive(DATA_ARGS + "train_characters", train_characters)
        require_positive(DATA_ARGS + "val_characters", val_characters)
        if val_characters >= train_characters:
            raise ConfigurationError(
                f"{DATA_ARGS}val_characters={val_characters} must be smaller than {DATA_ARGS}train_characters="
                f"{train_characters}: validation characters are held out of the meta-training characters")
        check_seed("split_seed", split_seed)
        check_image_size(image_size, optional=False)
        self.root = str(root)
        self.download = bool(download)
        self.split = split
        self.val_alphabets = val_alphabets if isinstance(val_alphabets, int) else list(val_alphabets)
        self.train_characters, self.val_characters = train_characters, val_characters
        self.split_seed = split_seed
        self.image_size = image_size
        self.rotations = check_rotations(rotations)
        self.cache = cache
        self._catalog: Optional[tuple[ClassFiles, list[str]]] = None
        self._images: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------- files
    @property
    def folder(self) -> Path:
        """``root/omniglot-py`` (or ``root`` itself when it already is that folder)."""
        root = Path(self.root).expanduser()
        if not (root / FOLDER).is_dir() and all((root / s).is_dir() for s in SETS):
            return root
        return root / FOLDER

    def prepare_data(self) -> None:
        if self.download and not self.predicting:  # predict decodes support_dir / query_dir only
            self._download_missing()

    def _download_missing(self) -> None:
        folder = self.folder
        for name in SETS:
            if (folder / name).is_dir():
                continue
            from torchvision.datasets.utils import download_and_extract_archive

            url = f"{URL_PREFIX}/{name}.zip"
            try:
                download_and_extract_archive(url, str(folder), filename=f"{name}.zip", md5=ZIPS_MD5[name])
            except Exception as error:  # no network, proxy, checksum, disk full ...
                raise ConfigurationError(
                    f"{DATA_ARGS}download=true: could not download Omniglot's {name}.zip from {url}"
                    f" ({type(error).__name__}: {error}). Without network access, fetch {name}.zip elsewhere, extract"
                    f" it into {folder.resolve()}/ (giving {folder.resolve() / name}/<alphabet>/<character>/*.png) and"
                    f" set --data.init_args.root to the folder holding {FOLDER}") from error
            if not (folder / name).is_dir():
                raise ConfigurationError(f"{DATA_ARGS}download=true: {url} did not extract to {folder / name}")

    def catalog(self) -> tuple[ClassFiles, list[str]]:
        """All characters (``"<alphabet>/<character>"``, background first) and the set of each."""
        if self._catalog is not None:
            return self._catalog
        folder = self.folder
        missing = [name for name in SETS if not (folder / name).is_dir()]
        if missing and self.download:
            self._download_missing()
            missing = [name for name in SETS if not (folder / name).is_dir()]
        if missing:
            raise ConfigurationError(
                f"{DATA_ARGS}root={self.root!r}: Omniglot not found:"
                f" {', '.join(str((folder / m).resolve()) for m in missing)}"
                f" missing. Set --data.init_args.root to the folder that holds {FOLDER}/ (torchvision's layout:"
                f" root/{FOLDER}/images_background/<alphabet>/<character>/*.png), or set data.init_args.download:"
                " true to fetch it")
        listing, sets = ClassFiles(), []
        for name in SETS:
            alphabets = visible_subfolders(folder / name)
            if not alphabets:
                raise ConfigurationError(
                    f"{DATA_ARGS}root={self.root!r}: {(folder / name).resolve()} holds no alphabet folders: extract"
                    f" {name}.zip there again, or delete the folder and set data.init_args.download: true")
            for alphabet in alphabets:
                for character in visible_subfolders(folder / name / alphabet):
                    path = folder / name / alphabet / character
                    files = image_names(path)
                    if not files:
                        raise ConfigurationError(
                            f"{DATA_ARGS}root={self.root!r}: character folder {path.resolve()} holds no images: extract"
                            f" {name}.zip again or remove the folder")
                    listing.names.append(f"{alphabet}/{character}")
                    listing.files.append([path / f for f in files])
                    sets.append(name)
        self._catalog = (listing, sets)
        return self._catalog

    # ----------------------------------------------------------------- splits
    def assignment(self) -> dict[str, list[int]]:
        """Indices into :meth:`catalog` of the characters of "train", "val" and "test" (see the class doc)."""
        listing, sets = self.catalog()
        if self.split == "vinyals":
            total = len(listing)
            if self.train_characters >= total:
                raise ConfigurationError(
                    f"{DATA_ARGS}train_characters={self.train_characters} leaves no meta-test characters: Omniglot"
                    f" under {self.folder.resolve()} has {total} characters; set train_characters below {total}")
            order = np.random.default_rng(self.split_seed).permutation(total).tolist()
            n_train = self.train_characters - self.val_characters
            return {"train": order[:n_train], "val": order[n_train:self.train_characters],
                    "test": order[self.train_characters:]}
        alphabet = [name.split("/")[0] for name in listing.names]
        background = sorted({a for a, s in zip(alphabet, sets) if s == SETS[0]})
        if isinstance(self.val_alphabets, int):
            if self.val_alphabets >= len(background):
                raise ConfigurationError(
                    f"{DATA_ARGS}val_alphabets={self.val_alphabets} leaves no meta-training alphabets: there are"
                    f" {len(background)} background alphabets; hold out fewer")
            order = np.random.default_rng(self.split_seed).permutation(len(background))
            held_out = {background[i] for i in order[:self.val_alphabets]}
        else:
            unknown = sorted(set(self.val_alphabets) - set(background))
            if unknown:
                raise ConfigurationError(
                    f"{DATA_ARGS}val_alphabets names {unknown}, which are not background alphabets; choose among:"
                    f" {', '.join(background)}")
            held_out = set(self.val_alphabets)
            if held_out == set(background):
                raise ConfigurationError(f"{DATA_ARGS}val_alphabets holds out every background alphabet: keep some for"
                                         " meta-training")
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for i, (a, s) in enumerate(zip(alphabet, sets)):
            split = "test" if s == SETS[1] else "val" if a in held_out else "train"
            parts[split].append(i)
        return parts

    def class_names(self, split: str) -> list[str]:
        """``"<alphabet>/<character>"`` of each (unrotated) class of ``split``."""
        listing, _ = self.catalog()
        return [listing.names[i] for i in self.assignment()[split]]

    # ----------------------------------------------------------------- loading
    def preprocessing(self) -> ImagePreprocessing:
        """Greyscale, Lanczos-resized to ``image_size``, inverted (bright strokes), scaled to [0, 1]."""
        return ImagePreprocessing(channels=1, image_size=self.image_size, invert=True)

    def decoded(self) -> torch.Tensor:
        """All characters' images, uint8 ``[total, 1, image_size, image_size]``, in :meth:`catalog` order."""
        if self._images is None:
            listing, _ = self.catalog()
            folder = self.folder
            paths = listing.flat()
            cache_path = folder / f".lightning_meta_{self.image_size}.pt" if self.cache else None
            key = fingerprint(paths, folder, f"omniglot;size={self.image_size};L;lanczos;inverted")
            self._images = cached_decode(cache_path, key, listing,
                                         lambda: self.preprocessing().decode(paths, decode_images))
        return self._images

    def split_counts(self, split: str) -> tuple[int, int]:
        listing, _ = self.catalog()
        counts = [len(listing.files[i]) for i in self.assignment()[split]]
        rotations = self.rotations if split == "train" else (0,)
        return len(counts) * len(rotations), min(counts) if counts else 0

    def load_split(self, split: str) -> ClassImages:
        listing, _ = self.catalog()
        indices = self.assignment()[split]
        counts = [len(listing.files[i]) for i in indices]
        rotations = self.rotations if split == "train" else (0,)
        images = self.decoded()
        offsets = np.concatenate([[0], np.cumsum(listing.counts)])
        rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in indices]) if indices \
            else torch.zeros(0, dtype=torch.long)
        return ClassImages(images[rows], counts, names=[listing.names[i] for i in indices], rotations=rotations)
