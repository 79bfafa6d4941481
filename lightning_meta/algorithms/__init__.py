"""Meta-learning algorithms as LightningModules."""

from lightning_meta.algorithms.anil import ANIL
from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.domain_adversarial import DomainAdversarial
from lightning_meta.algorithms.figr import FIGR
from lightning_meta.algorithms.finetune import Baseline, BaselinePlusPlus, FineTuningBaseline
from lightning_meta.algorithms.hyper_learner import HyperparameterLearner
from lightning_meta.algorithms.imaml import IMAML
from lightning_meta.algorithms.learner import Learner
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.maml_rl import MAMLPolicyGradient
from lightning_meta.algorithms.mann import MANN
from lightning_meta.algorithms.matching import MatchingNetwork
from lightning_meta.algorithms.meta_lstm import MetaLearnerLSTM
from lightning_meta.algorithms.meta_sgd import MetaSGD
from lightning_meta.algorithms.metagan import MetaGAN
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.algorithms.protonet import PrototypicalNetwork
from lightning_meta.algorithms.relation import RelationNetwork
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.algorithms.rl2 import RL2
from lightning_meta.algorithms.sequence import SequenceLearner
from lightning_meta.algorithms.siamese import SiameseNetwork
from lightning_meta.algorithms.snail import SNAIL

__all__ = ["ANIL", "Baseline", "BaselinePlusPlus", "DomainAdversarial", "FIGR", "FineTuningBaseline", "HyperparameterLearner", "IMAML", "Learner",
           "MAML", "MAMLPolicyGradient", "MANN", "MatchingNetwork", "MetaGAN", "MetaLearner", "MetaLearnerLSTM", "MetaSGD",
           "MetricLearner", "PrototypicalNetwork", "RelationNetwork", "Reptile", "RL2", "SequenceLearner", "SiameseNetwork", "SNAIL"]
