"""ResNet-18 as the few-shot papers use it (Chen et al. 2019, "A Closer Look at Few-shot Classification")."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_meta.models.backbone import Backbone, linear_head
from lightning_meta.models.conv4 import BATCH_NORM_STATS
from lightning_meta.models.norm import BatchNorm2d

#: the first layers: ImageNet's 7x7 stride-2 convolution and 3x3 max-pool (Chen et al. 2019, at 84x84 and
#: 224x224), or one 3x3 stride-1 convolution for small images (32x32 CIFAR-FS / FC100)
STEMS = ("imagenet", "cifar")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers (the first strided), added to the input (a 1x1 conv-BN where the shape
    changes), then ReLU: He et al. 2016's basic block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, track_running_stats: bool):
        super().__init__()

        def bn() -> BatchNorm2d:
            return BatchNorm2d(out_channels, track_running_stats=track_running_stats)

        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False), bn(), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), bn(),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), bn())
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet18(Backbone):
    """ResNet-18: a stem, four stages of two basic blocks (64-128-256-512 channels, stages 2-4 halve the
    resolution), global average pooling (512 features), a linear head.

    The ResNet-18 of Chen et al. 2019 (CloserLook), Meta-Album and Meta-Dataset's baselines: He et al.'s
    ImageNet network without its classifier, 11.18M parameters (torchvision's ``resnet18`` without ``fc``,
    layer for layer).  ``stem="imagenet"`` (default) starts with a 7x7 stride-2 convolution and a 3x3
    stride-2 max-pool (84x84 images end as 3x3 maps, 224x224 as 7x7); ``stem="cifar"`` with one 3x3 stride-1
    convolution, for 32x32 images.  ``channels`` sets the four widths (small ones for tests).
    BatchNorm follows ``batch_norm_stats`` as in :class:`~lightning_meta.models.Conv4`: ``"batch"`` for
    MAML-style learners (statistics of each batch, no buffers), ``"running"`` for metric learners.

    Example::

        net = ResNet18(in_channels=3, out_features=None, batch_norm_stats="running")  # ProtoNet embedding
        net(torch.randn(10, 3, 84, 84)).shape               # torch.Size([10, 512])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: Optional[int] = 5,
        channels: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        batch_norm_stats: str = "batch",
    ):
        super().__init__()
        if batch_norm_stats not in BATCH_NORM_STATS:
            raise ValueError(f"ResNet18 batch_norm_stats={batch_norm_stats!r} is unknown; choose 'batch' or 'running'")
        if stem not in STEMS:
            raise ValueError(f"ResNet18 stem={stem!r} is unknown; choose 'imagenet' (7x7 conv, max-pool) or 'cifar'"
                             " (3x3 conv, for 32x32 images)")
        if len(channels) != 4 or min(channels) < 1 or in_channels < 1:
            raise ValueError(f"ResNet18 channels must be four positive widths, got {list(channels)}")
        track = batch_norm_stats == "running"
        first = channels[0]
        if stem == "imagenet":
            layers: list[nn.Module] = [nn.Conv2d(in_channels, first, 7, stride=2, padding=3, bias=False),
                                       BatchNorm2d(first, track_running_stats=track), nn.ReLU(),
                                       nn.MaxPool2d(3, stride=2, padding=1)]
        else:
            layers = [nn.Conv2d(in_channels, first, 3, padding=1, bias=False),
                      BatchNorm2d(first, track_running_stats=track), nn.ReLU()]
        widths = [first, *channels]
        for stage in range(4):
            stride = 1 if stage == 0 else 2
            layers.append(nn.Sequential(BasicBlock(widths[stage], widths[stage + 1], stride, track),
                                        BasicBlock(widths[stage + 1], widths[stage + 1], 1, track)))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = linear_head(channels[-1], out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
