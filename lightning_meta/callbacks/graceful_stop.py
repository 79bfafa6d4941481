"""``GracefulStop``: training ends after a whole step on Ctrl-C or when its time is up, resumable exactly.

Lightning's ``max_time`` and a ``KeyboardInterrupt`` both end training in ways a resumed run cannot
reproduce: the interrupt can land anywhere in a step, and ``max_time`` sets ``trainer.should_stop``,
which makes Lightning run an extra validation (and possibly a new ``best.ckpt``) that the
uninterrupted run never had.  This callback instead ends training the way ``max_steps`` does, at the
end of the current step: every process agrees (one small all-reduce per step when there are
several), the step becomes the last one, a validation runs only where the uninterrupted run would
have run it, and :class:`~lightning_meta.callbacks.BestCheckpoint` writes ``last.ckpt`` of that
state.  The first SIGINT asks for the stop; a second one interrupts at once, as usual.
``max_time`` counts training time over resumes (as Lightning's does).  The CLI adds it to ``fit`` and
hands it ``trainer.max_time``.

Example::

    stop = GracefulStop(max_time="00:01:00:00")
    trainer = pl.Trainer(callbacks=[stop, BestCheckpoint()], inference_mode=False)
    trainer.fit(model, data)
    stop.stopped, stop.by_user    # whether Ctrl-C or max_time ended training, and whether Ctrl-C did
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from typing import Any, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lightning_meta.internals import end_training_after_this_step

Duration = Union[str, timedelta, dict[str, int], None]


def as_timedelta(duration: Duration) -> Optional[timedelta]:
    """``"DD:HH:MM:SS"``, a ``timedelta`` or ``{"hours": 1, ...}`` (Lightning's forms of ``max_time``)."""
    if duration is None or isinstance(duration, timedelta):
        return duration
    if isinstance(duration, dict):
        return timedelta(**duration)
    days, hours, minutes, seconds = (int(part) for part in str(duration).strip().split(":"))
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class GracefulStop(pl.Callback):
    """Ends training after the current step on Ctrl-C or after ``max_time`` (see the module docstring)."""

    def __init__(self, max_time: Duration = None) -> None:
        limit = as_timedelta(max_time)
        self.max_seconds = None if limit is None else limit.total_seconds()
        self.elapsed = 0.0  # training seconds of earlier segments of the run (restored on resume)
        self.requested = False  # a SIGINT reached this process
        self.stopped = False
        self.by_user = False  # training was stopped by a Ctrl-C (on any process)
        self._started: Optional[float] = None
        self._previous: Optional[Any] = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = self.stopped = self.by_user = False
        self._started = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        rank_zero_warn("Ctrl-C: stopping after this step and writing last.ckpt; press Ctrl-C again to stop at once")
        self.requested = True
        self._restore()

    def training_seconds(self) -> float:
        return self.elapsed + (time.monotonic() - self._started if self._started is not None else 0.0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        out_of_time = self.max_seconds is not None and self.training_seconds() >= self.max_seconds
        by_user = self.requested
        if trainer.world_size > 1:  # every process must stop at the same step, for the same reason
            by_user = trainer.strategy.reduce_boolean_decision(by_user, all=False)
            out_of_time = trainer.strategy.reduce_boolean_decision(out_of_time, all=False)
        if (by_user or out_of_time) and not self.stopped:
            self.stopped, self.by_user = True, by_user
            end_training_after_this_step(trainer)
            reason = "Ctrl-C" if by_user else f"max_time ({self.max_seconds:.0f} s of training)"
            rank_zero_info(f"{reason}: training stops after step {trainer.global_step}")

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.training_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.elapsed, self._started = self.training_seconds(), None
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
