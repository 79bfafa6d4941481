"""A few fixed evaluation episodes, looked at again at the end of each evaluation without changing training.

The visual callbacks (:class:`~lightning_meta.callbacks.AdaptationCurve`,
:class:`~lightning_meta.callbacks.EpisodeGallery`, :class:`~lightning_meta.callbacks.RegressionPlot`)
share :class:`FixedEpisodeCallback`: at the end of a validation epoch (not the sanity check) and
of a test, rank 0 takes the first ``episodes`` episodes of the split, the same ones every time, and
hands them to :meth:`FixedEpisodeCallback.visualise` inside :func:`side_evaluation`: the learner in
``eval()`` mode (its previous mode restored after), gradients enabled outside inference mode (so
MAML-style learners can adapt), and every global RNG (torch CPU and CUDA, Python, NumPy) saved and
restored, so the run trains exactly as it would without the callback.  Nothing is logged through
``LightningModule.log``: ``val/acc`` and model selection never see these episodes.

Multi-process runs: every rank runs the hooks, but only rank 0 evaluates, draws, writes files and logs
to W&B.  The side evaluation calls the learner's own methods (not the DDP wrapper) and reaches no
collective, so the other ranks need not wait for it; the files go to
:func:`~lightning_meta.callbacks.run_folder.output_dir` (never ``trainer.log_dir``, a collective).

Where the episodes come from: an :class:`~lightning_meta.data.EpisodicDataModule` draws episode
``i`` of a split from its seeded address, so the episodes are the split's first ``episodes`` whatever
the number of processes.  With other data (loaders passed to ``fit`` directly) rank 0 keeps the first
tasks of the stage's first batches instead; batches that are not a
:class:`~lightning_meta.tasks.TaskBatch` (DANN's) give no episodes and the callback does nothing.

Example (a callback of one's own)::

    class QueryLossAfterAdaptation(FixedEpisodeCallback):
        def visualise(self, trainer, pl_module, stage, batch):
            after, _ = pl_module.evaluate_batch(batch)
            print(stage, pl_module.loss(after.flatten(0, 1), batch.query_y.flatten(0, 1)).item())

    trainer = pl.Trainer(callbacks=[QueryLossAfterAdaptation(episodes=4)], inference_mode=False)
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import EpisodeStream
from lightning_meta.tasks import TaskBatch

STAGES = ("val", "test")


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The Trainer's W&B loggers (none: the callbacks write files only)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def addresses_episodes(trainer: pl.Trainer, split: str) -> bool:
    """Whether the Trainer's data module deals the episodes of ``split`` from their seeded addresses
    (an :class:`~lightning_meta.data.EpisodicDataModule` whose loader of that split is the base one)."""
    datamodule = getattr(trainer, "datamodule", None)
    method = "val_dataloader" if split == "val" else "test_dataloader"
    return isinstance(datamodule, EpisodicDataModule) and \
        getattr(type(datamodule), method) is getattr(EpisodicDataModule, method)


def datamodule_episodes(trainer: pl.Trainer, split: str, count: int) -> Optional[TaskBatch]:
    """Episodes ``0 .. count-1`` of ``split`` (at most the split's number of episodes) drawn from their
    seeded addresses exactly as the data module's loader draws them, or ``None`` when the data module
    does not deal episodes that way.  Per-episode generators: no global RNG is touched."""
    if not addresses_episodes(trainer, split):
        return None
    datamodule = trainer.datamodule
    available = datamodule.val_episodes if split == "val" else datamodule.test_episodes
    plan = [list(range(min(count, available)))]
    stream = EpisodeStream(datamodule.source(split), split, plan, *datamodule.setting(split), seed=datamodule.seed)
    return stream.batch(0)


def batch_to(batch: TaskBatch, device: torch.device) -> TaskBatch:
    """The four tensors and the index of ``batch`` on ``device`` (a plain :class:`TaskBatch`)."""
    index = None if batch.index is None else batch.index.to(device)
    return TaskBatch(*(t.to(device) for t in batch.tensors()), index=index)


@contextlib.contextmanager
def side_evaluation(pl_module: pl.LightningModule) -> Iterator[None]:
    """Evaluate ``pl_module`` on the side without changing the run.

    ``eval()`` mode (the previous mode restored after), gradients on and inference mode off (the
    tensors made inside are ordinary tensors), and the global RNG states of torch (CPU and the
    module's CUDA device), Python and NumPy restored on exit.
    """
    device = pl_module.device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    training = pl_module.training
    try:
        with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.enable_grad():
            pl_module.eval()
            yield
    finally:
        pl_module.train(training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def check_settings(stages: Sequence[str], **counts: int) -> tuple[str, ...]:
    """Refuse a visual callback's counts below 1 and unknown stages; the stages as a tuple."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"stages {unknown} are unknown: choose among {', '.join(STAGES)}")
    return tuple(stages)


class EvaluationPlot(pl.Callback):
    """Base of the callbacks that draw after each ``every_n_epochs``-th validation epoch and after the test,
    for the ``stages`` asked: subclasses implement :meth:`plot` and list the files they write in ``written``.
    ``counts``: the subclass's other settings that must be at least 1 (checked with the stages)."""

    def __init__(self, stages: Sequence[str], every_n_epochs: int, **counts: int):
        self.stages = check_settings(stages, every_n_epochs=every_n_epochs, **counts)
        self.every_n_epochs = every_n_epochs
        self.written: list[str] = []

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Draw, write and log what ``stage`` shows."""
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.plot(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.plot(trainer, pl_module, "test")


class FixedEpisodeCallback(pl.Callback):
    """Base of the callbacks that look at a few fixed episodes after each evaluation (module docstring).

    Args:
        episodes: how many episodes (the split's first ones); bounds the extra cost.
        stages: ``"val"`` (end of each validation epoch) and/or ``"test"`` (end of the test).
        every_n_epochs: at validation, only after every ``n``-th epoch (``(epoch + 1) % n == 0``).

    Subclasses implement :meth:`visualise`; it runs on rank 0 only, inside :func:`side_evaluation`,
    with the episodes on the learner's device, converted and under the autocast context of the Trainer's
    precision as the learner's evaluation steps are.
    """

    def __init__(self, episodes: int, stages: Sequence[str] = STAGES, every_n_epochs: int = 1):
        self.stages = check_settings(stages, episodes=episodes, every_n_epochs=every_n_epochs)
        self.episodes = episodes
        self.every_n_epochs = every_n_epochs
        self._captured: dict[str, list[TaskBatch]] = {}
        self._said: set[str] = set()

    # ------------------------------------------------------------------ what subclasses fill in
    def visualise(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, batch: TaskBatch) -> None:
        """Evaluate, draw and log ``batch`` (the fixed episodes of ``stage``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def say_once(self, key: str, message: str) -> None:
        """``rank_zero_info(message)`` the first time ``key`` is seen (why a callback skips)."""
        if key not in self._said:
            self._said.add(key)
            rank_zero_info(f"{type(self).__name__}: {message}")

    # ------------------------------------------------------------------ Lightning hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._captured["val"] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._captured["test"] = []

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._capture(trainer, "val", batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._capture(trainer, "test", batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    # ------------------------------------------------------------------ internals
    def _capture(self, trainer: pl.Trainer, stage: str, batch: object) -> None:
        """Keep the first tasks of the stage's batches (rank 0), for data modules that do not address episodes."""
        if stage not in self.stages or not trainer.is_global_zero or not isinstance(batch, TaskBatch):
            return
        if addresses_episodes(trainer, stage):
            return
        captured = self._captured.setdefault(stage, [])
        if sum(b.num_tasks for b in captured) >= self.episodes:
            return
        keep = torch.ones(batch.num_tasks, dtype=torch.bool) if batch.index is None else (batch.index >= 0).cpu()
        if keep.any():
            with torch.inference_mode(False):  # ordinary copies, even of a batch made in inference mode
                plain = batch_to(batch, torch.device("cpu"))
                rows = keep.nonzero().flatten()
                captured.append(TaskBatch(*(t[rows].clone() for t in plain.tensors()),
                                          index=None if plain.index is None else plain.index[rows].clone()))

    def fixed_batch(self, trainer: pl.Trainer, stage: str) -> Optional[TaskBatch]:
        """The stage's fixed episodes (on the CPU), or ``None`` when there are none."""
        batch = datamodule_episodes(trainer, stage, self.episodes)
        if batch is not None:
            return batch
        captured = self._captured.get(stage) or []
        if not captured:
            return None
        tensors = [torch.cat(column)[: self.episodes] for column in zip(*(b.tensors() for b in captured))]
        indices = [b.index for b in captured]
        index = None if any(i is None for i in indices) else torch.cat(indices)[: self.episodes]
        return TaskBatch(*tensors, index=index)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.stages or not trainer.is_global_zero:
            return
        batch = self.fixed_batch(trainer, stage)
        if batch is None:
            self.say_once(f"no-episodes-{stage}", f"no episodic {stage} data (TaskBatch episodes): skipped")
            return
        precision = trainer.precision_plugin   # inputs and autocast as in the learner's own evaluation steps
        batch = batch_to(precision.convert_input(batch), pl_module.device)
        step_context = precision.val_step_context() if stage == "val" else precision.test_step_context()
        with side_evaluation(pl_module), step_context:
            self.visualise(trainer, pl_module, stage, batch)

