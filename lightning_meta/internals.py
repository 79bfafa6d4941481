"""The one module that reads Lightning's or torch's internals; every other module goes through it.

Each function wraps one private name that has no public equivalent, says why it is needed, and is
the single place to update when a Lightning or torch release moves it.

Example::

    from lightning_meta.internals import inside_functorch_transform

    if inside_functorch_transform():   # under torch.func.grad / vmap / jvp
        ...
"""

from __future__ import annotations

import torch
from torch import nn


def inside_functorch_transform() -> bool:
    """Whether the caller runs inside a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ...).

    Why: the inner loop takes its gradients with ``torch.autograd.grad`` outside a transform (faster,
    and a first-order step records no backward pass) but must use ``torch.func.grad`` inside one, and
    some tensor queries (``is_contiguous(memory_format=...)``) are not implemented under ``vmap``.
    torch exposes no public test for this; ``torch._C._functorch.peek_interpreter_stack`` is the
    functorch interpreter stack, ``None`` when no transform is active.
    """
    return torch._C._functorch.peek_interpreter_stack() is not None


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm-style layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, the lazy
    variants, ``InstanceNorm*``): the layers that normalise with batch or running statistics.

    Why: they share only the private base ``torch.nn.modules.batchnorm._NormBase``; listing the public
    classes would miss lazy and future variants.
    """
    return isinstance(module, nn.modules.batchnorm._NormBase)


def is_convolution(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution (``Conv1d/2d/3d``, the transposed and lazy variants).

    Why: their common base is the private ``torch.nn.modules.conv._ConvNd``.
    """
    return isinstance(module, nn.modules.conv._ConvNd)
