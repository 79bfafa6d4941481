"""``MetaProgressBar``: Lightning's tqdm bar without the logger version, counting outer steps."""

from __future__ import annotations

from typing import Any, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class MetaProgressBar(TQDMProgressBar):
    """The tqdm progress bar, minus ``v_num`` (the run id is in the run folder's name and W&B).

    Its rate counts meta-batches (``steps/s``); ``train/tasks_per_s`` next to it counts tasks.

    Example::

        trainer = pl.Trainer(callbacks=[MetaProgressBar()], inference_mode=False)
    """

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Union[int, str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def init_train_tqdm(self) -> Any:
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar
