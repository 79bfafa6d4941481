"""Episodic data: N-way K-shot tasks from image classes or function families."""

from lightning_meta.data.bundled import bundled_names, bundled_path
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.domains import DomainPairDataModule
from lightning_meta.data.episodes import EpisodeLoader, EpisodeStream, episode_generator
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
from lightning_meta.data.supervised import SupervisedStream

__all__ = [
    "ClassImages",
    "DomainPairDataModule",
    "EpisodeLoader",
    "EpisodeStream",
    "EpisodicDataModule",
    "ImagePreprocessing",
    "ImageFolderDataModule",
    "LinearDataModule",
    "LinearTasks",
    "MiniImageNetDataModule",
    "NpzDataModule",
    "OmniglotDataModule",
    "PredictionSet",
    "RegressionDataModule",
    "SinusoidDataModule",
    "SinusoidTasks",
    "SupervisedStream",
    "bundled_names",
    "bundled_path",
    "episode_generator",
    "predict_folders",
]
