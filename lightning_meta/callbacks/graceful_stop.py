"""``GracefulStop``: the first Ctrl-C ends training after the current step, with ``last.ckpt`` written.

A ``KeyboardInterrupt`` can land anywhere in a step (after the optimizer step but before Lightning
counts the batch, say), so a checkpoint written then may not resume exactly.  This callback turns
the first SIGINT into a request: at the end of the current training step every process agrees to
stop (one small all-reduce per step when there are several), ``trainer.should_stop`` is set and
:class:`~lightning_meta.callbacks.BestCheckpoint` writes ``last.ckpt`` of that step.  A second
Ctrl-C interrupts at once, as usual.  The CLI adds it during ``fit``.

Example::

    stop = GracefulStop()
    trainer = pl.Trainer(callbacks=[stop, BestCheckpoint()], inference_mode=False)
    trainer.fit(model, data)
    stop.stopped    # True when a Ctrl-C ended training
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn


class GracefulStop(pl.Callback):
    """Turns the first SIGINT during training into a stop after the current step (see the module docstring)."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped = False
        self._previous: Optional[Any] = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = self.stopped = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        rank_zero_warn("Ctrl-C: stopping after this step and writing last.ckpt; press Ctrl-C again to stop at once")
        self.requested = True
        self._restore()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        requested = self.requested
        if trainer.world_size > 1:  # every process must stop at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            self.stopped = True
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
