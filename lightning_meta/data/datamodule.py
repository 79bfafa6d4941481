"""``EpisodicDataModule``: N-way K-shot tasks for meta-training, validation and test."""

from __future__ import annotations

from typing import Optional, Union

from torch.utils.data import DataLoader, IterableDataset

from lightning_meta.data.augmentation import AUGMENTATIONS, make_augmentation
from lightning_meta.data.episodes import EpisodeSource, EpisodeStream
from lightning_meta.data.prediction import PredictionSet, read_prediction_set
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.data.root import ItemLoader, TaskDataModule
from lightning_meta.data.supervised import SupervisedStream, TrainBatches, check_supervised_split
from lightning_meta.errors import DATA_ARGS, ConfigurationError, optional_positive, require_choice, require_positive


class EpisodicDataModule(TaskDataModule):
    """Serves :class:`~lightning_meta.tasks.TaskBatch` meta-batches of N-way K-shot tasks.

    Subclasses provide the classes of each split by implementing :meth:`load_split`; this class
    draws addressable episodes from them (see :mod:`lightning_meta.data.episodes`), splits each
    meta-batch across processes as the root :class:`~lightning_meta.data.root.TaskDataModule` splits
    its items (episodes here), and rejects impossible settings before training.

    Args:
        ways, shots, queries: the training episodes (N classes, K support and Q query samples each;
            ``queries: 0`` serves support sets alone, for learners that declare no query set).
        test_ways, test_shots, test_queries: validation and test episodes (default: as training).
        meta_batch_size: tasks per outer step, summed over all processes (each of ``W`` processes
            draws ``meta_batch_size / W`` of them).
        episodes_per_epoch: training tasks per epoch (``episodes_per_epoch // meta_batch_size`` steps).
        val_episodes, test_episodes: sizes of the fixed, seeded validation and test sets.
        num_workers: loader processes building batches (0 builds them in the main process).
        seed: the seed every episode is drawn from (see :class:`~lightning_meta.data.root.TaskDataModule`).
        support_dir, query_dir: ``predict`` only (image data modules): a folder of class sub-folders
            of support images of new classes, and a folder of query images to classify (see
            :mod:`lightning_meta.data.prediction`); decoded as the training images are.
        train_batches: ``"episodes"`` (default) or ``"supervised"``: class-balanced batches ``(x, y)``
            of ``batch_size`` images labelled with their meta-training class (``0 ..
            num_train_classes - 1``, rotations included) for methods that pre-train on ordinary
            batches (fine-tuning baselines); validation and test stay episodic.  See
            :mod:`lightning_meta.data.supervised`.
        batch_size: images per supervised training batch, summed over all processes.
        augment: training-time augmentation of the training episodes' images (never of validation or
            test episodes): ``true`` for random resized crop, horizontal flip and colour jitter as the
            papers use them on RGB sets, or a list of some of ``crop``, ``flip``, ``jitter``; off by
            default (and for Omniglot-style characters, where a flip or crop changes the class).  Each
            episode's augmentation is drawn from its address, so resume and DDP stay exact; see
            :mod:`lightning_meta.data.augmentation`.

    Example::

        class MyTasks(EpisodicDataModule):
            def load_split(self, split):
                return ClassImages.from_array(my_arrays[split])

        dm = MyTasks(ways=5, shots=1, queries=15, meta_batch_size=32)
    """

    is_regression = False
    #: the splits each stage checks before it starts (``fit`` tests at its end: its test split is
    #: checked, and decoded, before the first training step)
    splits_needed = {"fit": ("train", "val", "test"), "validate": ("val",), "test": ("test",), "predict": ()}

    def __init__(
        self,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        test_ways: Optional[int] = None,
        test_shots: Optional[int] = None,
        test_queries: Optional[int] = None,
        meta_batch_size: int = 32,
        episodes_per_epoch: int = 3200,
        val_episodes: int = 320,
        test_episodes: int = 600,
        num_workers: int = 0,
        seed: int = 0,
        support_dir: Optional[str] = None,
        query_dir: Optional[str] = None,
        train_batches: TrainBatches = "episodes",
        batch_size: Optional[int] = None,
        augment: Union[bool, list[str]] = False,
    ):
        super().__init__(seed=seed)
        require_choice(DATA_ARGS + "train_batches", train_batches, TrainBatches)
        if train_batches == "supervised":
            if self.is_regression:
                raise ConfigurationError(
                    f"{DATA_ARGS}train_batches='supervised' asks {type(self).__name__}, a regression data module, for "
                    "class-labelled batches: supervised pre-training needs classes of images; use train_batches: "
                    "episodes, or an image data module (Omniglot, MiniImageNet, Npz, ImageFolder)")
            if batch_size is None:
                raise ConfigurationError(f"{DATA_ARGS}train_batches='supervised' needs {DATA_ARGS}batch_size"
                                         " (images per training batch, e.g. 16)")
            require_positive(DATA_ARGS + "batch_size", batch_size)
        elif batch_size is not None:
            raise ConfigurationError(f"{DATA_ARGS}batch_size={batch_size} applies to supervised batches only: set "
                                     f"{DATA_ARGS}train_batches: supervised, or leave batch_size unset (episodes use "
                                     "meta_batch_size)")
        self.train_batches, self.batch_size = train_batches, batch_size
        for name, value in (("ways", ways), ("shots", shots),
                            ("meta_batch_size", meta_batch_size), ("episodes_per_epoch", episodes_per_epoch),
                            ("val_episodes", val_episodes), ("test_episodes", test_episodes)):
            require_positive(DATA_ARGS + name, value)
        for name, value in (("test_ways", test_ways), ("test_shots", test_shots)):
            optional_positive(DATA_ARGS + name, value)
        # 0 queries: support sets only, for learners without a query set (generators such as FIGR); a
        # learner that needs queries says so when it meets the data module
        require_positive(DATA_ARGS + "queries", queries, allow_zero=True)
        optional_positive(DATA_ARGS + "test_queries", test_queries, allow_zero=True)
        require_positive(DATA_ARGS + "num_workers", num_workers, allow_zero=True)
        if episodes_per_epoch < meta_batch_size:
            raise ConfigurationError(
                f"{DATA_ARGS}episodes_per_epoch={episodes_per_epoch} is smaller than {DATA_ARGS}meta_batch_size="
                f"{meta_batch_size}: an epoch needs at least one meta-batch; raise episodes_per_epoch")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.test_ways = test_ways or ways
        self.test_shots = test_shots or shots
        self.test_queries = queries if test_queries is None else test_queries
        self.meta_batch_size = meta_batch_size
        self.episodes_per_epoch = episodes_per_epoch
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.num_workers = num_workers
        self.support_dir = None if support_dir is None else str(support_dir)
        self.query_dir = None if query_dir is None else str(query_dir)
        self.augment = augment
        self.augmentation = make_augmentation(augment)
        if self.augmentation is not None and train_batches == "supervised":
            raise ConfigurationError(f"{DATA_ARGS}augment={augment!r} augments training episodes; supervised batches"
                                     f" (train_batches: supervised) are not augmented: set {DATA_ARGS}augment: false")
        self.sources: dict[str, EpisodeSource] = {}
        self._prediction: Optional[PredictionSet] = None

    # ----------------------------------------------------------------- subclass hooks
    def load_split(self, split: str) -> EpisodeSource:
        """The episode source of ``split`` ("train", "val" or "test"): decode and hold its data."""
        raise NotImplementedError

    def split_counts(self, split: str) -> Optional[tuple[int, Optional[int]]]:
        """``(classes, fewest samples of a class)`` of ``split`` from a cheap listing, or ``None``.

        Data modules over files implement it (rotations included) so that impossible settings fail
        before anything is decoded; ``None`` defers the check until the split is loaded.
        """
        return None

    # ----------------------------------------------------------------- settings
    def setting(self, split: str) -> tuple[int, int, int]:
        """``(ways, shots, queries)`` of the episodes of ``split``."""
        if split == "train":
            return self.ways, self.shots, self.queries
        return self.test_ways, self.test_shots, self.test_queries

    def check_split(self, split: str, num_classes: int, min_samples: Optional[int]) -> None:
        """Reject episodes (or supervised batches) that ``split`` cannot supply, naming the field to change."""
        if split == "train" and self.train_batches == "supervised":
            check_supervised_split(split, num_classes, min_samples, self.batch_size)
            return
        ways, shots, queries = self.setting(split)
        prefix = "" if split == "train" else "test_"
        if num_classes < ways:
            raise ConfigurationError(
                f"{DATA_ARGS}{prefix}ways={ways} asks for more classes than the {num_classes} of the '{split}' split:"
                f" set {prefix}ways <= {num_classes}, or give the split more classes")
        if min_samples is not None and shots + queries > min_samples:
            raise ConfigurationError(
                f"{DATA_ARGS}{prefix}shots + {DATA_ARGS}{prefix}queries = {shots} + {queries} = {shots + queries}"
                f" exceeds the {min_samples} samples of the smallest class of the '{split}' split: lower {prefix}shots"
                f" or {prefix}queries so that they sum to at most {min_samples}")

    @property
    def steps_per_epoch(self) -> int:
        return self.episodes_per_epoch // self.meta_batch_size

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        """Check every split the stage needs (from listings) before loading any of them."""
        self.items_per_rank()
        splits = self.splits_needed.get(stage or "fit", ("train", "val", "test"))
        for split in splits:
            self._check_counts(split)
        for split in splits:
            self.source(split)
        if stage == "predict":
            self.prediction_set()

    def _check_counts(self, split: str) -> None:
        counts = None if split in self.sources else self.split_counts(split)
        if counts is not None:
            self.check_split(split, *counts)

    def source(self, split: str) -> EpisodeSource:
        """The loaded (and checked) source of ``split``, loaded on first use."""
        if split not in self.sources:
            self._check_counts(split)
            source = self.load_split(split)
            self.check_split(split, source.num_classes, source.min_samples)
            if split == "train" and self.augmentation is not None:
                self.check_augmentation(source)
            self.sources[split] = source
        return self.sources[split]

    def check_augmentation(self, source: EpisodeSource) -> None:
        """Refuse ``augment`` for a training source that cannot augment its episodes (not images)."""
        if not getattr(source, "supports_augmentation", False):
            raise ConfigurationError(
                f"{DATA_ARGS}augment={self.augment!r}: {type(self).__name__}'s training episodes"
                f" ({type(source).__name__}) are not images that can be augmented; set {DATA_ARGS}augment: false"
                f" (augmentations {list(AUGMENTATIONS)} apply to image data modules)")

    @property
    def num_train_classes(self) -> int:
        """Classes of the meta-training split (rotations included): the labels of supervised batches."""
        counts = None if "train" in self.sources else self.split_counts("train")
        return counts[0] if counts is not None else self.source("train").num_classes

    def train_dataloader(self) -> ItemLoader:
        if self.train_batches == "supervised":
            stream = SupervisedStream(self.source("train"), self.batch_size, self.seed, *self.world)  # type: ignore
            return self.loader(stream, self.num_workers, training=True)
        stream = EpisodeStream(self.source("train"), "train", self.training_plan(self.steps_per_epoch),
                               *self.setting("train"), seed=self.seed, epoch=0, augment=self.augmentation)
        return self.loader(stream, self.num_workers, training=True)

    def val_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("val", self.val_episodes)

    def test_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("test", self.test_episodes)

    def evaluation_loader(self, split: str, episodes: int) -> ItemLoader:
        """The fixed ``episodes`` of ``split``, this process's share in meta-batches of its share of
        ``meta_batch_size`` (padded: see :func:`~lightning_meta.data.root.eval_plan`)."""
        plan = self.evaluation_plan(episodes, self.items_per_rank())
        stream = EpisodeStream(self.source(split), split, plan, *self.setting(split), seed=self.seed)
        return self.loader(stream, self.num_workers)

    # ----------------------------------------------------------------- prediction (support_dir, query_dir)
    @property
    def predicting(self) -> bool:
        """Whether the attached Trainer runs ``predict`` (which needs no training data: no download)."""
        trainer = self.trainer
        return trainer is not None and trainer.state.fn == "predict"

    def preprocessing(self) -> ImagePreprocessing:
        """How this module decodes image files (shared by training and prediction); image modules implement it."""
        if self.is_regression:
            raise ConfigurationError(
                f"{type(self).__name__} is a regression data module: predict classifies images of new classes"
                " from a support folder; use a config whose data module reads images (Omniglot, ImageFolder, Npz,"
                " MiniImageNet) with --data.init_args.support_dir and --data.init_args.query_dir")
        raise ConfigurationError(
            f"{type(self).__name__} cannot read prediction folders: it does not say how it decodes image files"
            " (implement preprocessing()); predict works with the image data modules (Omniglot, ImageFolder, Npz,"
            " MiniImageNet)")

    def prediction_set(self) -> PredictionSet:
        """The task to predict from ``support_dir`` and ``query_dir``, checked and decoded once (``queries: 0``,
        as generators are configured: the support folder alone, ``query_dir`` optional)."""
        if self._prediction is None:
            self._prediction = read_prediction_set(self.support_dir, self.query_dir, self.preprocessing(),
                                                   type(self).__name__, needs_queries=self.queries > 0)
        return self._prediction

    def predict_dataloader(self) -> DataLoader:
        """One :class:`~lightning_meta.tasks.PredictionBatch` (``B = 1``): the support and query folders.

        Every process predicts it (an iterable dataset, so Lightning adds no distributed sampler, which
        would leave the second of two processes with nothing and fail); rank 0 writes the predictions.
        """
        return DataLoader(ReadyBatches([self.prediction_set().batch()]), batch_size=None)


class ReadyBatches(IterableDataset):
    """Batches built beforehand, served as they are on every process."""

    def __init__(self, batches: list):
        super().__init__()
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
