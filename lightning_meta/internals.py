"""The one module that reads Lightning's or torch's internals; every other module goes through it.

Each function wraps one private name that has no public equivalent, says why it is needed, and is
the single place to update when a Lightning, torch, W&B or numpy release moves it.  Beyond these,
two subclasses extend their parent through its protected hooks, as Lightning documents subclassing:
``MetaCLI`` overrides ``LightningCLI._add_configure_optimizers_method_to_model`` (``--optimizer`` per
parameter group) and ``BestCheckpoint`` is a ``ModelCheckpoint``.

Example::

    from lightning_meta.internals import inside_functorch_transform

    if inside_functorch_transform():   # under torch.func.grad / vmap / jvp
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import WandbLogger


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


def attached_trainer(module: "pl.LightningModule") -> Optional["pl.Trainer"]:
    """The Trainer ``module`` is attached to, or ``None`` (a plain ``load_from_checkpoint``, a Python call).

    Why: ``LightningModule.trainer`` raises when no Trainer is attached and Lightning has no public
    "is attached" query; the private ``_trainer`` attribute is ``None`` then.
    """
    return module._trainer


def end_training_after_this_step(trainer: "pl.Trainer") -> None:
    """Make the fit loop end after the current step exactly as ``max_steps`` would: the step's checkpoint
    and no extra validation run (``trainer.should_stop`` runs a validation at the epoch's end first).

    Why: the loop's ``max_steps`` lives on ``trainer.fit_loop.epoch_loop``, which Lightning does not expose
    as settable state.
    """
    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU; without it bf16 convolutions use ``_slow_conv2d``.

    Why: torch exposes the check only as the private op ``torch.ops.mkldnn._is_mkldnn_bf16_supported``.
    """
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def save_best_checkpoint(callback: "ModelCheckpoint", trainer: "pl.Trainer") -> None:
    """Let a ``ModelCheckpoint`` consider the current metrics for its top-k (``best.ckpt``) now.

    Why: :class:`~lightning_meta.callbacks.BestCheckpoint` must save after the validation that ends a run at
    ``max_steps``, which Lightning's own hook skips once ``last.ckpt`` was written at that step; the
    top-k save exists only as ``ModelCheckpoint._save_topk_checkpoint``.
    """
    callback._save_topk_checkpoint(trainer, callback._monitor_candidates(trainer))


def save_last_checkpoint(callback: "ModelCheckpoint", trainer: "pl.Trainer") -> None:
    """Write a ``ModelCheckpoint``'s ``last.ckpt`` now (whenever training stops, not only after validation).

    Why: only ``ModelCheckpoint._save_last_checkpoint`` writes it, atomically and with its bookkeeping.
    """
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def saved_at_this_step(callback: "ModelCheckpoint", trainer: "pl.Trainer") -> bool:
    """Whether a ``ModelCheckpoint`` has written a checkpoint at the trainer's current global step.

    Why: the callback records it only in the private ``_last_global_step_saved`` (its own saves at
    validation and epoch ends as well as ours).
    """
    return callback._last_global_step_saved == trainer.global_step


def restarted_after_epoch_end(trainer: "pl.Trainer") -> bool:
    """Whether this fit resumed from a checkpoint written after an epoch's last batch (at its end).

    Why: Lightning records the restart stage only on its private training-epoch loop.
    """
    return trainer.fit_loop.epoch_loop.restarted_on_last


def batches_trained(trainer: "pl.Trainer") -> int:
    """Training batches completed in this run so far, over all epochs and resumes.

    Why: Lightning counts them on its private training-epoch loop's ``batch_progress``.
    """
    return trainer.fit_loop.epoch_loop.batch_progress.total.completed


def set_logging_step(trainer: "pl.Trainer", step: int) -> None:
    """Set the step the loggers write the next training row at.

    Why: Lightning keeps it as ``_batches_that_stepped`` on its private training-epoch loop.  Resumed from an
    epoch's end, that loop counts one batch that never ran (``advance`` returns early to skip the validation
    already done, ``on_advance_end`` still increments) on top of a count that the checkpoint took either
    before (after the validation) or after (at the epoch's end) the last batch was counted, so
    :class:`~lightning_meta.callbacks.BestCheckpoint` sets it to :func:`batches_trained` before the first batch.
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def drop_deprecated_wandb_setting(logger: "WandbLogger") -> None:
    """Remove ``anonymous=None`` from a ``WandbLogger``'s pending ``wandb.init`` arguments.

    Why: LightningCLI passes every ``WandbLogger`` argument, ``anonymous`` included, and W&B warns on each
    run that the setting is deprecated; the arguments live in the private ``_wandb_init`` until the run
    starts.
    """
    if logger._wandb_init.get("anonymous", 0) is None:
        del logger._wandb_init["anonymous"]


def npy_header_v3(file: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, Any]:
    """``(shape, fortran_order, dtype)`` of a version 3.0 ``.npy`` header (utf-8 field names).

    Why: numpy reads versions 1.0 and 2.0 publicly (``read_array_header_1_0/2_0``), 3.0 only through
    ``numpy.lib.format._read_array_header``.
    """
    return np.lib.format._read_array_header(file, version)
