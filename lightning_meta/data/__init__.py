"""Data modules: the root :class:`TaskDataModule` (addressable items split across processes, resumable), the
episodic modules (N-way K-shot tasks from image classes or function families) the domain pairs of DANN,
the environment tasks of meta-RL and the seeded training runs of hyper-parameter learning (digits)."""

from lightning_meta.data.bundled import bundled_names, bundled_path
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.digits import DigitsDataModule, RunBatch
from lightning_meta.data.domains import DomainPairDataModule
from lightning_meta.data.env_tasks import EnvTaskDataModule
from lightning_meta.data.episodes import EpisodeStream, episode_generator
from lightning_meta.data.image_folder import ImageFolderDataModule
from lightning_meta.data.miniimagenet import MiniImageNetDataModule
from lightning_meta.data.npz import NpzDataModule
from lightning_meta.data.omniglot import OmniglotDataModule
from lightning_meta.data.prediction import PredictionSet, predict_folders
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.data.regression import (
    LinearDataModule,
    LinearTasks,
    RegressionDataModule,
    SinusoidDataModule,
    SinusoidTasks,
)
from lightning_meta.data.root import ItemLoader, ItemStream, TaskDataModule, item_generator
from lightning_meta.data.supervised import SupervisedStream

__all__ = [
    "ClassImages",
    "DigitsDataModule",
    "DomainPairDataModule",
    "EnvTaskDataModule",
    "EpisodeStream",
    "EpisodicDataModule",
    "ImagePreprocessing",
    "ImageFolderDataModule",
    "ItemLoader",
    "ItemStream",
    "LinearDataModule",
    "LinearTasks",
    "MiniImageNetDataModule",
    "NpzDataModule",
    "OmniglotDataModule",
    "PredictionSet",
    "RegressionDataModule",
    "RunBatch",
    "SinusoidDataModule",
    "SinusoidTasks",
    "SupervisedStream",
    "TaskDataModule",
    "bundled_names",
    "bundled_path",
    "episode_generator",
    "item_generator",
    "predict_folders",
]
