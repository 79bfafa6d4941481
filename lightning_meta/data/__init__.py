"""Data modules: the root :class:`TaskDataModule` (addressable items split across processes, resumable), the
episodic modules (N-way K-shot tasks from image classes or function families: Omniglot, mini- and
tiered-ImageNet, CIFAR-FS, FC100, CUB, the Meta-Dataset sources, Meta-Album, CSV splits, any image folder
or array), the domain pairs of DANN, the environment tasks of meta-RL and the seeded training runs of
hyper-parameter learning (digits)."""

from lightning_meta.data.aircraft import AircraftDataModule
from lightning_meta.data.augmentation import EpisodeAugmentation
from lightning_meta.data.bundled import bundled_names, bundled_path
from lightning_meta.data.cifar_fs import CIFARFSDataModule
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.csv_split import CSVSplitDataModule
from lightning_meta.data.cub import CUBDataModule
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.digits import DigitsDataModule, RunBatch
from lightning_meta.data.domains import DomainPairDataModule
from lightning_meta.data.dtd import DTDDataModule
from lightning_meta.data.env_tasks import EnvTaskDataModule
from lightning_meta.data.episodes import EpisodeStream, episode_generator
from lightning_meta.data.fc100 import FC100DataModule
from lightning_meta.data.fungi import FungiDataModule
from lightning_meta.data.image_folder import ImageFolderDataModule
from lightning_meta.data.meta_album import MetaAlbumDataModule
from lightning_meta.data.miniimagenet import MiniImageNetDataModule
from lightning_meta.data.multi_source import ClassPartDataModule, MultiSourceDataModule
from lightning_meta.data.npz import NpzDataModule
from lightning_meta.data.omniglot import OmniglotDataModule
from lightning_meta.data.prediction import PredictionSet, predict_folders
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.data.quickdraw import QuickdrawDataModule
from lightning_meta.data.regression import (
    LinearDataModule,
    LinearTasks,
    RegressionDataModule,
    SinusoidDataModule,
    SinusoidTasks,
)
from lightning_meta.data.root import (
    ItemLoader,
    ItemStream,
    TaskDataModule,
    item_generator,
)
from lightning_meta.data.supervised import SupervisedStream
from lightning_meta.data.tiered_imagenet import TieredImageNetDataModule
from lightning_meta.data.vgg_flowers import VGGFlowersDataModule

__all__ = [
    "AircraftDataModule",
    "CIFARFSDataModule",
    "CSVSplitDataModule",
    "CUBDataModule",
    "ClassImages",
    "ClassPartDataModule",
    "DTDDataModule",
    "DigitsDataModule",
    "DomainPairDataModule",
    "EnvTaskDataModule",
    "EpisodeAugmentation",
    "EpisodeStream",
    "EpisodicDataModule",
    "FC100DataModule",
    "FungiDataModule",
    "ImageFolderDataModule",
    "ImagePreprocessing",
    "ItemLoader",
    "ItemStream",
    "LinearDataModule",
    "LinearTasks",
    "MetaAlbumDataModule",
    "MiniImageNetDataModule",
    "MultiSourceDataModule",
    "NpzDataModule",
    "OmniglotDataModule",
    "PredictionSet",
    "QuickdrawDataModule",
    "RegressionDataModule",
    "RunBatch",
    "SinusoidDataModule",
    "SinusoidTasks",
    "SupervisedStream",
    "TaskDataModule",
    "TieredImageNetDataModule",
    "VGGFlowersDataModule",
    "bundled_names",
    "bundled_path",
    "episode_generator",
    "item_generator",
    "predict_folders",
]
