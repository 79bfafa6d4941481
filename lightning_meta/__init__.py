"""lightning-meta: meta-learning algorithms as PyTorch Lightning modules.

Example::

    import pytorch_lightning as pl
    from lightning_meta import MAML, SinusoidDataModule
    from lightning_meta.models import MLP

    model = MAML(MLP(1, 1, (40, 40)), inner_lr=0.01, inner_steps=1, test_inner_steps=10)
    trainer = pl.Trainer(max_epochs=5, inference_mode=False)
    trainer.fit(model, SinusoidDataModule())
"""

from __future__ import annotations

import importlib
from typing import Any

_ORIGIN: dict[str, str] = {
    **dict.fromkeys(
        ["ANIL", "MAML", "Baseline", "BaselinePlusPlus", "DomainAdversarial", "FIGR", "FineTuningBaseline", "HyperparameterLearner",
         "IMAML", "Learner", "MAMLPolicyGradient", "MANN", "MatchingNetwork", "MetaGAN", "MetaLearner", "MetaLearnerLSTM", "MetaSGD",
         "MetricLearner", "PrototypicalNetwork", "RelationNetwork", "Reptile", "RL2", "SequenceLearner", "SiameseNetwork", "SNAIL"],
        "lightning_meta.algorithms",
    ),
    **dict.fromkeys(
        ["AircraftDataModule", "CIFARFSDataModule", "ClassImages", "ClassPartDataModule", "CSVSplitDataModule",
         "CUBDataModule", "DigitsDataModule", "DomainPairDataModule", "DTDDataModule", "EnvTaskDataModule",
         "EpisodicDataModule", "FC100DataModule", "FungiDataModule", "ImageFolderDataModule", "LinearDataModule",
         "MetaAlbumDataModule", "MiniImageNetDataModule", "MultiSourceDataModule", "NpzDataModule",
         "OmniglotDataModule", "QuickdrawDataModule", "SinusoidDataModule", "TaskDataModule",
         "TieredImageNetDataModule", "VGGFlowersDataModule"],
        "lightning_meta.data",
    ),
    **dict.fromkeys(["hypergradient", "HyperGradient", "unrolled_loss"], "lightning_meta.hypergradients"),
    "ConfigurationError": "lightning_meta.errors",
    "EnvTaskBatch": "lightning_meta.tasks",
    "Task": "lightning_meta.tasks",
    "TaskBatch": "lightning_meta.tasks",
}
"""The module each public name comes from, imported on first use (PEP 562).

Importing the package stays cheap (no torch, no Lightning), so ``lightning-meta --help`` answers in
a fraction of a second; ``from lightning_meta import MAML`` imports the algorithms then.
"""

__version__ = "0.1.0"

__all__ = [
    "AircraftDataModule",
    "ANIL",
    "Baseline",
    "BaselinePlusPlus",
    "CIFARFSDataModule",
    "ClassImages",
    "ClassPartDataModule",
    "ConfigurationError",
    "CSVSplitDataModule",
    "CUBDataModule",
    "DigitsDataModule",
    "DomainAdversarial",
    "DomainPairDataModule",
    "DTDDataModule",
    "EnvTaskBatch",
    "EnvTaskDataModule",
    "EpisodicDataModule",
    "FIGR",
    "FC100DataModule",
    "FineTuningBaseline",
    "FungiDataModule",
    "HyperGradient",
    "HyperparameterLearner",
    "ImageFolderDataModule",
    "IMAML",
    "Learner",
    "LinearDataModule",
    "MAML",
    "MAMLPolicyGradient",
    "MANN",
    "MatchingNetwork",
    "MetaGAN",
    "MetaAlbumDataModule",
    "MetaLearner",
    "MetaLearnerLSTM",
    "MetaSGD",
    "MetricLearner",
    "MiniImageNetDataModule",
    "MultiSourceDataModule",
    "NpzDataModule",
    "OmniglotDataModule",
    "PrototypicalNetwork",
    "QuickdrawDataModule",
    "RelationNetwork",
    "Reptile",
    "RL2",
    "SequenceLearner",
    "SiameseNetwork",
    "SinusoidDataModule",
    "SNAIL",
    "Task",
    "TaskBatch",
    "TaskDataModule",
    "TieredImageNetDataModule",
    "VGGFlowersDataModule",
    "hypergradient",
    "unrolled_loss",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access, then keep it as a module attribute."""
    if name not in _ORIGIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_ORIGIN[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and the lazy public ones, so completion and ``dir()`` show the API."""
    return sorted(set(globals()) | set(__all__))
