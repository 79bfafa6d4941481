"""Meta-learning algorithms as LightningModules."""

from lightning_meta.algorithms.anil import ANIL
from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.meta_sgd import MetaSGD
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.algorithms.protonet import PrototypicalNetwork

__all__ = ["ANIL", "MAML", "MetaLearner", "MetaSGD", "MetricLearner", "PrototypicalNetwork"]
