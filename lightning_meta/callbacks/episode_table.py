"""The per-episode test results as a W&B table, for sorting, filtering and pairing runs in the browser.

The CSV copy of the same rows is :class:`~lightning_meta.callbacks.EpisodeResultsCSV`'s
``test_episodes.csv``; this callback only puts them into W&B.
"""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_meta.callbacks.fixed_episodes import wandb_loggers


class EpisodeTable(pl.Callback):
    """After ``test``, log one row per test episode to W&B as a table (``key``, default ``test/episodes``).

    Rows are :meth:`EpisodeResults.rows() <lightning_meta.metrics.EpisodeResults.rows>` of the learner's
    ``results["test"]``: ``episode``, then every per-episode value (``acc``, ``loss``,
    ``acc_before``, ... ; ``mse`` for regression), the episodes of all processes sorted by index.
    Gathering the rows is a collective: every rank reaches it (when the Trainer has a W&B logger, which
    every rank has or none has); rank 0 logs with ``WandbLogger.log_table``.  Without a W&B logger the
    callback does nothing.

    Args:
        key: the W&B key of the table.

    Example::

        trainer = pl.Trainer(callbacks=[EpisodeTable()], logger=WandbLogger(), inference_mode=False)
        trainer.test(model, datamodule=data)      # W&B: test/episodes, one row per test episode
    """

    def __init__(self, key: str = "test/episodes"):
        self.key = key
        self.logged_rows = 0

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        results = getattr(pl_module, "results", None)
        if not loggers or results is None or "test" not in results or not results["test"].names:
            return
        rows = results["test"].rows()   # a collective under DDP: every rank gets here
        if not trainer.is_global_zero or not rows:
            return
        columns = list(rows[0])
        data = [[row[name] for name in columns] for row in rows]
        for logger in loggers:
            logger.log_table(key=self.key, columns=columns, data=data, step=trainer.global_step)
        self.logged_rows = len(data)
