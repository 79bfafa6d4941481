"""Regression tasks drawn before and after adaptation: the true function, the support points, the predictions.

For 1-D regression (sinusoids, lines) the picture of Finn et al. (2017, Fig. 2) says at a glance
whether the meta-learned initialisation is a sensible prior (the curve before adaptation) and how
far a few steps on ``shots`` points take it (the curve after).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_meta.callbacks.drawing import BLACK, BLUE, GREY, RED, Series, grid, line_chart, save_png
from lightning_meta.callbacks.fixed_episodes import STAGES, FixedEpisodeCallback, addresses_episodes, wandb_loggers
from lightning_meta.callbacks.run_folder import output_dir
from lightning_meta.data.episodes import episode_generator
from lightning_meta.tasks import TaskBatch


class RegressionPlot(FixedEpisodeCallback):
    """Draw a few fixed 1-D regression tasks before and after adaptation.

    At the end of each validation epoch (and of the test), for each of the first ``episodes``
    episodes of the split (the same ones every time): the true function (when the data module's
    task family can redraw it, as sinusoids and lines can; else the query points), the support
    points, and the learner's prediction on a dense grid of ``points`` inputs before adaptation
    (dashed; learners that report none have no dashed curve) and after it, as
    :meth:`~lightning_meta.algorithms.base.MetaLearner.evaluate_batch` predicts at evaluation (the
    grid is the query set).  ``eval()`` mode, RNG states restored after, nothing logged as a metric.
    Tasks with inputs or targets of more than one dimension, and classification, are skipped
    without error.

    Writes ``regression_<stage>_<epoch>.png`` (one panel per task) in the run folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`) and logs it to each W&B logger with
    ``WandbLogger.log_image(key="<stage>/regression_tasks", ...)``.

    Args:
        episodes: tasks drawn (the split's first ones).
        points: grid points of the predicted curves.
        columns: panels per row.
        panel: size of one panel in pixels.
        stages: ``"val"`` and/or ``"test"``.
        every_n_epochs: at validation, only after every ``n``-th epoch.

    Example::

        trainer = pl.Trainer(callbacks=[RegressionPlot(episodes=4)], logger=WandbLogger(), inference_mode=False)
        trainer.fit(MAML(MLP(1, 1, (40, 40)), inner_lr=0.01, test_inner_steps=10), SinusoidDataModule())
        # runs/.../regression_val_0.png, ...; W&B: val/regression_tasks
    """

    def __init__(self, episodes: int = 4, points: int = 200, columns: int = 2, panel: tuple[int, int] = (420, 300),
                 stages: Sequence[str] = STAGES, every_n_epochs: int = 1):
        super().__init__(episodes, stages, every_n_epochs)
        if points < 2:
            raise ValueError(f"points must be >= 2, got {points}")
        if columns < 1:
            raise ValueError(f"columns must be >= 1, got {columns}")
        self.points, self.columns, self.panel = points, columns, tuple(panel)
        self.written: list[str] = []

    def true_function(self, trainer: pl.Trainer, stage: str, episode: int) -> Optional[Callable[[Tensor], Tensor]]:
        """The function of ``episode`` of the split, redrawn from its seeded address when the data module's
        task family has ``function(generator)`` (its first draw, as
        :class:`~lightning_meta.data.regression.FunctionTasks` samples), else ``None``."""
        if episode < 0 or not addresses_episodes(trainer, stage):
            return None
        datamodule = trainer.datamodule
        source = datamodule.source(stage)
        if not callable(getattr(source, "function", None)):
            return None
        return source.function(episode_generator(datamodule.seed, stage, episode))

    def x_range(self, trainer: pl.Trainer, stage: str, batch: TaskBatch) -> tuple[float, float]:
        """The data module's input range (``x_range`` of its task family), else that of the episodes' points."""
        if addresses_episodes(trainer, stage):
            bounds = getattr(trainer.datamodule.source(stage), "x_range", None)
            if bounds is not None:
                return float(bounds[0]), float(bounds[1])
        xs = torch.cat([batch.support_x.flatten(), batch.query_x.flatten()])
        return float(xs.min()), float(xs.max())

    def visualise(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, batch: TaskBatch) -> None:
        one_d = batch.support_x.dim() == 3 and batch.support_x.shape[-1] == 1 and batch.support_y.dim() == 3 \
            and batch.support_y.shape[-1] == 1
        if not batch.is_regression or not one_d:
            self.say_once("not-1d", "the episodes are not 1-D regression: no plot")
            return
        if not callable(getattr(pl_module, "evaluate_batch", None)):
            self.say_once("no-evaluate", f"{type(pl_module).__name__} has no evaluate_batch: no plot")
            return
        low, high = self.x_range(trainer, stage, batch)
        device = batch.support_x.device
        xs = torch.linspace(low, high, self.points, device=device, dtype=batch.support_x.dtype).unsqueeze(-1)
        tasks = batch.num_tasks
        on_grid = TaskBatch(batch.support_x, batch.support_y, xs.expand(tasks, -1, -1).contiguous(),
                            torch.zeros(tasks, self.points, 1, device=device, dtype=batch.support_y.dtype),
                            index=batch.index)
        after, before = pl_module.evaluate_batch(on_grid)
        panels = []
        grid_x = xs.squeeze(-1).cpu().tolist()
        for b in range(tasks):
            episode = int(batch.index[b]) if batch.index is not None else b
            series = []
            function = self.true_function(trainer, stage, episode)
            if function is not None:
                series.append(Series(grid_x, function(xs.cpu()).squeeze(-1).tolist(), "true", BLACK))
            else:
                order = batch.query_x[b, :, 0].argsort()
                series.append(Series(batch.query_x[b, order, 0].tolist(), batch.query_y[b, order, 0].tolist(),
                                     "query points", GREY, style="points"))
            if before is not None:
                series.append(Series(grid_x, before[b, :, 0].float().cpu().tolist(), "before", GREY, style="dashed"))
            series.append(Series(grid_x, after[b, :, 0].float().cpu().tolist(), "after", BLUE))
            series.append(Series(batch.support_x[b, :, 0].tolist(), batch.support_y[b, :, 0].tolist(), "support",
                                 RED, style="points"))
            panels.append(line_chart(series, title=f"{stage} episode {episode}", size=self.panel, legend=b == 0))
        picture = grid(panels, min(self.columns, len(panels)))
        path = output_dir(trainer) / f"regression_{stage}_{trainer.current_epoch}.png"
        save_png(picture, path)
        self.written.append(str(path))
        caption = f"{stage}, epoch {trainer.current_epoch}: {tasks} tasks before (dashed) and after adaptation"
        for logger in wandb_loggers(trainer):
            logger.log_image(key=f"{stage}/regression_tasks", images=[picture], step=trainer.global_step,
                             caption=[caption])
