"""``Learner``: the root of every lightning-meta algorithm, whatever its tasks are.

It owns what every meta-learner shares and nothing task-specific:

* **the outer step**, by hand (``automatic_optimization = False``): :meth:`Learner.outer_step` takes a
  loss, or gradients as a dict (computed under ``vmap``, by the implicit function theorem, in forward
  mode), or nothing when :meth:`Learner.backpropagate` was called piece by piece; it checks the loss is finite
  (before any weight moves), syncs DDP once per step, accumulates over ``accumulate_grad_batches``
  batches, clips, steps the optimizer (with a closure for line-search optimizers such as TRPO) and that
  optimizer's schedulers;
* **named optimizers**: :meth:`Learner.outer_parameters` returns named parameter groups, one optimizer
  each (a GAN has two); ``--optimizer``/``--lr_scheduler`` apply to every group; the learner counts its
  own outer steps per optimizer (Lightning's ``global_step`` counts optimizer steps, so it doubles with two
  optimizers) and :meth:`Learner.progress` says how far the run is;
* **evaluation by name**: :meth:`Learner.evaluate_tasks` returns per-task values ``{name: [B]}`` (accuracy,
  a return, an FID); each is logged as ``{stage}/{name}`` with a 95% CI over the stage's tasks, and
  ``selection_metric``/``selection_mode`` tell :class:`~lightning_meta.callbacks.BestCheckpoint` what is
  best.  The root reads nothing of a batch but its ``index [B]`` (``-1``: padding) and size, so a training
  step may collect its own data (rollouts, unrolled runs);
* **records**: :meth:`Learner.log_values` for training values and throughput in the learner's unit, the
  global RNG states in checkpoints, the precisions the learner supports, and its prediction writer (or
  a one-line refusal of ``predict``).

Subclasses: :class:`~lightning_meta.algorithms.base.MetaLearner` (supervised episodes, the few-shot
learners) and directly the learners whose tasks are not labelled support/query sets.  See
``docs/architecture.md`` for the layers and a complete small learner.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import instantiate_class
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_meta.data.saved_settings import DECODING_KEY, decoding_settings
from lightning_meta.errors import (
    MODEL_ARGS,
    ConfigurationError,
    optional_positive,
    require_positive,
)
from lightning_meta.internals import attached_trainer, cpu_has_fast_bf16
from lightning_meta.metrics import EpisodeResults, format_summary, mean_over_groups
from lightning_meta.models.backbone import module_spec

# Evaluation results are gathered over processes by EpisodeResults (a torchmetrics Metric) before they
# are logged, so Lightning's advice to sync them again is moot.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")

#: the key of the learner's own counters in a checkpoint
STATE_KEY = "lightning_meta_learner"

OptimizerRef = Union[int, str]


class Learner(pl.LightningModule):
    """The root class of lightning-meta's learners (see the module docstring).

    A subclass implements :meth:`training_step` (compute a loss, call :meth:`outer_step`, call
    :meth:`log_values`) and :meth:`evaluate_tasks`; the class attributes below declare how its values
    are read.

    Args:
        outer_lr: learning rate of the default Adam outer optimizer of every parameter group
            (``--optimizer`` overrides it).
        gradient_clip_val: clip the outer gradient to this norm before each outer step (after AMP
            unscaling).  Lightning refuses ``Trainer(gradient_clip_val=...)`` under manual optimization.
        accumulate_grad_batches: one outer step every this many training batches (replaces the Trainer
            flag, which Lightning refuses under manual optimization).

    Example::

        class MeanEstimator(Learner):               # learns the mean of a task family
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.mean = nn.Parameter(torch.zeros(()))
            def training_step(self, batch, batch_idx):
                loss = ((batch.targets - self.mean) ** 2).mean()
                self.outer_step(loss)
                self.log_values("train", {"loss": loss}, units=len(batch.targets))
            def evaluate_tasks(self, batch):
                return {"loss": ((batch.targets - self.mean) ** 2).flatten(1).mean(1)}
    """

    #: the evaluation value that decides the best checkpoint, and whether higher or lower is better
    selection_metric: str = "loss"
    selection_mode: Literal["min", "max"] = "min"
    #: evaluation values that are fractions, shown as percentages (``"acc"`` also covers ``acc_before``, ...)
    fractions: tuple[str, ...] = ()
    #: the order of the values in the printed summary (others follow, sorted); names shown otherwise
    summary_names: tuple[str, ...] = ()
    display_names: Mapping[str, str] = {}
    #: whether :meth:`evaluate_tasks` takes gradients (adapts with an inner loop): evaluation then runs with
    #: gradients enabled, and refuses ``inference_mode``
    evaluation_needs_grad: bool = False
    #: what ``units`` of :meth:`log_values` counts (``train/{unit}_per_s``)
    throughput_unit: str = "tasks"
    #: the Trainer precisions the learner supports (``None``: any)
    supported_precisions: Optional[tuple[str, ...]] = None
    #: parameter-name prefixes of older checkpoints and their names now (``{"model.": "backbone."}``),
    #: mapped when a checkpoint loads, so renaming an attribute never orphans a checkpoint
    renamed_prefixes: Mapping[str, str] = {}

    def __init__(self, outer_lr: float = 1e-3, gradient_clip_val: Optional[float] = None,
                 accumulate_grad_batches: int = 1):
        super().__init__()
        self.automatic_optimization = False
        require_positive(MODEL_ARGS + "outer_lr", outer_lr, integer=False)
        optional_positive(MODEL_ARGS + "gradient_clip_val", gradient_clip_val, integer=False)
        require_positive(MODEL_ARGS + "accumulate_grad_batches", accumulate_grad_batches)
        self.outer_lr = outer_lr
        self.gradient_clip_val = gradient_clip_val
        self.accumulate_grad_batches = accumulate_grad_batches
        self.results = nn.ModuleDict({"val": EpisodeResults(), "test": EpisodeResults()})
        self.optimizer_names: list[str] = []
        self.optimizer_steps: list[int] = []
        self.batches_trained = 0
        self.epoch_batches_trained = 0
        self._cli_optimizer: Optional[dict[str, Any]] = None
        self._cli_scheduler: Optional[dict[str, Any]] = None
        self._throughput_mark: Optional[float] = None
        self._source_summaries: dict[str, dict[str, tuple[dict[str, tuple[float, float]], int]]] = {}
        with warnings.catch_warnings():  # modules are replaced by primitive specs just below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        self._make_hparams_primitive()

    # ------------------------------------------------------------------ what a subclass provides
    def evaluate_tasks(self, batch: Any) -> dict[str, Tensor]:
        """Per-task evaluation values ``{name: Tensor[B]}`` of a validation or test batch.

        Each name is logged as ``{stage}/{name}`` (and ``{stage}/{name}_ci95``) over the stage's tasks;
        the values must include :attr:`selection_metric`.  A task's values depend on that task only.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate_tasks(batch)")

    def outer_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters the outer loop trains, as named groups, one optimizer each.

        The default is one group, ``"model"``, of every parameter that requires grad.  A GAN returns
        ``{"generator": ..., "discriminator": ...}``; a hyper-parameter learner only its hyper-parameters.
        """
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def make_optimizer(self, group: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer of one parameter group (Adam with ``outer_lr``); ``--optimizer`` replaces it."""
        return torch.optim.Adam(parameters, lr=self.outer_lr)

    def make_scheduler(self, group: str, optimizer: torch.optim.Optimizer) -> Optional[dict[str, Any]]:
        """A Lightning scheduler config for the group's optimizer, or ``None``; ``--lr_scheduler`` replaces it."""
        return None

    def resolve_selection(self, datamodule: Any) -> tuple[str, str]:
        """``(selection_metric, selection_mode)`` for this data; learners whose metric depends on the data
        (accuracy or MSE) override it.  Called at setup, by the learner and by ``BestCheckpoint``."""
        return self.selection_metric, self.selection_mode

    def prediction_writer(self) -> Optional[Callback]:
        """The callback that writes ``predict``'s outputs to files, or ``None``: the learner does not predict."""
        return None

    def check_stage(self, datamodule: Any, stage: str) -> None:
        """Fail before ``stage`` runs when the learner cannot take the data; the CLI calls it before any run
        folder exists, Lightning from :meth:`setup`.  The root refuses ``predict`` without a writer."""
        if stage == "predict" and self.prediction_writer() is None:
            raise ConfigurationError(f"{type(self).__name__} does not predict: use fit, validate or test")
        trainer = getattr(datamodule, "trainer", None)
        if trainer is not None:
            self.check_precision(str(trainer.precision))

    def check_precision(self, precision: str) -> None:
        """Refuse a Trainer precision outside :attr:`supported_precisions`."""
        if self.supported_precisions is not None and precision not in self.supported_precisions:
            raise ConfigurationError(
                f"trainer.precision={precision!r}: {type(self).__name__} supports "
                f"{', '.join(self.supported_precisions)}; set trainer.precision to one of them")

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        """One optimizer (and scheduler) per group of :meth:`outer_parameters`, in its order."""
        groups = self.outer_parameters()
        self.optimizer_names = list(groups)
        configs = []
        for name, parameters in groups.items():
            parameters = list(parameters)
            if self._cli_optimizer is not None:
                optimizer = instantiate_class(parameters, self._cli_optimizer)
            else:
                optimizer = self.make_optimizer(name, parameters)
            if self._cli_scheduler is not None:
                scheduler = instantiate_class(optimizer, self._cli_scheduler)
                monitor = getattr(scheduler, "monitor", None)
                schedule = {"scheduler": scheduler, **({"monitor": monitor} if monitor else {})}
            else:
                schedule = self.make_scheduler(name, optimizer)
            configs.append({"optimizer": optimizer, **({"lr_scheduler": schedule} if schedule else {})})
        if len(configs) == 1 and "lr_scheduler" not in configs[0]:
            return configs[0]["optimizer"]
        return configs[0] if len(configs) == 1 else tuple(configs)

    def use_optimizer(self, optimizer: dict[str, Any], scheduler: Optional[dict[str, Any]] = None) -> None:
        """Use ``optimizer`` (and ``scheduler``), ``{"class_path", "init_args"}`` specs, for every parameter
        group: what ``--optimizer``/``--lr_scheduler`` do.  A learner that writes its own
        ``configure_optimizers`` cannot take them."""
        if type(self).configure_optimizers is not Learner.configure_optimizers:
            raise ConfigurationError(
                f"--optimizer/--lr_scheduler: {type(self).__name__} builds its optimizers in its own"
                " configure_optimizers, so they cannot be replaced from the command line: drop the flags, or"
                " override make_optimizer/make_scheduler instead of configure_optimizers")
        self._cli_optimizer, self._cli_scheduler = optimizer, scheduler

    def optimizer(self, which: OptimizerRef = 0) -> Any:
        """The (Lightning-wrapped) optimizer of a parameter group, by name or position."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self._optimizer_index(which)]

    def _optimizer_index(self, which: OptimizerRef) -> int:
        if isinstance(which, int):
            return which
        if which not in self.optimizer_names:
            raise KeyError(f"{type(self).__name__} has no optimizer {which!r}; its groups: {self.optimizer_names}")
        return self.optimizer_names.index(which)

    # ------------------------------------------------------------------ the outer step
    @property
    def stepping(self) -> bool:
        """Whether this training batch closes an accumulation window (its :meth:`outer_step` updates)."""
        batch = self.epoch_batches_trained
        return batch % self.accumulate_grad_batches == 0 or batch == self.trainer.num_training_batches

    def backpropagate(self, loss: Tensor, *, scale: float = 1.0, last: bool = True) -> Tensor:
        """Back-propagate ``scale`` times ``loss`` (summed if it has several entries) into ``.grad``, divided
        by ``accumulate_grad_batches``.

        Call it once per piece of a step (one per task, to keep one task's graph in memory at a time)
        with ``last=False`` for all but the last piece: DDP then syncs once, on the last piece of the
        step that updates.  A non-finite loss raises ``FloatingPointError`` before anything is
        back-propagated (under fp16 mixed precision it only warns: the GradScaler skips the step).
        Returns ``loss`` detached.
        """
        detached = loss.detach()
        self.check_finite(detached)
        with self._sync_context(last and self.stepping):
            self.manual_backward(loss.sum() * (scale / self.accumulate_grad_batches))
        return detached

    def outer_step(self, loss: Optional[Tensor] = None, *, grads: Optional[Mapping[str, Tensor]] = None,
                   optimizer: OptimizerRef = 0, closure: Optional[Callable[[], Any]] = None,
                   all_reduced: bool = False) -> bool:
        """One outer update of an optimizer's parameters; returns whether it stepped (accumulation).

        Give ``loss`` (back-propagated here), or ``grads`` (``{parameter name: gradient}``, as
        ``named_parameters``; handed to autograd as a surrogate loss so AMP scaling and DDP's all-reduce
        apply), or neither after :meth:`backpropagate`.  ``closure`` is passed to ``optimizer.step`` (line
        search, TRPO); it re-evaluates the loss itself.  The step clips to ``gradient_clip_val``, steps
        the optimizer's ``interval: step`` schedulers and counts in :attr:`optimizer_steps`.

        ``all_reduced=True`` says ``grads`` are already the same on every process (averaged with
        :meth:`all_reduce_mean`, or an update every process computed alike, as TRPO's): they are added to
        ``.grad`` directly, with no backward pass and no DDP reducer involved, however many outer steps a
        batch takes (PPO's epochs, TRPO's update).
        """
        if loss is not None and grads is not None:
            raise ValueError("outer_step takes a loss or gradients, not both")
        if all_reduced:
            if grads is None:
                raise ValueError("outer_step(all_reduced=True) needs grads")
            self.add_gradients(grads)
        elif grads is not None:
            loss = surrogate_loss(dict(self.named_parameters()), grads)
        if loss is not None:
            self.backpropagate(loss)
        if not self.stepping:
            return False
        index = self._optimizer_index(optimizer)
        wrapped = self.optimizer(index)
        if closure is None:
            wrapped.step()
        else:
            wrapped.step(closure=closure)
        wrapped.zero_grad()
        self.optimizer_steps[index] += 1
        self._step_schedulers(wrapped.optimizer, "step", self.optimizer_steps[index])
        return True

    def add_gradients(self, grads: Mapping[str, Tensor]) -> None:
        """Add ``grads`` (divided by ``accumulate_grad_batches``) to the parameters' ``.grad``, outside autograd."""
        if self.inner_loss_scale != 1.0:
            raise ConfigurationError("trainer.precision='16-mixed' scales gradients that outer_step(all_reduced=True)"
                                     " bypasses: use 32-true, 64-true or bf16-mixed")
        params = dict(self.named_parameters())
        check_known(params, grads)
        for name, g in grads.items():
            g = g.detach().to(params[name].dtype) / self.accumulate_grad_batches
            param = params[name]
            param.grad = g.clone() if param.grad is None else param.grad + g

    def all_reduce_mean(self, value: Union[Tensor, Mapping[str, Tensor]]) -> Any:
        """The mean of a tensor, or of a dict of tensors (one collective for all), over the processes (the
        value itself with one): for values DDP does not sync, such as gradients from ``torch.autograd.grad``
        and the statistics of a line search."""
        trainer = attached_trainer(self)
        if trainer is None or trainer.world_size == 1:
            return value
        if isinstance(value, Tensor):
            return trainer.strategy.reduce(value, reduce_op="mean")
        names = list(value)
        flat = trainer.strategy.reduce(torch.cat([value[n].reshape(-1) for n in names]), reduce_op="mean")
        return dict(zip(names, (part.view_as(value[n]) for part, n in
                                zip(flat.split([value[n].numel() for n in names]), names))))

    def check_finite(self, losses: Tensor) -> None:
        """Raise ``FloatingPointError`` for a non-finite loss, before any weight changes (fp16: warn only)."""
        if torch.isfinite(losses).all():
            return
        if self.inner_loss_scale != 1.0:
            rank_zero_warn(f"fp16 overflow at global step {self.global_step}: the GradScaler skips this outer "
                           "step and lowers its scale")
            return
        raise FloatingPointError(
            f"loss is not finite ({losses.flatten().tolist()}) at global step {self.global_step} (epoch "
            f"{self.current_epoch}); training stopped before the outer update, so the weights are not NaN. "
            f"Lower {MODEL_ARGS}outer_lr or the inner learning rate, or set {MODEL_ARGS}gradient_clip_val.")

    @property
    def inner_loss_scale(self) -> float:
        """The Trainer's fp16 ``GradScaler`` scale, else 1: the scale for losses differentiated inside a step.

        Under ``16-mixed`` the outer loss is scaled by Lightning's GradScaler, but gradients taken
        inside the inner loop are not, and small ones underflow in float16.  Scaling the inner loss
        by the same dynamic scale (and unscaling the gradient) protects them; an overflow makes the
        meta-loss non-finite, and the GradScaler then skips the step and lowers the scale.  bfloat16
        has float32's range and needs none of this.
        """
        trainer = attached_trainer(self)
        scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def _sync_context(self, sync: bool) -> Any:
        strategy = self.trainer.strategy
        if sync or not isinstance(strategy, ParallelStrategy):
            return contextlib.nullcontext()
        return strategy.block_backward_sync()

    def _step_schedulers(self, optimizer: torch.optim.Optimizer, interval: str, count: int) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or config.scheduler.optimizer is not optimizer or count % config.frequency:
                continue
            if config.reduce_on_plateau:
                monitor = self.trainer.callback_metrics.get(config.monitor)
                if monitor is not None:
                    config.scheduler.step(monitor)
            else:
                config.scheduler.step()

    def on_train_epoch_end(self) -> None:
        for config in self.trainer.lr_scheduler_configs:
            self._step_schedulers(config.scheduler.optimizer, "epoch", self.current_epoch + 1)

    # ------------------------------------------------------------------ progress and training records
    def on_fit_start(self) -> None:
        optimizers = self.optimizers()
        count = len(optimizers) if isinstance(optimizers, list) else 1
        if len(self.optimizer_steps) != count:  # a fresh run: a checkpoint's counts are loaded before this hook
            self.optimizer_steps = [0] * count
        if not self.optimizer_names:
            self.optimizer_names = [str(i) for i in range(count)]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batches_trained += 1
        self.epoch_batches_trained = batch_idx + 1

    def on_train_epoch_start(self) -> None:
        self._throughput_mark = None

    def planned_batches(self) -> float:
        """Training batches the run will take (``inf`` if unbounded): ``max_epochs`` epochs or ``max_steps``
        optimizer steps (with every optimizer stepping once per accumulation window), whichever ends first."""
        trainer = self.trainer
        limits = []
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            limits.append(trainer.max_epochs * trainer.num_training_batches)
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            per_window = max(len(self.optimizer_steps), 1)
            limits.append(trainer.max_steps * self.accumulate_grad_batches / per_window)
        return min(limits) if limits else math.inf

    def require_run_length(self, what: str, fix: str = "") -> None:
        """Refuse a schedule (``what``) over a run without an end, naming the trainer fields and ``fix``.

        Call it from ``on_train_start``, where the Trainer knows its batches: in ``configure_optimizers``,
        ``trainer.estimated_stepping_batches`` would build the training loader before a checkpoint's loader
        state is restored, and a resumed run would start its data from the beginning."""
        if not math.isfinite(self.planned_batches()):
            raise ConfigurationError(f"{what} needs the length of training: set trainer.max_steps or "
                                     f"trainer.max_epochs{fix}")

    def progress(self) -> float:
        """The fraction of the run's training batches done, in ``[0, 1]`` (schedules read it).

        :attr:`batches_trained` counts the batches started so far (saved in checkpoints);
        :attr:`epoch_batches_trained` those of the current epoch (the data modules' resume clock)."""
        planned = self.planned_batches()
        return 0.0 if not math.isfinite(planned) or planned <= 0 else min(self.batches_trained / planned, 1.0)

    def log_values(self, stage: str, values: Mapping[str, Union[Tensor, float]], units: Optional[int] = None,
                   prog_bar: Optional[Sequence[str]] = None) -> None:
        """Log training values as ``{stage}/{name}`` at this step (their mean over the processes' values),
        and, given ``units`` (this process's tasks, env steps or samples of the step), the throughput
        ``{stage}/{throughput_unit}_per_s`` of all processes since the previous call."""
        shown = ("loss", self.selection_metric) if prog_bar is None else tuple(prog_bar)
        size = units or 1
        for name, value in values.items():
            value = value.float().mean() if isinstance(value, Tensor) else torch.tensor(float(value))
            self.log(f"{stage}/{name}", value, prog_bar=name in shown, on_step=True, on_epoch=False,
                     batch_size=size, sync_dist=True)
        if units is None:
            return
        now = time.perf_counter()
        if self._throughput_mark is not None:
            rate = units * self.trainer.world_size / max(now - self._throughput_mark, 1e-9)
            self.log(f"{stage}/{self.throughput_unit}_per_s", rate, on_step=True, on_epoch=False, batch_size=size)
        self._throughput_mark = now

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record_evaluation(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record_evaluation(batch, "test", dataloader_idx)

    def record_evaluation(self, batch: Any, stage: str, dataloader_idx: int = 0) -> None:
        """Add the values of :meth:`evaluate_tasks` for ``batch``'s tasks to the stage's results (padding
        tasks, ``index < 0``, dropped), grouped by evaluation loader (one per source of a multi-source data
        module: see :meth:`evaluation_sources`)."""
        if self.evaluation_needs_grad and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} takes gradients to evaluate each {stage} task, which inference mode forbids:"
                " build the Trainer with inference_mode=False (the lightning-meta CLI does this by default)")
        with torch.enable_grad() if self.evaluation_needs_grad else contextlib.nullcontext():
            values = self.evaluate_tasks(batch)
        index = batch_index(batch, self.device)
        keep = index >= 0
        for name, value in values.items():
            if value.shape != index.shape:
                raise ValueError(f"{type(self).__name__}.evaluate_tasks: {name!r} has shape {tuple(value.shape)},"
                                 f" expected one value per task, {tuple(index.shape)}")
        self.results[stage].update({k: v[keep] for k, v in values.items()}, index[keep], group=dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self.results["val"].reset()
        self._source_summaries.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.results["test"].reset()
        self._source_summaries.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        summary = self.log_results("val")
        if summary and self.trainer.state.fn == "validate":
            self.print_summary("val", summary)

    def on_test_epoch_end(self) -> None:
        summary = self.log_results("test")
        if summary:
            self.print_summary("test", summary)

    def is_fraction(self, name: str) -> bool:
        """Whether the evaluation value ``name`` is a fraction (shown as a percentage)."""
        return any(name == f or name.startswith(f + "_") for f in self.fractions)

    def summary_order(self, summary: dict[str, tuple[float, float]]) -> list[str]:
        """The names of ``summary`` printed after ``test``, in order: :attr:`summary_names`, then the rest."""
        order = [n for n in self.summary_names if n in summary]
        return order + sorted(n for n in summary if n not in order)

    def print_summary(self, stage: str, summary: dict[str, tuple[float, float]]) -> None:
        results = self.results[stage]
        rank_zero_info(format_summary(stage, summary, results.count(), self.summary_order(summary),
                                      self.is_fraction, self.display_names))
        for name, (group_summary, episodes) in self._source_summaries.get(stage, {}).items():
            rank_zero_info(format_summary(f"{stage}/{name}", group_summary, episodes, self.summary_order(group_summary),
                                          self.is_fraction, self.display_names))

    def evaluation_sources(self) -> Optional[list[str]]:
        """The names of the evaluation loaders, one per source, when the data module evaluates per source
        (``evaluation_names``, as :class:`~lightning_meta.data.multi_source.MultiSourceDataModule`); else ``None``."""
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        names = getattr(datamodule, "evaluation_names", None)
        return list(names) if names else None

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        """Log the stage's results (``{stage}/{name}`` and ``{stage}/{name}_ci95``) at the end of its epoch
        and return them, ``{name: (mean, ci95)}``.  Override to log more (a W&B plot, a flag).

        Per source (a data module with ``evaluation_names``): each source's results as
        ``{stage}/{source}/{name}`` (and ``_ci95``), and ``{stage}/{name}`` their unweighted mean over the
        sources (Meta-Dataset's average; its CI that of a mean of independent means), which model
        selection reads."""
        results = self.results[stage]
        if not results.names:
            return {}
        sources = self.evaluation_sources()
        if sources is None:
            summary = results.compute()
        else:
            groups = results.group_summaries()
            per_source = {sources[g]: groups[g] for g in sorted(groups) if g < len(sources)}
            self._source_summaries[stage] = per_source
            for name, (group_summary, _) in per_source.items():
                self.check_finite_results(f"{stage}/{name}", group_summary)
                self._log_summary(f"{stage}/{name}", group_summary, prog_bar=False)
            summary = mean_over_groups([group_summary for group_summary, _ in per_source.values()])
        self.check_finite_results(stage, summary)
        self._log_summary(stage, summary, prog_bar=True)
        return summary

    def _log_summary(self, prefix: str, summary: dict[str, tuple[float, float]], prog_bar: bool) -> None:
        for name, (mean, ci95) in summary.items():
            self.log(f"{prefix}/{name}", mean, prog_bar=prog_bar and name == self.selection_metric, sync_dist=False,
                     add_dataloader_idx=False)
            if not name.startswith("loss"):
                self.log(f"{prefix}/{name}_ci95", ci95, sync_dist=False, add_dataloader_idx=False)

    def check_finite_results(self, stage: str, summary: dict[str, tuple[float, float]]) -> None:
        """A non-finite evaluation result is never reported as a number: an error at test, a warning at
        validation (where :class:`~lightning_meta.callbacks.BestCheckpoint` then keeps its best)."""
        bad = [f"{stage}/{name} = {mean}" for name, (mean, _) in summary.items() if not math.isfinite(mean)]
        if not bad:
            return
        message = (f"{', '.join(bad)}: the model's {stage} predictions are not finite (it diverged, or an input is"
                   f" NaN); lower the learning rates or set {MODEL_ARGS}gradient_clip_val, and check the data")
        if stage == "test":
            raise FloatingPointError(message)
        rank_zero_warn(message)

    # ------------------------------------------------------------------ setup, checks, checkpoints
    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        self.check_precision(precision)
        if precision.startswith("bf16") and self.device.type == "cpu" and not cpu_has_fast_bf16():
            rank_zero_warn("precision='bf16-mixed' on a CPU without native bf16 (no AVX512-BF16/AMX): convolutions "
                           "fall back to slow kernels (measured ~10x slower than fp32 for Conv4) and meta-gradients "
                           "lose 20-50% of their accuracy. Use precision='32-true' on this machine")
        datamodule = getattr(self.trainer, "datamodule", None)
        self.selection_metric, self.selection_mode = self.resolve_selection(datamodule)  # type: ignore[assignment]
        if datamodule is not None:
            self.check_stage(datamodule, stage)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()
        checkpoint[STATE_KEY] = {"optimizer_steps": list(self.optimizer_steps),
                                 "batches_trained": int(self.batches_trained)}
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        decoding = decoding_settings(datamodule)
        if decoding is not None:  # how the data were decoded, checked when the checkpoint is evaluated
            checkpoint[DECODING_KEY] = decoding

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.renamed_prefixes and "state_dict" in checkpoint:
            checkpoint["state_dict"] = {renamed(key, self.renamed_prefixes): value
                                        for key, value in checkpoint["state_dict"].items()}
        state = checkpoint.get(STATE_KEY)
        if state is not None:
            self.optimizer_steps = list(state["optimizer_steps"])
            self.batches_trained = int(state["batches_trained"])
        else:  # a checkpoint from before the learner counted: one optimizer, one step per window
            steps = int(checkpoint.get("global_step", 0))
            self.optimizer_steps = [steps]  # Lightning restores global_step only after on_fit_start
            self.batches_trained = steps * self.accumulate_grad_batches
        # Restore the RNG only when a Trainer resumes, never on a plain load_from_checkpoint.
        if attached_trainer(self) is not None and "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def _make_hparams_primitive(self) -> None:
        """Replace module-valued hyper-parameters by ``{"class_path", "init_args"}`` specs.

        Checkpoints are reloaded with ``torch.load(weights_only=True)`` by the CLI; a module in the
        hyper-parameters would not load.  A module that cannot be described is dropped (pass it
        again to ``load_from_checkpoint``).
        """
        for name in list(self.hparams):
            value = self.hparams[name]
            if isinstance(value, nn.Module):
                spec = module_spec(value)
                if spec is None:
                    del self.hparams[name]
                else:
                    self.hparams[name] = spec


def renamed(key: str, prefixes: Mapping[str, str]) -> str:
    """``key`` with the first matching old prefix of ``prefixes`` replaced by its new name."""
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def batch_index(batch: Any, device: torch.device) -> Tensor:
    """The tasks' ``index [B]`` of a batch (``-1``: padding); ``0..B-1`` when it has none."""
    index = getattr(batch, "index", None)
    if isinstance(index, Tensor):  # not the ``index`` method of a tuple or list batch
        return index
    size = getattr(batch, "num_tasks", None)
    if size is None:
        size = len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    return torch.arange(size, device=device)


def check_known(params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    unknown = sorted(set(grads) - set(params))
    if unknown:
        raise KeyError(f"gradients for unknown parameters {unknown}")


def surrogate_loss(params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> Tensor:
    """A scalar whose gradient w.r.t. ``params`` is ``grads``: hands a precomputed gradient to
    ``manual_backward`` so loss scaling and the DDP all-reduce still apply."""
    check_known(params, grads)
    return sum((params[name] * g.detach().to(params[name].dtype)).sum() for name, g in grads.items())


def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and primitives (checkpoints load with ``weights_only=True``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
