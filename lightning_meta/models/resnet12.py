"""ResNet-12, the backbone of MetaOptNet, TADAM and most recent mini-ImageNet results."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_meta.models.backbone import Backbone, linear_head
from lightning_meta.models.conv4 import BATCH_NORM_STATS
from lightning_meta.models.norm import BatchNorm2d


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN-LeakyReLU layers, a 1x1 conv-BN shortcut, then 2x2 max-pooling."""

    def __init__(self, in_channels: int, out_channels: int, track_running_stats: bool, dropout: float):
        super().__init__()

        def bn() -> BatchNorm2d:
            return BatchNorm2d(out_channels, track_running_stats=track_running_stats)

        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), bn(), nn.LeakyReLU(0.1),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), bn(), nn.LeakyReLU(0.1),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), bn(),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), bn())
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(Backbone):
    """Four residual blocks (64-160-320-640 channels), global average pooling, a linear head.

    BatchNorm follows ``batch_norm_stats`` as in :class:`~lightning_meta.models.Conv4`.  Dropout
    (default off) is random: gradient-based learners run it in loop mode (``batching="loop"``).

    Example::

        net = ResNet12(in_channels=3, out_features=5)
        net(torch.randn(10, 3, 84, 84)).shape               # torch.Size([10, 5])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: Optional[int] = 5,
        channels: Sequence[int] = (64, 160, 320, 640),
        batch_norm_stats: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        if batch_norm_stats not in BATCH_NORM_STATS:
            raise ValueError(f"ResNet12 batch_norm_stats={batch_norm_stats!r} is unknown; choose 'batch' or 'running'")
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"ResNet12 channels must be four positive widths, got {list(channels)}")
        widths = [in_channels, *channels]
        track = batch_norm_stats == "running"
        blocks = [ResidualBlock(widths[i], widths[i + 1], track, dropout) for i in range(4)]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = linear_head(channels[-1], out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
