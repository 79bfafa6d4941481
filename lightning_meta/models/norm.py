"""BatchNorm for adapted backbones (computed in float32 under mixed precision), and the checks and evaluation
mode every learner uses on BatchNorm layers."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

from lightning_meta.errors import ConfigurationError
from lightning_meta.internals import is_norm_layer


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


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in ``eval()`` mode for the block (running BatchNorm statistics, no dropout), then restored.

    Example::

        with evaluation_mode(learner.embedding) as embedding:
            features = embedding(images)        # running statistics never move here
    """
    training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(training)


def require_norm_statistics(module: nn.Module, running: bool, field: str, why: str) -> None:
    """Refuse BatchNorm layers of ``module`` whose statistics are not of the kind a learner needs.

    ``running=True``: every BatchNorm must keep running statistics (learners that evaluate in ``eval()``
    mode, so an episode's predictions never depend on the other images).  ``running=False``: none may
    (learners that adapt the module in an inner loop, which would update the statistics in place and mix
    them across tasks).  ``field`` names the module's argument, ``why`` the learner's reason.

    Example::

        require_norm_statistics(backbone, running=False, field="model.init_args.backbone", why="MAML adapts it")
    """
    for name, layer in module.named_modules():
        if is_norm_layer(layer) and layer.track_running_stats != running:
            wanted = "running" if running else "batch"
            kept = "keeps no running statistics" if running else "keeps running statistics"
            raise ConfigurationError(
                f"{field}: BatchNorm layer {name!r} {kept}; {why}: set {field}.init_args.batch_norm_stats: {wanted}")
