"""Meta-RL trajectories on a few fixed 2D navigation tasks, before and after adaptation (no matplotlib).

The adaptation curve says how much the return grows with adaptation; the picture says how: before
adaptation a well meta-trained policy heads out towards where goals may lie, after it goes to the
task's goal (Finn et al. 2017, Fig. 4).  A policy that wanders off, or goes to the same place
before and after, shows at a glance.

Only :class:`~lightning_meta.envs.Navigation2D` (and its subclasses) is drawn: its observation is the
point's position and its task the goal, so the observations are the path.  Other families (bandits,
tabular MDPs, MuJoCo bodies) have no 2-D position to draw and are skipped without a word.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor

from lightning_meta.callbacks.drawing import (
    BLACK,
    PALETTE,
    Series,
    grid,
    line_chart,
    save_png,
)
from lightning_meta.callbacks.fixed_episodes import (
    EvaluationPlot,
    side_evaluation,
    wandb_loggers,
)
from lightning_meta.callbacks.run_folder import output_dir
from lightning_meta.data.env_tasks import EnvTaskDataModule
from lightning_meta.envs.navigation import Navigation2D
from lightning_meta.tasks import EnvTaskBatch

#: the half-width of the goals' square: the view always shows it
GOAL_SQUARE = 0.5


class TrajectoryPlot(EvaluationPlot):
    """Draw the paths of a few episodes on fixed 2D navigation tasks, before and after adaptation.

    At the end of each validation epoch (and of the test, if asked), rank 0 takes the split's first
    ``tasks`` tasks (the same ones every time, drawn from their addresses as the data module draws
    them) and asks the learner for their episodes before and after adaptation,
    ``adaptation_episodes(batch)`` (:meth:`~lightning_meta.MAMLPolicyGradient.adaptation_episodes`:
    before and after the test inner steps; :meth:`~lightning_meta.RL2.adaptation_episodes`: the first and
    the last episode of a trial): the rollouts its evaluation collects, with the evaluation's number of
    episodes per task, in ``eval()`` mode, the RNG states restored after, nothing logged as a metric.
    Learners without the method, and data that is not an
    :class:`~lightning_meta.data.EnvTaskDataModule` of :class:`~lightning_meta.envs.Navigation2D`, are
    skipped silently.

    The picture has one panel per task and phase: the first ``episodes`` episodes' paths from the start,
    one colour each, and the goal (black dot), before adaptation on the top row and after it on the bottom
    row, all panels at the same scale (at least the goals' square).  Written as
    ``trajectories_<stage>_<epoch>.png`` in the run folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`) and logged to each W&B logger with
    ``WandbLogger.log_image(key="<stage>/trajectories", ...)``.

    Args:
        tasks: fixed tasks drawn (the split's first ones).
        episodes: episodes drawn per task and phase (the first ones of those the evaluation collects).
        panel: size of one panel in pixels.
        stages: ``"val"`` and/or ``"test"``.
        every_n_epochs: at validation, only after every ``n``-th epoch.

    Example::

        trainer = pl.Trainer(callbacks=[TrajectoryPlot(tasks=4)], logger=WandbLogger(), inference_mode=False)
        trainer.fit(MAMLPolicyGradient(GaussianMLPPolicy(2, 2)), EnvTaskDataModule(Navigation2D()))
        # runs/.../trajectories_val_0.png, ...; W&B: val/trajectories
    """

    def __init__(self, tasks: int = 4, episodes: int = 3, panel: tuple[int, int] = (300, 300),
                 stages: Sequence[str] = ("val",), every_n_epochs: int = 1):
        super().__init__(stages, every_n_epochs, tasks=tasks, episodes=episodes)
        self.tasks, self.episodes, self.panel = tasks, episodes, tuple(panel)

    def fixed_tasks(self, trainer: pl.Trainer, stage: str) -> EnvTaskBatch | None:
        """The split's first ``tasks`` tasks with their keys, as its loader deals them (``None``: not 2D navigation)."""
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, EnvTaskDataModule) or not isinstance(datamodule.family, Navigation2D):
            return None
        count = min(self.tasks, datamodule.val_episodes if stage == "val" else datamodule.test_episodes)
        return datamodule.stream(stage, [list(range(count))]).batch(0)

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Collect, draw, write and log the fixed tasks' episodes of ``stage`` (rank 0)."""
        if stage not in self.stages or not trainer.is_global_zero:
            return
        batch = self.fixed_tasks(trainer, stage)
        if batch is None or not callable(getattr(pl_module, "adaptation_episodes", None)):
            return
        precision = trainer.precision_plugin   # inputs and autocast as in the learner's own evaluation steps
        batch = move_data_to_device(precision.convert_input(batch), pl_module.device)
        step_context = precision.val_step_context() if stage == "val" else precision.test_step_context()
        with side_evaluation(pl_module), step_context:
            observations, masks = pl_module.adaptation_episodes(batch)
        picture = self.draw(observations[:, :, :self.episodes].cpu(), masks[:, :, :self.episodes].cpu(),
                            batch.task["goal"].cpu(), batch.index.tolist(), stage)
        path = output_dir(trainer) / f"trajectories_{stage}_{trainer.current_epoch}.png"
        save_png(picture, path)
        self.written.append(str(path))
        caption = (f"{stage}, epoch {trainer.current_epoch}: {batch.num_tasks} tasks before (top) and after (bottom)"
                   " adaptation")
        for logger in wandb_loggers(trainer):
            logger.log_image(key=f"{stage}/trajectories", images=[picture], step=trainer.global_step, caption=[caption])

    def draw(self, observations: Tensor, masks: Tensor, goals: Tensor, index: list[int], stage: str) -> Image.Image:
        """The picture of positions ``observations [2, B, n, T, 2]`` (valid where ``masks [2, B, n, T]``),
        ``goals [B, 2]``: row 0 before adaptation, row 1 after, one column per task."""
        valid = masks.bool()
        extent = 1.1 * max(GOAL_SQUARE, float(observations[valid].abs().max()) if valid.any() else 0.0,
                           float(goals.abs().max()))
        view = (-extent, extent)
        panels = []
        for row, phase in enumerate(("before", "after")):
            for b, (goal, task) in enumerate(zip(goals.tolist(), index)):
                series = []
                for e in range(observations.shape[2]):
                    path = observations[row, b, e][valid[row, b, e]].double()
                    series.append(Series(path[:, 0].tolist(), path[:, 1].tolist(), f"episode {e + 1}",
                                         PALETTE[e % len(PALETTE)]))
                series.append(Series([goal[0]], [goal[1]], "goal", BLACK, style="points"))
                panels.append(line_chart(series, title=f"{stage} task {task}, {phase} adaptation", size=self.panel,
                                         x_range=view, y_range=view, legend=row == 0 and b == 0))
        return grid(panels, columns=goals.shape[0])
