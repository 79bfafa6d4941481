"""Adaptation curves: accuracy (or MSE) on fixed episodes after 0, 1, ..., k inner steps; for the meta-RL
learners, the mean return before and after each inner step (RL²: per episode of the trial).

How much a gradient-based learner gains per inner step is the first thing to look at when MAML
trains badly (no gain: the inner learning rate; a gain that reverses: too many steps).  The
callback gets a curve from the learner in one of two ways:

* supervised learners: their query predictions after every step,
  ``adaptation_predictions(support_x, support_y, query_x, steps)`` (MAML, first-order MAML, MAML++,
  Meta-SGD and ANIL have it, see :meth:`lightning_meta.MAML.adaptation_predictions`), on a few fixed
  episodes evaluated on the side;
* learners whose own evaluation already measures every point of the curve (the meta-RL learners,
  where an extra evaluation would mean more rollouts): ``adaptation_curve_names()`` returns the x
  axis's name and ``{x: name}``, names of values that the learner's ``evaluate_tasks`` reports per
  task; the curve is their logged ``{stage}/{name}`` and ``{stage}/{name}_ci95`` (mean and 95% CI over
  all the stage's tasks), read after the learner logged them, so it equals the metrics.  See
  :meth:`lightning_meta.MAMLPolicyGradient.adaptation_curve_names`.

Learners with neither are skipped (metric learners have no inner steps).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_meta.callbacks.drawing import BLUE, ORANGE, Series, blend, line_chart, save_png
from lightning_meta.callbacks.fixed_episodes import STAGES, FixedEpisodeCallback, wandb_loggers
from lightning_meta.callbacks.run_folder import output_dir
from lightning_meta.metrics import episode_scores, mean_and_ci95
from lightning_meta.tasks import TaskBatch

COLUMNS = ("stage", "epoch", "global_step", "inner_step", "metric", "value", "ci95", "episodes")
#: how the charts name a metric (others by their own name, e.g. ``return``)
LABELS = {"acc": "accuracy", "mse": "MSE"}


@dataclass
class Curve:
    """One evaluation's curve: ``values[j]`` (mean over ``episodes`` episodes or tasks) and ``ci95[j]`` at
    ``steps[j]`` on the ``axis`` (inner steps; for RL², episodes of the trial)."""

    stage: str
    epoch: int
    global_step: int
    metric: str
    steps: list[int]
    values: list[float]
    ci95: list[float]
    episodes: int
    axis: str = "inner step"
    over: str = "fixed episodes"

    @property
    def name(self) -> str:
        return f"epoch {self.epoch}" if self.stage == "val" else f"test (epoch {self.epoch})"

    @property
    def label(self) -> str:
        return LABELS.get(self.metric, self.metric)


class AdaptationCurve(FixedEpisodeCallback):
    """Accuracy (classification) or MSE (regression) on fixed episodes after 0, 1, ..., k inner steps.

    At the end of each validation epoch (and of the test), on the first ``episodes`` episodes of
    the split (the same ones every time), adapted as the learner adapts at evaluation.  The extra
    evaluation runs in ``eval()`` mode with the RNG states restored after it and is not logged as
    ``val/acc``: training and model selection are unchanged (see
    :mod:`lightning_meta.callbacks.fixed_episodes`).  With ``episodes`` at least the split's
    episodes, step 0 equals ``val/acc_before`` and step ``test_inner_steps`` equals ``val/acc``.

    Writes, in the run folder (:func:`~lightning_meta.callbacks.run_folder.output_dir`):

    * ``<filename>.csv``, appended after every evaluation: one row per inner step, columns
      ``stage, epoch, global_step, inner_step, metric, value, ci95, episodes`` (``metric``: ``acc``
      or ``mse``; ``ci95``: half-width of the 95% CI over the episodes);
    * ``<filename>.png``, redrawn every time: the latest ``max_curves`` validation curves (older
      ones lighter, the newest with its 95% CI band) and the test curve.

    To W&B (each ``WandbLogger`` of the Trainer): ``{stage}/adaptation_curve``, a
    ``wandb.plot.line_series`` of the same curves.

    Learners with ``adaptation_curve_names()`` (:class:`~lightning_meta.MAMLPolicyGradient`,
    :class:`~lightning_meta.RL2`) are drawn from their logged evaluation values instead, over all the
    stage's tasks, after the learner logged them (``episodes`` and ``steps`` do not apply): metric
    ``return``; ``inner_step`` is the inner step (MAML: ``return_before`` at 0, ``return_step{k}`` at
    ``k``) or the episode of the trial (RL²: ``return_ep{k}`` at ``k``).

    Args:
        episodes: fixed episodes evaluated (bounds the cost: ``episodes x (steps + 1)`` query passes).
        steps: inner steps drawn (default: the learner's ``test_inner_steps``).
        stages: ``"val"`` and/or ``"test"``.
        every_n_epochs: at validation, only after every ``n``-th epoch.
        max_curves: validation curves kept in the PNG and the W&B chart (the latest ones).
        filename: file name stem of the CSV and the PNG.

    Example::

        trainer = pl.Trainer(callbacks=[AdaptationCurve(episodes=16)], logger=WandbLogger(),
                             inference_mode=False)
        trainer.fit(MAML(Conv4(1, 5), inner_steps=1, test_inner_steps=5), OmniglotDataModule("data"))
        # runs/.../adaptation_curve.csv, adaptation_curve.png; W&B: val/adaptation_curve

        trainer.fit(MAMLPolicyGradient(GaussianMLPPolicy(2, 2)), EnvTaskDataModule(Navigation2D()))
        # the curve of val/return_before, val/return_step1 (W&B: val/adaptation_curve)
    """

    def __init__(self, episodes: int = 16, steps: Optional[int] = None, stages: Sequence[str] = STAGES,
                 every_n_epochs: int = 1, max_curves: int = 10, filename: str = "adaptation_curve"):
        super().__init__(episodes, stages, every_n_epochs)
        if steps is not None and steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if max_curves < 1:
            raise ValueError(f"max_curves must be >= 1, got {max_curves}")
        self.steps = steps
        self.max_curves = max_curves
        self.filename = filename
        self.curves: list[Curve] = []

    # ------------------------------------------------------------------ evaluation
    def curve_predictions(self, pl_module: pl.LightningModule, batch: TaskBatch, steps: int) -> Tensor:
        """Query predictions ``[B, steps + 1, M, ...]`` of every episode of ``batch``, batched as the
        learner batches its evaluation (``torch.func.vmap`` in vmap mode, a loop otherwise)."""
        def one(support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
            return pl_module.adaptation_predictions(support_x, support_y, query_x, steps)

        if getattr(pl_module, "batching_mode", "loop") == "vmap":
            return torch.func.vmap(one, chunk_size=getattr(pl_module, "chunk_size", None))(
                batch.support_x, batch.support_y, batch.query_x)
        return torch.stack([one(task.support_x, task.support_y, task.query_x) for task in batch])

    def evaluate(self, pl_module: pl.LightningModule, batch: TaskBatch,
                 steps: int) -> tuple[str, list[float], list[float]]:
        """``(metric, means, ci95s)`` over the episodes of ``batch`` after 0..``steps`` inner steps."""
        predictions = self.curve_predictions(pl_module, batch, steps)
        metric = "mse" if batch.is_regression else "acc"
        means, cis = [], []
        for step in range(predictions.shape[1]):
            mean, ci = mean_and_ci95(episode_scores(predictions[:, step], batch.query_y)[metric].cpu())
            means.append(mean)
            cis.append(ci)
        return metric, means, cis

    def visualise(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, batch: TaskBatch) -> None:
        if not callable(getattr(pl_module, "adaptation_predictions", None)):
            self.say_once("no-method", f"{type(pl_module).__name__} has no adaptation_predictions (no inner steps to "
                                       "draw): skipped")
            return
        steps = self.steps if self.steps is not None else int(getattr(pl_module, "test_inner_steps"))
        metric, means, cis = self.evaluate(pl_module, batch, steps)
        self.add(trainer, Curve(stage, trainer.current_epoch, trainer.global_step, metric, list(range(len(means))),
                                means, cis, batch.num_tasks))

    # ------------------------------------------------------------------ curves the learner reports
    @staticmethod
    def reports_curve(pl_module: pl.LightningModule) -> bool:
        """Whether ``pl_module`` names its curve's evaluation values (``adaptation_curve_names()``)."""
        return callable(getattr(pl_module, "adaptation_curve_names", None))

    def reported_curve(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> Curve | None:
        """The curve of the values the learner names, as logged for ``stage`` (those logged; ``None``: none).
        Every rank calls it: the task count is gathered over the processes."""
        axis, names = pl_module.adaptation_curve_names()
        metrics = trainer.callback_metrics
        points = [(x, names[x]) for x in sorted(names) if f"{stage}/{names[x]}" in metrics]
        if not points:
            return None
        values = [float(metrics[f"{stage}/{name}"]) for _, name in points]
        cis = [float(metrics.get(f"{stage}/{name}_ci95", math.nan)) for _, name in points]
        return Curve(stage, trainer.current_epoch, trainer.global_step, pl_module.selection_metric,
                     [x for x, _ in points], values, cis, pl_module.results[stage].count(), axis, "tasks")

    def draw_reported(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """After the learner logged ``stage``'s values (``on_validation_end``/``on_test_end``): add its curve."""
        if stage not in self.stages or not self.reports_curve(pl_module):
            return
        curve = self.reported_curve(trainer, pl_module, stage)
        if curve is not None and trainer.is_global_zero:
            self.add(trainer, curve)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.reports_curve(pl_module):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.reports_curve(pl_module):
            super().on_test_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.draw_reported(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw_reported(trainer, pl_module, "test")

    # ------------------------------------------------------------------ outputs
    def add(self, trainer: pl.Trainer, curve: Curve) -> None:
        """Keep ``curve``, append it to the CSV, redraw the PNG and log the stage's chart to W&B."""
        self.curves.append(curve)
        folder = output_dir(trainer)
        self.append_csv(folder / f"{self.filename}.csv", curve)
        save_png(self.draw(), folder / f"{self.filename}.png")
        self.log_wandb(trainer, curve.stage)

    @staticmethod
    def append_csv(path, curve: Curve) -> None:
        """Append ``curve``'s rows to the CSV at ``path`` (header first when the file is new or empty)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(COLUMNS)
            for step, value, ci in zip(curve.steps, curve.values, curve.ci95):
                writer.writerow([curve.stage, curve.epoch, curve.global_step, step, curve.metric, repr(value),
                                 repr(ci), curve.episodes])

    def shown(self, stage: Optional[str] = None) -> list[Curve]:
        """The curves drawn: the latest ``max_curves`` validation curves and the latest test curve."""
        val = [c for c in self.curves if c.stage == "val"][-self.max_curves:]
        test = [c for c in self.curves if c.stage == "test"][-1:]
        curves = val + test
        return curves if stage is None else [c for c in curves if c.stage == stage]

    def draw(self):
        """The PNG: validation curves in blue (older lighter, the newest with its CI band), the test curve in orange."""
        curves = self.shown()
        val = [c for c in curves if c.stage == "val"]
        series = []
        for i, curve in enumerate(val):
            newest = i == len(val) - 1
            shade = BLUE if newest else blend(BLUE, amount=0.7 * (len(val) - 1 - i) / max(len(val) - 1, 1))
            series.append(Series(curve.steps, curve.values, curve.name, shade,
                                 band=curve.ci95 if newest else None, markers=newest, width=3 if newest else 2))
        for curve in curves:
            if curve.stage == "test":
                series.append(Series(curve.steps, curve.values, curve.name, ORANGE,
                                     band=curve.ci95, markers=True, width=3))
        last = curves[-1]
        title = f"{last.label} on {last.episodes} {last.over} by {last.axis} (95% CI)"
        return line_chart(series, title=title, x_label=last.axis, y_label=last.label, integer_x=True)

    def log_wandb(self, trainer: pl.Trainer, stage: str) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        import wandb

        curves = self.shown(stage)
        last = curves[-1]
        chart = wandb.plot.line_series(
            xs=[c.steps for c in curves], ys=[c.values for c in curves], keys=[c.name for c in curves],
            title=f"{stage}: {last.label} by {last.axis} ({last.episodes} {last.over})", xname=last.axis)
        for logger in loggers:
            logger.experiment.log({f"{stage}/adaptation_curve": chart, "trainer/global_step": trainer.global_step})
