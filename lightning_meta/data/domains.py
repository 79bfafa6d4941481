"""Two image domains with shared classes, served as plain ``(x, y, domain)`` batches.

Unsupervised domain adaptation (e.g. :class:`~lightning_meta.algorithms.domain_adversarial.DomainAdversarial`)
trains on labelled images of a *source* domain and unlabelled images of a *target* domain, and is
judged by its accuracy on held-out target images.  :class:`DomainPairDataModule` pairs any two image
sources (two ``.npz`` files, two ImageFolder trees, one of each) or one source and a built-in shift
of it, splits every class's samples into train / validation / test in both domains, and serves

* training: one batch per step of ``batch_size`` source images followed by ``batch_size`` target
  images; ``x`` float ``[2B, C, H, W]`` in ``[0, 1]``, ``y`` long ``[2B]`` (source labels, then
  ``-1`` for every target image: target labels never leave the data module in training), ``domain``
  long ``[2B]`` (0 source, 1 target).  Batch ``i`` of epoch ``e`` on rank ``r`` is drawn from a
  generator seeded by ``(seed, e, i, r)``: reproducible, and different on every rank.
* validation / test: the held-out samples of the source domain, then of the target domain, in
  batches of ``eval_batch_size`` with their true labels (for evaluation only).

Everything is decoded once into uint8 tensors at ``setup``.  Data modules of the CLI derive from
:class:`~lightning_meta.data.EpisodicDataModule`, so this one does too, but it draws no episodes:
the episodic arguments are not exposed and its loaders are its own.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_meta.data.bundled import resolve
from lightning_meta.data.class_images import scale_pixels
from lightning_meta.data.datamodule import FIELD, EpisodicDataModule
from lightning_meta.data.episodes import EpisodeLoader, episode_generator
from lightning_meta.data.image_files import check_channels, check_image_size, check_seed, decode_images, list_class_folders
from lightning_meta.data.npz import array_header
from lightning_meta.errors import ConfigurationError, optional_positive, require_positive

#: built-in target domains made from the source images (see :func:`apply_shift`)
SHIFTS = ("noise", "invert", "dilate", "erode", "blend", "rotate90")
SPLITS = ("train", "val", "test")


def apply_shift(images: Tensor, shift: str, generator: torch.Generator, strength: float = 0.5) -> Tensor:
    """A shifted copy of uint8 images ``[N, C, H, W]`` (same shape and dtype), the built-in target domains.

    * ``noise``: Gaussian pixel noise of standard deviation ``strength`` (in [0, 1] pixel units),
      clipped to [0, 1]; a fresh draw for every image.
    * ``invert``: ``255 - x`` (dark glyphs on a bright background).
    * ``dilate`` / ``erode``: 3x3 grey-level dilation / erosion (thicker / thinner strokes).
    * ``blend``: ``|x - background|`` with a smooth random background per image (as MNIST-M
      blends digits with photo patches).
    * ``rotate90``: every image turned by 90 degrees.
    """
    x = images.float() / 255
    if shift == "noise":
        x = x + strength * torch.randn(x.shape, generator=generator)
    elif shift == "invert":
        x = 1 - x
    elif shift in ("dilate", "erode"):
        sign = 1 if shift == "dilate" else -1
        x = sign * F.max_pool2d(sign * x, 3, stride=1, padding=1)
    elif shift == "blend":
        coarse = torch.rand(x.shape[0], x.shape[1], 7, 7, generator=generator)
        x = (x - F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)).abs()
    elif shift == "rotate90":
        x = torch.rot90(x, 1, dims=(-2, -1))
    else:
        raise ConfigurationError(f"{FIELD}shift={shift!r} is unknown: choose one of {', '.join(SHIFTS)}")
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


class Domain:
    """The images of one domain: uint8 ``[N, C, H, W]``, labels ``[N]`` and class names."""

    def __init__(self, images: Tensor, labels: Tensor, names: list[str]):
        self.images, self.labels, self.names = images, labels, names

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def keep_classes(self, classes: int) -> "Domain":
        keep = self.labels < classes
        return Domain(self.images[keep], self.labels[keep], self.names[:classes])


def load_domain(path: str, field: str, key: str = "X", image_size: Optional[int] = None,
                channels: Optional[int] = None) -> Domain:
    """A domain from an ``.npz`` / ``.npy`` array ``[classes, samples, (C,) H, W]`` (uint8) or an
    ImageFolder tree ``path/<class>/<image>``, or a bundled name (``"hanzi"``); errors name
    ``data.init_args.<field>``."""
    file = resolve(path)
    if file.is_dir():
        listing = list_class_folders(file, field, path)
        images = decode_images(listing.flat(), channels or 1, image_size)
        labels = torch.cat([torch.full((len(f),), i, dtype=torch.long) for i, f in enumerate(listing.files)])
        return Domain(images, labels, list(listing.names))
    if not file.is_file():
        raise ConfigurationError(
            f"{FIELD}{field}={path!r}: {file.resolve()} does not exist: give an .npz holding '{key}' (uint8 images"
            " [classes, samples, H, W]) or a folder of class sub-folders of images")
    try:
        shape, dtype = array_header(file, key)
    except ConfigurationError as error:
        raise ConfigurationError(f"{FIELD}{field}={path!r}: {error}") from None
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ConfigurationError(f"{FIELD}{field}={path!r}: {file.resolve()} is not a readable .npz / .npy file"
                                 f" ({type(error).__name__}: {error})") from error
    if len(shape) not in (4, 5) or (len(shape) == 5 and shape[2] not in (1, 3)) or dtype != np.uint8:
        raise ConfigurationError(
            f"{FIELD}{field}={path!r}: array '{key}' is {dtype} {list(shape)}; expected uint8 [classes, samples, H, W]"
            " or [classes, samples, C, H, W] with C = 1 or 3")
    array = np.load(file) if file.suffix == ".npy" else np.load(file)[key]
    x = torch.from_numpy(np.ascontiguousarray(array))
    if x.dim() == 4:
        x = x.unsqueeze(2)
    classes, samples = x.shape[:2]
    if image_size is not None and x.shape[-1] != image_size:
        from lightning_meta.data.image_files import resize_uint8

        x = resize_uint8(x.flatten(0, 1), image_size).view(classes, samples, x.shape[2], image_size, image_size)
    labels = torch.arange(classes).repeat_interleave(samples)
    return Domain(x.reshape(classes * samples, *x.shape[2:]).contiguous(), labels, [str(c) for c in range(classes)])


def split_samples(labels: Tensor, num_classes: int, val_samples: int, test_samples: int, seed: int
                  ) -> dict[str, Tensor]:
    """Per class, a seeded permutation of its samples: ``val_samples`` for validation, then
    ``test_samples`` for test, the rest for training.  Indices into ``labels``, per split."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for c in range(num_classes):
        members = np.flatnonzero(labels.numpy() == c)
        members = members[rng.permutation(len(members))]
        parts["val"].append(members[:val_samples])
        parts["test"].append(members[val_samples:val_samples + test_samples])
        parts["train"].append(members[val_samples + test_samples:])
    return {split: torch.from_numpy(np.sort(np.concatenate(p))).long() for split, p in parts.items()}


class PairedBatches(IterableDataset):
    """``steps`` training batches ``(x, y, domain)`` of one epoch (see the module docstring).

    ``epoch`` and ``start`` (batches already trained in a resumed epoch) are set by
    :class:`~lightning_meta.data.episodes.EpisodeLoader` before each iteration, so a run resumed
    mid-epoch continues with the batch it would have trained next.
    """

    def __init__(self, source: tuple[Tensor, Tensor], target: Tensor, batch_size: int, steps: int, seed: int,
                 rank: int = 0, epoch: int = 0):
        self.source, self.target = source, target
        self.batch_size, self.steps, self.seed, self.rank = batch_size, steps, seed, rank
        self.epoch: Optional[int] = epoch
        self.start = 0

    def __len__(self) -> int:
        return self.steps

    def batch(self, epoch: int, index: int) -> tuple[Tensor, Tensor, Tensor]:
        generator = episode_generator(self.seed, "train", index * 1024 + self.rank, epoch)
        (source_x, source_y), target_x = self.source, self.target
        i = torch.randint(len(source_x), (self.batch_size,), generator=generator)
        j = torch.randint(len(target_x), (self.batch_size,), generator=generator)
        x = scale_pixels(torch.cat([source_x[i], target_x[j]]))
        y = torch.cat([source_y[i], torch.full((self.batch_size,), -1, dtype=torch.long)])
        domain = torch.cat([torch.zeros(self.batch_size, dtype=torch.long), torch.ones(self.batch_size, dtype=torch.long)])
        return x, y, domain

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for index in range(self.start, self.steps):
            yield self.batch(int(self.epoch or 0), index)


class DomainPairDataModule(EpisodicDataModule):
    """A labelled source domain and an unlabelled target domain with the same classes.

    The target is ``target`` (another ``.npz`` or image folder, class ``i`` of both being the same
    class: folders are matched by class-folder name, arrays by index) or, when ``target`` is not
    given, the source images transformed by the built-in ``shift`` (see :func:`apply_shift`; noise
    drawn from ``seed``).  In each domain, every class keeps ``val_samples`` samples for
    validation and ``test_samples`` for test (chosen by a permutation seeded by ``split_seed``,
    the same indices in both domains when the target is a shifted copy, so test fonts of the
    built-in hanzi pair are unseen in either domain); the rest trains.  Target labels are used for
    validation and test metrics only.

    Args:
        source: ``.npz`` / ``.npy`` (uint8 ``[classes, samples, (C,) H, W]``, array ``key``), an
            ImageFolder tree of the labelled domain, or a bundled name (``"hanzi"``, see
            :mod:`lightning_meta.data.bundled`).
        target: the same for the unlabelled domain; ``None`` for ``shift`` of ``source``.
        shift: the built-in target domain when ``target`` is ``None``: one of :data:`SHIFTS`.
        shift_strength: the noise standard deviation of ``shift="noise"`` (pixels in [0, 1]).
        key: the array name inside ``.npz`` files.
        classes: use only the first ``classes`` classes (``None``: all).
        val_samples, test_samples: held-out samples per class and domain.
        batch_size: source images per training step (and as many target images).
        steps_per_epoch: training steps per epoch.
        eval_batch_size: images per validation / test batch.
        image_size, channels: decoding of image folders (resize to ``image_size``; 1 or 3 channels;
            default greyscale); ``image_size`` also resizes arrays.
        seed: seed of the training batches and of the shift.
        split_seed: seed of the per-class train / val / test split of samples.

    Example::

        dm = DomainPairDataModule("hanzi", shift="noise", classes=50)
        dm.setup("fit")
        x, y, domain = next(iter(dm.train_dataloader()))    # [128, 1, 28, 28], [128], [128]
    """

    def __init__(
        self,
        source: str,
        target: Optional[str] = None,
        shift: str = "noise",
        shift_strength: float = 0.5,
        key: str = "X",
        classes: Optional[int] = None,
        val_samples: int = 2,
        test_samples: int = 4,
        batch_size: int = 64,
        steps_per_epoch: int = 200,
        eval_batch_size: int = 512,
        image_size: Optional[int] = None,
        channels: Optional[int] = None,
        seed: int = 0,
        split_seed: int = 0,
    ):
        super().__init__()
        if shift not in SHIFTS:
            raise ConfigurationError(f"{FIELD}shift={shift!r} is unknown: choose one of {', '.join(SHIFTS)}")
        require_positive(FIELD + "shift_strength", shift_strength, integer=False)
        optional_positive(FIELD + "classes", classes)
        for name, value in (("val_samples", val_samples), ("test_samples", test_samples), ("batch_size", batch_size),
                            ("steps_per_epoch", steps_per_epoch), ("eval_batch_size", eval_batch_size)):
            require_positive(FIELD + name, value)
        check_image_size(image_size)
        check_channels(channels)
        check_seed("seed", seed)
        check_seed("split_seed", split_seed)
        self.source_path, self.target_path = str(source), None if target is None else str(target)
        self.shift, self.shift_strength, self.key = shift, float(shift_strength), str(key)
        self.classes, self.val_samples, self.test_samples = classes, val_samples, test_samples
        self.batch_size, self.steps_per_epoch_, self.eval_batch_size = batch_size, steps_per_epoch, eval_batch_size
        self.image_size, self.channels = image_size, channels
        self.seed, self.split_seed = seed, split_seed
        self.domains: Optional[dict[str, Domain]] = None
        self.splits: dict[str, dict[str, Tensor]] = {}

    # ----------------------------------------------------------------- loading and checks
    def load_domains(self) -> dict[str, Domain]:
        """Decode (once) and check both domains: ``{"source": ..., "target": ...}``."""
        if self.domains is not None:
            return self.domains
        source = load_domain(self.source_path, "source", self.key, self.image_size, self.channels)
        if self.target_path is None:
            generator = torch.Generator().manual_seed(self.seed)
            target = Domain(apply_shift(source.images, self.shift, generator, self.shift_strength), source.labels,
                            source.names)
        else:
            target = load_domain(self.target_path, "target", self.key, self.image_size, self.channels)
            target = self._match_classes(source, target)
        if self.classes is not None:
            if self.classes > source.num_classes:
                raise ConfigurationError(
                    f"{FIELD}classes={self.classes} exceeds the {source.num_classes} classes of the domains: set"
                    f" classes <= {source.num_classes} or null (all)")
            source, target = source.keep_classes(self.classes), target.keep_classes(self.classes)
        if source.image_shape != target.image_shape:
            raise ConfigurationError(
                f"{FIELD}source and {FIELD}target images differ in shape: {list(source.image_shape)} vs"
                f" {list(target.image_shape)} ([C, H, W]): set {FIELD}image_size (and channels) so both decode alike")
        need = self.val_samples + self.test_samples + 1
        for name, domain in (("source", source), ("target", target)):
            fewest = min(domain.counts())
            if fewest < need:
                raise ConfigurationError(
                    f"{FIELD}val_samples + {FIELD}test_samples = {self.val_samples} + {self.test_samples} leaves no"
                    f" training sample in a class of {name} with {fewest} samples: lower them so that they sum to at"
                    f" most {fewest - 1}")
        self.domains = {"source": source, "target": target}
        return self.domains

    def _match_classes(self, source: Domain, target: Domain) -> Domain:
        if source.num_classes != target.num_classes:
            raise ConfigurationError(
                f"{FIELD}source has {source.num_classes} classes but {FIELD}target has {target.num_classes}: the two"
                " domains must share their classes (same count; class folders with the same names)")
        both_folders = Path(self.source_path).expanduser().is_dir() and Path(self.target_path).expanduser().is_dir()
        if not both_folders:
            return target
        if set(source.names) != set(target.names):
            missing = sorted(set(source.names) ^ set(target.names))[:5]
            raise ConfigurationError(
                f"{FIELD}source and {FIELD}target class folders differ ({missing} ...): give both domains the same"
                " class-folder names")
        order = torch.tensor([target.names.index(n) for n in source.names])
        remap = torch.empty_like(order)
        remap[order] = torch.arange(len(order))
        return Domain(target.images, remap[target.labels], list(source.names))

    @property
    def num_classes(self) -> int:
        return self.load_domains()["source"].num_classes

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.load_domains()["source"].image_shape

    def split(self, domain: str) -> dict[str, Tensor]:
        """Sample indices of "train", "val" and "test" in ``domain`` ("source" or "target")."""
        if domain not in self.splits:
            d = self.load_domains()[domain]
            self.splits[domain] = split_samples(d.labels, d.num_classes, self.val_samples, self.test_samples,
                                                self.split_seed)
        return self.splits[domain]

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "predict":
            raise ConfigurationError(f"{type(self).__name__} serves training and evaluation only; predict is not"
                                     " supported for domain adaptation")
        self.load_domains()

    @property
    def steps_per_epoch(self) -> int:  # type: ignore[override]
        return self.steps_per_epoch_

    def train_dataloader(self) -> DataLoader:
        domains = self.load_domains()
        source, target = domains["source"], domains["target"]
        source_train, target_train = self.split("source")["train"], self.split("target")["train"]
        rank, _ = self.world
        dataset = PairedBatches((source.images[source_train], source.labels[source_train]),
                                target.images[target_train], self.batch_size, self.steps_per_epoch_, self.seed, rank)
        clock = self._training_clock if self.trainer is not None else None
        return EpisodeLoader(dataset, pin_memory=self._pin_memory(), clock=clock)  # type: ignore[arg-type]

    def evaluation_set(self, split: str) -> TensorDataset:
        """The held-out ``split`` ("val" or "test") samples: source, then target, as ``(x, y, domain)``."""
        xs, ys, ds = [], [], []
        for index, name in enumerate(("source", "target")):
            domain, picks = self.load_domains()[name], self.split(name)[split]
            xs.append(scale_pixels(domain.images[picks]))
            ys.append(domain.labels[picks])
            ds.append(torch.full((len(picks),), index, dtype=torch.long))
        return TensorDataset(torch.cat(xs), torch.cat(ys), torch.cat(ds))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.evaluation_set("val"), batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.evaluation_set("test"), batch_size=self.eval_batch_size, shuffle=False)


def bernoulli_ci95(correct: int, total: int) -> float:
    """Half-width of the normal 95% interval of an accuracy over ``total`` independent samples."""
    if total < 1:
        return math.nan
    p = correct / total
    return 1.96 * math.sqrt(p * (1 - p) / total)
