"""Model selection: keep the checkpoint with the best validation score beside the last one."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

# Lightning 2.6 warns that step checkpoints under manual optimisation hold the state *after* the
# optimizer step.  That is the state a resumed run must continue from (global_step counts it).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (best ``val/acc``; ``val/mse`` for regression data) and ``last.ckpt``.

    The monitored metric follows the data module unless ``monitor`` is given.  Lightning writes
    checkpoints atomically (to a temporary file, then a rename).  Other arguments are those of
    ``ModelCheckpoint`` (``dirpath``, ``every_n_train_steps``, ...).

    Example::

        trainer = pl.Trainer(callbacks=[BestCheckpoint(every_n_train_steps=500)], inference_mode=False)
    """

    def __init__(self, monitor: Optional[str] = None, mode: str = "max", **kwargs: Any):
        kwargs.setdefault("filename", "best")
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("save_top_k", 1)
        super().__init__(monitor=monitor or "val/acc", mode=mode, **kwargs)
        self.automatic_monitor = monitor is None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.automatic_monitor:
            regression = bool(getattr(trainer.datamodule, "is_regression", False))
            self.monitor = "val/mse" if regression else "val/acc"
            self.mode = "min" if regression else "max"
            self.kth_value = torch.tensor(float("inf") if regression else float("-inf"))
        super().setup(trainer, pl_module, stage)
