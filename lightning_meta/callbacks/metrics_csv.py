"""``metrics.csv`` in the run folder: every logged metric, one row per logging call, kept across resumes.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a resumed run
would lose its history; and the rows a run logged after its last checkpoint would be logged twice
after resuming from it.  :class:`MetricsCSV` is a callback that owns a small logger: the logger
appends rows as they are logged, and the callback's checkpoint state records how many training
batches were done when the checkpoint was written, so resuming from that checkpoint first cuts the file
back to its rows.  A resumed run's ``metrics.csv`` is then the uninterrupted run's.

Example::

    metrics = MetricsCSV("runs/my_run")
    trainer = pl.Trainer(logger=[metrics.logger], callbacks=[metrics], inference_mode=False)
"""

from __future__ import annotations

import csv
import os
from argparse import Namespace
from typing import Any, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

FILENAME = "metrics.csv"


class CSVRows(Logger):
    """Appends logged metrics to ``<folder>/metrics.csv`` (columns: ``step``, then the metrics, sorted)."""

    def __init__(self, folder: Union[str, os.PathLike]):
        super().__init__()
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, FILENAME)
        self._header: Optional[list[str]] = None  # the file's header, once read

    @property
    def name(self) -> str:
        return "metrics_csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def root_dir(self) -> str:
        return self.folder

    def log_hyperparams(self, params: Union[dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        """Hyper-parameters are in the run's ``config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Union[Tensor, float]], step: Optional[int] = None) -> None:
        row = {"step": step, **{k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}}
        if self._header is None:
            rows = self.read()
            self._header = list(rows[0]) if rows else []
        if set(row) <= set(self._header):
            self._write([row], self._header, mode="a")
        else:  # new columns: rewrite the file under the wider header
            self._header = ["step"] + sorted((set(self._header) | set(row)) - {"step"})
            self._write(self.read() + [row], self._header, mode="w")

    def read(self) -> list[dict[str, str]]:
        """The rows written so far."""
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def keep_before(self, step: int) -> None:
        """Drop the rows logged at ``step`` or later (after the checkpoint being resumed)."""
        current = self.read()
        kept = [row for row in current if int(row["step"]) < step]
        if len(kept) < len(current):
            self._write(kept, list(current[0]), mode="w")
        self._header = None

    def _write(self, rows: list[dict[str, Any]], header: list[str], mode: str) -> None:
        os.makedirs(self.folder, exist_ok=True)
        with open(self.path, mode, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)


class MetricsCSV(pl.Callback):
    """Keeps ``metrics.csv`` of a run in step with its checkpoints (see the module docstring).

    Add ``metrics.logger`` to the Trainer's loggers and ``metrics`` to its callbacks (the CLI does both).
    Lightning logs a row under the number of training batches done before it (the row of a step is
    written after the step's checkpoint, the final test's under the count after the last step), so a
    checkpoint taken after ``B`` training batches owns exactly the rows with ``step < B``.
    """

    def __init__(self, folder: Union[str, os.PathLike]):
        self.logger = CSVRows(folder)
        self.batches = 0
        self._resumed = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])
        self._resumed = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores callback states for test/validate on a checkpoint too: cut only on resume
        if self._resumed and trainer.is_global_zero:
            self.logger.keep_before(self.batches)
        self._resumed = False
