"""Write the per-episode test results to a CSV file, for paired comparisons between methods."""

from __future__ import annotations

import csv
import os
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from lightning_meta.callbacks.run_folder import output_dir


class EpisodeResultsCSV(pl.Callback):
    """After ``test``, write one row per test episode (``episode``, ``acc``, ``loss``, ``acc_before`` ...).

    The file goes to ``path``, or ``test_episodes.csv`` in the invocation's folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`).  Episodes are a fixed seeded set, so two
    methods' files pair row by row.  Every rank gathers the rows (a collective); rank 0 writes.

    Example::

        trainer = pl.Trainer(callbacks=[EpisodeResultsCSV("results/maml_test.csv")], inference_mode=False)
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        results = getattr(pl_module, "results", None)
        if results is None or "test" not in results or not results["test"].names:
            return
        rows = results["test"].rows()
        if not trainer.is_global_zero:
            return
        path = self.path or os.path.join(output_dir(trainer), "test_episodes.csv")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = path + ".tmp"
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
        rank_zero_info(f"per-episode test results: {path}")
