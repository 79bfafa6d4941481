"""Two image domains with shared classes: training batches ``(x, y, domain)``, held-out pairs for evaluation.

Unsupervised domain adaptation (e.g. :class:`~lightning_meta.algorithms.domain_adversarial.DomainAdversarial`)
trains on labelled images of a *source* domain and unlabelled images of a *target* domain, and is
judged by its accuracy on held-out target images.  :class:`DomainPairDataModule` pairs any two image
sources (two ``.npz`` files, two ImageFolder trees, one of each) or one source and a built-in shift
of it, splits every class's samples into train / validation / test in both domains, and serves them
as the items of the root :class:`~lightning_meta.data.root.TaskDataModule`:

* training: an item is a source image and a target image.  Step ``t`` of epoch ``e`` draws its
  ``batch_size`` source and ``batch_size`` target samples from one generator, addressed
  ``(seed, "train", t * 1024, e)``; with ``W`` processes each rank keeps its ``batch_size / W`` of
  them, so ``W`` processes train on the step one process would.  A batch is ``x`` float
  ``[2B, C, H, W]`` in ``[0, 1]`` (the rank's ``B`` source images, then its ``B`` target images), ``y``
  long ``[2B]`` (source labels, then ``-1`` for every target image: target labels never leave the
  data module in training) and ``domain`` long ``[2B]`` (0 source, 1 target).
* validation / test: item ``k`` pairs held-out source sample ``k`` with held-out target sample ``k``
  (both domains hold out as many samples: ``val_samples`` or ``test_samples`` per class), with their
  true labels (for evaluation only), in :class:`DomainPairBatch` es of ``eval_batch_size`` pairs,
  dealt to processes and padded as any evaluation items.

Everything is decoded once into uint8 tensors at ``setup``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_meta.data.bundled import resolve
from lightning_meta.data.class_images import scale_pixels
from lightning_meta.data.image_files import (
    check_channels,
    check_image_size,
    check_seed,
    decode_images,
    list_class_folders,
    resize_uint8,
)
from lightning_meta.data.npz import array_header
from lightning_meta.data.root import SPLITS, ItemLoader, ItemStream, TaskDataModule, item_generator
from lightning_meta.errors import DATA_ARGS, ConfigurationError, optional_positive, require_choice, require_positive

#: built-in target domains made from the source images (see :func:`apply_shift`)
Shift = Literal["noise", "invert", "dilate", "erode", "blend", "rotate90"]
#: the generator address of training step ``t`` is ``t * STEP_ADDRESS`` (as when each rank ``r`` drew a batch
#: of its own at ``t * 1024 + r``: one process draws the batches it drew then)
STEP_ADDRESS = 1024


def apply_shift(images: Tensor, shift: Shift, generator: torch.Generator, strength: float = 0.5) -> Tensor:
    """A shifted copy of uint8 images ``[N, C, H, W]`` (same shape and dtype), the built-in target domains.

    * ``noise``: Gaussian pixel noise of standard deviation ``strength`` (in [0, 1] pixel units),
      clipped to [0, 1]; a fresh draw for every image.
    * ``invert``: ``255 - x`` (dark glyphs on a bright background).
    * ``dilate`` / ``erode``: 3x3 grey-level dilation / erosion (thicker / thinner strokes).
    * ``blend``: ``|x - background|`` with a smooth random background per image (as MNIST-M
      blends digits with photo patches).
    * ``rotate90``: every image turned by 90 degrees.
    """
    require_choice(DATA_ARGS + "shift", shift, Shift)
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
    else:  # rotate90
        x = torch.rot90(x, 1, dims=(-2, -1))
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
            f"{DATA_ARGS}{field}={path!r}: {file.resolve()} does not exist: give an .npz holding '{key}' (uint8 images"
            " [classes, samples, H, W]) or a folder of class sub-folders of images")
    try:
        shape, dtype = array_header(file, key)
    except ConfigurationError as error:
        raise ConfigurationError(f"{DATA_ARGS}{field}={path!r}: {error}") from None
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ConfigurationError(f"{DATA_ARGS}{field}={path!r}: {file.resolve()} is not a readable .npz / .npy file"
                                 f" ({type(error).__name__}: {error})") from error
    if len(shape) not in (4, 5) or (len(shape) == 5 and shape[2] not in (1, 3)) or dtype != np.uint8:
        raise ConfigurationError(
            f"{DATA_ARGS}{field}={path!r}: array '{key}' is {dtype} {list(shape)}; expected uint8 [classes, samples,"
            " H, W] or [classes, samples, C, H, W] with C = 1 or 3")
    array = np.load(file) if file.suffix == ".npy" else np.load(file)[key]
    x = torch.from_numpy(np.ascontiguousarray(array))
    if x.dim() == 4:
        x = x.unsqueeze(2)
    classes, samples = x.shape[:2]
    if image_size is not None and x.shape[-1] != image_size:
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


@dataclass
class DomainPairBatch:
    """``B`` held-out pairs of a validation or test batch: source images ``[B, C, H, W]`` with their labels
    ``[B]``, target images and labels alike, and the pairs' ``index [B]`` (``-1``: padding)."""

    source_x: Tensor
    source_y: Tensor
    target_x: Tensor
    target_y: Tensor
    index: Tensor


class PairedBatches(ItemStream):
    """The training batches ``(x, y, domain)`` of one rank, epoch by epoch (see the module docstring).

    ``source`` holds the uint8 images and labels of the source's training samples, ``target`` the target's
    training images; ``plan[t]`` lists the rank's items of step ``t`` (:meth:`TaskDataModule.training_plan`).
    """

    def __init__(self, source: tuple[Tensor, Tensor], target: Tensor, plan: Sequence[Sequence[int]],
                 batch_size: int, seed: int, epoch: int = 0):
        super().__init__(plan, epoch)
        self.source, self.target = source, target
        self.batch_size, self.seed = batch_size, seed

    def batch(self, position: int) -> tuple[Tensor, Tensor, Tensor]:
        generator = item_generator(self.seed, "train", position * STEP_ADDRESS, int(self.epoch or 0))
        (source_x, source_y), target_x = self.source, self.target
        i = torch.randint(len(source_x), (self.batch_size,), generator=generator)
        j = torch.randint(len(target_x), (self.batch_size,), generator=generator)
        share = torch.tensor(self.plan[position]) - position * self.batch_size  # this rank's items of the step
        i, j, count = i[share], j[share], len(share)
        x = scale_pixels(torch.cat([source_x[i], target_x[j]]))
        y = torch.cat([source_y[i], torch.full((count,), -1, dtype=torch.long)])
        domain = torch.cat([torch.zeros(count, dtype=torch.long), torch.ones(count, dtype=torch.long)])
        return x, y, domain


class HeldOutPairs(ItemStream):
    """The validation or test batches of one rank: item ``k`` pairs held-out source sample ``k`` with
    held-out target sample ``k`` (uint8 images and labels of each domain); padding (``-1``) repeats pair 0."""

    def __init__(self, source: tuple[Tensor, Tensor], target: tuple[Tensor, Tensor], plan: Sequence[Sequence[int]]):
        super().__init__(plan)
        self.source, self.target = source, target

    def batch(self, position: int) -> DomainPairBatch:
        index = torch.tensor(self.plan[position])
        rows = index.clamp(min=0)
        (source_x, source_y), (target_x, target_y) = self.source, self.target
        return DomainPairBatch(scale_pixels(source_x[rows]), source_y[rows], scale_pixels(target_x[rows]),
                               target_y[rows], index)


class DomainPairDataModule(TaskDataModule):
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
        shift: the built-in target domain when ``target`` is ``None``: one of :data:`Shift`.
        shift_strength: the noise standard deviation of ``shift="noise"`` (pixels in [0, 1]).
        key: the array name inside ``.npz`` files.
        classes: use only the first ``classes`` classes (``None``: all).
        val_samples, test_samples: held-out samples per class and domain.
        batch_size: source images per training step (and as many target images), summed over processes
            (each of ``W`` processes takes ``batch_size / W`` of each).
        steps_per_epoch: training steps per epoch.
        eval_batch_size: held-out pairs (a source and a target image) per validation / test batch.
        image_size, channels: decoding of image folders (resize to ``image_size``; 1 or 3 channels;
            default greyscale); ``image_size`` also resizes arrays.
        seed: seed of the training batches and of the shift.
        split_seed: seed of the per-class train / val / test split of samples.

    Example::

        dm = DomainPairDataModule("hanzi", shift="noise", classes=50)
        dm.setup("fit")
        x, y, domain = next(iter(dm.train_dataloader()))    # [128, 1, 28, 28], [128], [128]
        pairs = next(iter(dm.val_dataloader()))             # DomainPairBatch of 100 pairs (2 per class)
    """

    step_field = "batch_size"

    def __init__(
        self,
        source: str,
        target: Optional[str] = None,
        shift: Shift = "noise",
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
        super().__init__(seed=seed)
        require_choice(DATA_ARGS + "shift", shift, Shift)
        require_positive(DATA_ARGS + "shift_strength", shift_strength, integer=False)
        optional_positive(DATA_ARGS + "classes", classes)
        for name, value in (("val_samples", val_samples), ("test_samples", test_samples), ("batch_size", batch_size),
                            ("steps_per_epoch", steps_per_epoch), ("eval_batch_size", eval_batch_size)):
            require_positive(DATA_ARGS + name, value)
        check_image_size(image_size)
        check_channels(channels)
        check_seed("split_seed", split_seed)
        self.source_path, self.target_path = str(source), None if target is None else str(target)
        self.shift, self.shift_strength, self.key = shift, float(shift_strength), str(key)
        self.classes, self.val_samples, self.test_samples = classes, val_samples, test_samples
        self.batch_size, self.steps_per_epoch, self.eval_batch_size = batch_size, steps_per_epoch, eval_batch_size
        self.image_size, self.channels, self.split_seed = image_size, channels, split_seed
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
                    f"{DATA_ARGS}classes={self.classes} exceeds the {source.num_classes} classes of the domains: set"
                    f" classes <= {source.num_classes} or null (all)")
            source, target = source.keep_classes(self.classes), target.keep_classes(self.classes)
        if source.image_shape != target.image_shape:
            raise ConfigurationError(
                f"{DATA_ARGS}source and {DATA_ARGS}target images differ in shape: {list(source.image_shape)} vs"
                f" {list(target.image_shape)} ([C, H, W]): set {DATA_ARGS}image_size (and channels) so that both"
                " decode alike")
        need = self.val_samples + self.test_samples + 1
        for name, domain in (("source", source), ("target", target)):
            fewest = min(domain.counts())
            if fewest < need:
                raise ConfigurationError(
                    f"{DATA_ARGS}val_samples + {DATA_ARGS}test_samples = {self.val_samples} + {self.test_samples}"
                    f" leaves no training sample in a class of {name} with {fewest} samples: lower them so that they"
                    f" sum to at most {fewest - 1}")
        self.domains = {"source": source, "target": target}
        return self.domains

    def _match_classes(self, source: Domain, target: Domain) -> Domain:
        if source.num_classes != target.num_classes:
            raise ConfigurationError(
                f"{DATA_ARGS}source has {source.num_classes} classes but {DATA_ARGS}target has {target.num_classes}:"
                " the two domains must share their classes (same count; class folders with the same names)")
        both_folders = Path(self.source_path).expanduser().is_dir() and Path(self.target_path).expanduser().is_dir()
        if not both_folders:
            return target
        if set(source.names) != set(target.names):
            missing = sorted(set(source.names) ^ set(target.names))[:5]
            raise ConfigurationError(
                f"{DATA_ARGS}source and {DATA_ARGS}target class folders differ ({missing} ...): give both domains the"
                " same class-folder names")
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

    def samples(self, domain: str, split: str) -> tuple[Tensor, Tensor]:
        """uint8 images ``[n, C, H, W]`` and labels ``[n]`` of ``split`` in ``domain``."""
        picks, pool = self.split(domain)[split], self.load_domains()[domain]
        return pool.images[picks], pool.labels[picks]

    def evaluation_set(self, split: str) -> TensorDataset:
        """The held-out ``split`` ("val" or "test") samples: source, then target, as ``(x, y, domain)``."""
        parts = [self.samples(name, split) for name in ("source", "target")]
        domains = [torch.full((len(labels),), index, dtype=torch.long) for index, (_, labels) in enumerate(parts)]
        return TensorDataset(scale_pixels(torch.cat([images for images, _ in parts])),
                             torch.cat([labels for _, labels in parts]), torch.cat(domains))

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "predict":
            raise ConfigurationError(f"{type(self).__name__} serves training and evaluation only; predict is not"
                                     " supported for domain adaptation")
        self.items_per_rank()
        self.load_domains()

    def train_dataloader(self) -> ItemLoader:
        source_x, source_y = self.samples("source", "train")
        target_x, _ = self.samples("target", "train")
        stream = PairedBatches((source_x, source_y), target_x, self.training_plan(self.steps_per_epoch),
                               self.batch_size, self.seed)
        return self.loader(stream, training=True)

    def val_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("val")

    def test_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("test")

    def evaluation_loader(self, split: str) -> ItemLoader:
        """The held-out pairs of ``split``, this process's share in batches of ``eval_batch_size``."""
        source, target = self.samples("source", split), self.samples("target", split)
        plan = self.evaluation_plan(len(source[1]), self.eval_batch_size)
        return self.loader(HeldOutPairs(source, target, plan))
