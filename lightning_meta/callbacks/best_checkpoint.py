"""Model selection and resumable runs: ``best.ckpt`` by validation score beside an always-current ``last.ckpt``."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from lightning_meta.internals import (
    batches_trained,
    restarted_after_epoch_end,
    save_best_checkpoint,
    save_last_checkpoint,
    saved_at_this_step,
    set_logging_step,
)

# Lightning 2.6 warns that step checkpoints under manual optimisation hold the state *after* the
# optimizer step.  That is the state a resumed run must continue from (global_step counts it).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")

#: the checkpoint paths of ModelCheckpoint's state, remapped when a run folder is resumed from elsewhere
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (best value of the learner's ``selection_metric``: ``val/acc``, ``val/mse`` on regression) and ``last.ckpt``.

    The monitored metric is the learner's (``resolve_selection``) unless ``monitor`` is given.  Lightning writes
    checkpoints atomically (to a temporary file, then a rename).  On top of ``ModelCheckpoint``:

    * ``last.ckpt`` is written whenever training stops: at the batch where ``max_steps``, ``max_time``
      or a stop request (Ctrl-C through the CLI) ends it, holding the state of that step and the
      position in the epoch, and at the end of training.  (Lightning keeps ``last.ckpt`` from the
      last validation, and after a mid-epoch stop records the epoch as finished.)
    * paths are absolute, and a run folder resumed under another path (moved, or mounted
      elsewhere) keeps its best score and ``best.ckpt``;
    * a validation score that is not finite never becomes the best checkpoint (a warning says so);
    * resumed from an epoch's end, the loggers' steps continue as in an uninterrupted run.

    Not exact: resuming from a checkpoint of an epoch's end at which no validation ran
    (``check_val_every_n_epoch`` > 1, ``limit_val_batches: 0``).  Lightning then starts the resumed epoch
    by fetching one more batch; the shipped configs validate at every epoch's end.

    Other arguments are those of ``ModelCheckpoint`` (``dirpath``, ``every_n_train_steps``, ...).

    Example::

        trainer = pl.Trainer(callbacks=[BestCheckpoint(every_n_train_steps=500)], inference_mode=False)
    """

    def __init__(self, monitor: Optional[str] = None, mode: str = "max", **kwargs: Any):
        kwargs.setdefault("filename", "best")
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("save_top_k", 1)
        super().__init__(monitor=monitor or "val/acc", mode=mode, **kwargs)
        self.automatic_monitor = monitor is None
        self._stopped_mid_epoch = False
        self._repair_logging_step = False  # resumed from an epoch's end: set the loggers' step at the first batch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        resolve = getattr(pl_module, "resolve_selection", None)
        if self.automatic_monitor and resolve is not None:
            metric, mode = resolve(getattr(trainer, "datamodule", None))
            self.monitor, self.mode = f"val/{metric}", mode
            self.kth_value = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        super().setup(trainer, pl_module, stage)
        if self.dirpath is not None:
            self.dirpath = os.path.realpath(self.dirpath)

    # ------------------------------------------------------------------ resuming from an epoch's end
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._repair_logging_step = restarted_after_epoch_end(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Resumed from a checkpoint written at an epoch's end, Lightning's epoch loop finishes that epoch without a
        # batch yet counts one for the loggers, whether the checkpoint already counted the last batch (saved at
        # the epoch's end) or not (saved after its validation): rows would be logged a step late or early.
        if self._repair_logging_step:
            set_logging_step(trainer, batches_trained(trainer))
            self._repair_logging_step = False

    # ------------------------------------------------------------------ last.ckpt whenever training stops
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 <= trainer.max_steps <= trainer.global_step or trainer.should_stop:
            # the state of this step, mid-epoch: the epoch is not counted as done, the loader resumes after it
            self._stopped_mid_epoch = batch_idx + 1 < trainer.num_training_batches
            self.write_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if 0 <= trainer.max_steps <= trainer.global_step and not trainer.sanity_checking:
            if trainer.state.fn == "fit":
                # last.ckpt was written at this step (on_train_batch_end, before the validation), so Lightning
                # skips this validation's top-k save: its score still competes for best.ckpt
                save_best_checkpoint(self, trainer)
            self.write_last(trainer)  # a validation after the last step: keep its best score in last.ckpt

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only when no checkpoint holds this step yet.  After a mid-epoch stop the state at that batch is the
        # one to keep; after an epoch's last step the one written at that step or its validation is: by now
        # the fit loop has counted the epoch as completed, and Lightning's restart logic, which expects a
        # checkpoint from inside the epoch, would count it a second time and skip an epoch of data.
        if not self._stopped_mid_epoch and not saved_at_this_step(self, trainer):
            self.write_last(trainer)

    def write_last(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` now (every rank calls this; rank 0 writes)."""
        if self.save_last and not trainer.fast_dev_run and not trainer.sanity_checking:
            save_last_checkpoint(self, trainer)

    # ------------------------------------------------------------------ non-finite scores
    def check_monitor_top_k(self, trainer: pl.Trainer, current: Optional[Tensor] = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            rank_zero_warn(f"{self.monitor} = {float(current)} at step {trainer.global_step} is not finite: this "
                           "checkpoint is not kept as the best")
            return False
        return super().check_monitor_top_k(trainer, current)

    # ------------------------------------------------------------------ resuming a folder from another path
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) != os.path.realpath(self.dirpath):
            state_dict = relocate(state_dict, saved, self.dirpath)
        super().load_state_dict(state_dict)


def relocate(state_dict: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``ModelCheckpoint`` state with paths under ``old`` moved under ``new`` (files that exist there)."""
    def move(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(old))
        moved = os.path.join(new, relative)
        return moved if not relative.startswith("..") and os.path.exists(moved) else path

    state = dict(state_dict, dirpath=new)
    for key in PATH_KEYS:
        state[key] = move(state.get(key))
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {move(path): score for path, score in state["best_k_models"].items()}
    return state
