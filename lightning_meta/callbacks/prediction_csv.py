"""Write the class predictions of ``predict`` to a CSV file (LightningCLI discards what ``predict`` returns)."""

from __future__ import annotations

import csv
import os
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from lightning_meta.callbacks.run_folder import output_dir
from lightning_meta.data.prediction import prediction_rows


class PredictionCSV(BasePredictionWriter):
    """After ``predict``, write one row per query image: ``query``, ``prediction``, ``p_<class>`` ...

    Columns: ``query`` (the query file, relative to ``data.init_args.query_dir``), ``prediction``
    (the name of the most probable class: its folder name in ``support_dir``), then one
    ``p_<class name>`` column per support class, in sorted class order, holding the probabilities
    (each row sums to 1).  When the predict loader yields several tasks (not the CLI's one), a
    ``task`` column comes first.  Batches without names (a plain :class:`~lightning_meta.tasks.TaskBatch`)
    name classes ``0..N-1`` and queries by their position.

    The file goes to ``path``, or ``predictions.csv`` in the invocation's folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`); the path is printed.  ``python -m lightning_meta predict`` adds this callback unless one is configured.

    Example::

        trainer = pl.Trainer(callbacks=[PredictionCSV("predictions.csv")], inference_mode=False)
        trainer.predict(model, datamodule=OmniglotDataModule("data", support_dir="s", query_dir="q"))
    """

    def __init__(self, path: Optional[str] = None):
        super().__init__(write_interval="batch")
        self.path = path
        self.tasks: list[list[dict[str, Any]]] = []
        self.written: Optional[str] = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tasks = []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Tensor,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        names = getattr(batch, "class_names", None)
        files = getattr(batch, "query_files", None)
        for b, probabilities in enumerate(prediction):
            classes = names[b] if names is not None else [str(c) for c in range(probabilities.shape[-1])]
            queries = files[b] if files is not None else [str(m) for m in range(probabilities.shape[0])]
            self.tasks.append(prediction_rows(probabilities, classes, queries))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.tasks or not trainer.is_global_zero:
            return
        if len(self.tasks) == 1:
            rows = self.tasks[0]
        else:
            rows = [{"task": t, **row} for t, task_rows in enumerate(self.tasks) for row in task_rows]
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        path = self.path or os.path.join(output_dir(trainer), "predictions.csv")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = path + ".tmp"
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
        self.written = os.path.abspath(path)
        rank_zero_info(f"predictions of {len(rows)} queries: {self.written}")
