"""Backbones: ``head(features(x))`` networks with BatchNorm on batch statistics where adapted, and the
embedding and relation modules of Relation networks, SNAIL's sequence model, MANN's memory, the Meta-Learner LSTM's update rule, the
policies of the meta-RL learners."""

from lightning_meta.models.backbone import Backbone, build_module, module_spec
from lightning_meta.models.conv4 import Conv4
from lightning_meta.models.figr_nets import DCGANDiscriminator, DCGANGenerator
from lightning_meta.models.generator import TaskConditionedGenerator
from lightning_meta.models.gradient_reversal import GradientReversal
from lightning_meta.models.memory import LRUAMemory
from lightning_meta.models.meta_lstm_cell import CoordinateMetaLSTM
from lightning_meta.models.mlp import MLP
from lightning_meta.models.policies import CategoricalMLPPolicy, GaussianMLPPolicy, GRUPolicy
from lightning_meta.models.relation import RelationEmbedding, RelationModule
from lightning_meta.models.resnet12 import ResNet12
from lightning_meta.models.resnet18 import ResNet18
from lightning_meta.models.snail import SnailSequenceModel
from lightning_meta.models.wrn import WideResNet

__all__ = ["Backbone", "CategoricalMLPPolicy", "Conv4", "CoordinateMetaLSTM", "DCGANDiscriminator", "DCGANGenerator", "GaussianMLPPolicy", "GRUPolicy",
           "GradientReversal", "LRUAMemory", "MLP", "RelationEmbedding", "RelationModule", "ResNet12", "ResNet18",
           "SnailSequenceModel", "TaskConditionedGenerator", "WideResNet", "build_module", "module_spec"]
