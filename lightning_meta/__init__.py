"""lightning-meta: meta-learning algorithms as PyTorch Lightning modules.

Example::

    import pytorch_lightning as pl
    from lightning_meta import MAML, SinusoidDataModule
    from lightning_meta.models import MLP

    model = MAML(MLP(1, 1, (40, 40)), inner_lr=0.01, inner_steps=1, test_inner_steps=10)
    trainer = pl.Trainer(max_epochs=5, inference_mode=False)
    trainer.fit(model, SinusoidDataModule())
"""

from lightning_meta.algorithms import (
    ANIL,
    MAML,
    Baseline,
    BaselinePlusPlus,
    DomainAdversarial,
    FineTuningBaseline,
    MANN,
    MatchingNetwork,
    MetaLearner,
    MetaLearnerLSTM,
    MetaSGD,
    MetricLearner,
    PrototypicalNetwork,
    RelationNetwork,
    Reptile,
    SiameseNetwork,
    SNAIL,
)
from lightning_meta.data import (
    ClassImages,
    DomainPairDataModule,
    EpisodicDataModule,
    ImageFolderDataModule,
    LinearDataModule,
    MiniImageNetDataModule,
    NpzDataModule,
    OmniglotDataModule,
    SinusoidDataModule,
)
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import Task, TaskBatch

__version__ = "0.1.0"

__all__ = [
    "ANIL",
    "Baseline",
    "BaselinePlusPlus",
    "ClassImages",
    "ConfigurationError",
    "DomainAdversarial",
    "DomainPairDataModule",
    "EpisodicDataModule",
    "FineTuningBaseline",
    "ImageFolderDataModule",
    "LinearDataModule",
    "MAML",
    "MANN",
    "MatchingNetwork",
    "MetaLearner",
    "MetaLearnerLSTM",
    "MetaSGD",
    "MetricLearner",
    "MiniImageNetDataModule",
    "NpzDataModule",
    "OmniglotDataModule",
    "PrototypicalNetwork",
    "RelationNetwork",
    "Reptile",
    "SiameseNetwork",
    "SNAIL",
    "SinusoidDataModule",
    "Task",
    "TaskBatch",
]
