"""BatchNorm for adapted backbones: batch statistics, computed in float32 under mixed precision."""

from __future__ import annotations

from torch import Tensor, nn


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalises in its parameters' dtype when autocast hands it half inputs.

    Normalising in float32 is what mixed-precision training recommends anyway, and it sidesteps a
    torch 2.14 bug: under ``vmap`` + autocast, the backward of ``batch_norm`` with a bfloat16/float16
    input and float32 weight fails with "expected scalar type BFloat16 but found Float", which
    breaks vmapped inner loops through convolutional backbones.

    Example::

        norm = BatchNorm2d(64, track_running_stats=False)   # MAML: statistics of each batch
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is not None and x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        return super().forward(x)
