"""Wide residual networks (Zagoruyko & Komodakis 2016): WRN-28-10, the backbone of LEO and S2M2."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_meta.models.backbone import Backbone, linear_head
from lightning_meta.models.conv4 import BATCH_NORM_STATS
from lightning_meta.models.norm import BatchNorm2d


class WideBlock(nn.Module):
    """A pre-activation block: BN-ReLU-conv3x3 (strided), BN-ReLU-dropout-conv3x3, added to the input (a 1x1
    convolution of the activated input where the shape changes), as in the paper's code."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float, track_running_stats: bool):
        super().__init__()
        self.pre = nn.Sequential(BatchNorm2d(in_channels, track_running_stats=track_running_stats), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            BatchNorm2d(out_channels, track_running_stats=track_running_stats), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.pre(x)
        skip = x if self.shortcut is None else self.shortcut(activated)
        return self.body(activated) + skip


class WideResNet(Backbone):
    """WRN-``depth``-``widen_factor``: a 3x3 convolution (16 channels), three groups of ``(depth - 4) / 6``
    pre-activation blocks (``16k``, ``32k``, ``64k`` channels for ``k = widen_factor``), BN-ReLU, global average
    pooling, a linear head.

    The default is WRN-28-10 (160-320-640 channels, 640 features, 36.5M parameters), as LEO (Rusu et al.
    2019) and S2M2 (Mangla et al. 2020) use it on 80x80 / 84x84 images: ``strides`` ``(1, 2, 2)`` of the
    three groups take 84x84 to 21x21 maps (32x32 to 8x8).  ``dropout`` between the convolutions of a
    block (the paper: 0.3; default off) is random: gradient-based learners run it in loop mode
    (``batching="loop"``).  BatchNorm follows ``batch_norm_stats`` as in
    :class:`~lightning_meta.models.Conv4` (``"batch"`` for MAML-style learners, ``"running"`` for metric
    learners).  ``depth=10, widen_factor=1`` is a tiny network of the same structure (tests).

    Example::

        net = WideResNet(in_channels=3, out_features=None, batch_norm_stats="running")   # WRN-28-10 embedding
        net(torch.randn(2, 3, 80, 80)).shape                # torch.Size([2, 640])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: Optional[int] = 5,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        strides: Sequence[int] = (1, 2, 2),
        batch_norm_stats: str = "batch",
    ):
        super().__init__()
        if batch_norm_stats not in BATCH_NORM_STATS:
            raise ValueError(f"WideResNet batch_norm_stats={batch_norm_stats!r} is unknown; choose 'batch' or"
                             " 'running'")
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth={depth} is invalid: it must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
        if widen_factor < 1 or in_channels < 1:
            raise ValueError("WideResNet widen_factor and in_channels must be positive")
        if not 0 <= dropout < 1:
            raise ValueError(f"WideResNet dropout={dropout} must be in [0, 1)")
        if len(strides) != 3 or min(strides) < 1:
            raise ValueError(f"WideResNet strides must be three positive strides (one per group), got {list(strides)}")
        track = batch_norm_stats == "running"
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        for group in range(3):
            layers.append(nn.Sequential(*[
                WideBlock(widths[group] if i == 0 else widths[group + 1], widths[group + 1],
                          strides[group] if i == 0 else 1, dropout, track)
                for i in range(blocks)]))
        layers += [BatchNorm2d(widths[3], track_running_stats=track), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = linear_head(widths[3], out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
