"""Backbones: ``head(features(x))`` networks with BatchNorm on batch statistics where adapted."""

from lightning_meta.models.backbone import Backbone, build_module, module_spec
from lightning_meta.models.conv4 import Conv4
from lightning_meta.models.mlp import MLP
from lightning_meta.models.resnet12 import ResNet12

__all__ = ["Backbone", "Conv4", "MLP", "ResNet12", "build_module", "module_spec"]
