"""``MetaLearner``: manual optimisation, task batching, episodic evaluation and logging.

Every algorithm of lightning-meta is a subclass.  The base runs the outer loop the Lightning way
(``automatic_optimization = False``; ``opt.zero_grad(); self.manual_backward(loss); opt.step()``),
so mixed precision (loss scaling) and DDP (one gradient all-reduce per outer step) come from the
Trainer, never from the algorithm.  A subclass says what one task costs and predicts:

* :meth:`MetaLearner.training_objective` ``(params, support_x, support_y, query_x, query_y)
  -> (meta_loss, query_predictions)``: one task's meta-loss, differentiable w.r.t. ``params`` (the
  learner's parameters as a dict, ``dict(self.named_parameters())`` keys);
* :meth:`MetaLearner.evaluate_task` ``(support_x, support_y, query_x, query_y)
  -> (query_predictions, predictions_before_adaptation | None)``.

The base batches tasks in a Python loop (one task's graph in memory at a time, one
``manual_backward`` per task, DDP sync only on the last) or under ``torch.func.vmap`` (each task's
meta-gradient inside vmap, handed to ``manual_backward`` as a surrogate), and evaluates fixed episode
sets with mean and 95% confidence interval.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_meta.data.saved_settings import DECODING_KEY, decoding_settings
from lightning_meta.errors import ConfigurationError, optional_positive, require_positive
from lightning_meta.inner_loop import Params, choose_batching, surrogate_loss, vmap_meta_gradients
from lightning_meta.metrics import SUMMARY_ORDER, EpisodeResults, episode_scores, format_summary
from lightning_meta.models.backbone import module_spec
from lightning_meta.tasks import TaskBatch

BATCHING = ("auto", "loop", "vmap")

# Evaluation results are gathered over processes by EpisodeResults (a torchmetrics Metric) before they
# are logged, so Lightning's advice to sync them again is moot.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
FIELD = "model.init_args."


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here; without it bf16 convolutions use ``_slow_conv2d``."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class MetaLearner(pl.LightningModule):
    """Base class of meta-learners (see the module docstring for the contract).

    Args:
        outer_lr: learning rate of the default Adam outer optimiser (``--optimizer`` overrides it).
        gradient_clip_val: clip the meta-gradient to this norm before each outer step (after AMP
            unscaling).  Lightning refuses ``Trainer(gradient_clip_val=...)`` under manual
            optimisation, so it lives here.
        accumulate_grad_batches: outer step every this many meta-batches (replaces the Trainer flag).
        batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (vmap for small models without BatchNorm or
            convolutions on CPU; see :func:`lightning_meta.inner_loop.choose_batching`).  Learners
            whose class sets ``has_batching_choice = False`` always loop, and neither ``batching`` nor
            ``chunk_size`` is recorded in their hyperparameters.
        chunk_size: in vmap mode, tasks vectorised at once (``None``: the whole meta-batch).

    Example::

        class MyLearner(MetaLearner):
            def training_objective(self, params, sx, sy, qx, qy):
                logits = torch.func.functional_call(self.net, sub_params(params, "net"), (qx,))
                return F.cross_entropy(logits, qy), logits
            def evaluate_task(self, sx, sy, qx, qy):
                return self.net(qx), None
    """

    def __init__(
        self,
        outer_lr: float = 1e-3,
        gradient_clip_val: Optional[float] = None,
        accumulate_grad_batches: int = 1,
        batching: str = "auto",
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        require_positive(FIELD + "outer_lr", outer_lr, integer=False)
        optional_positive(FIELD + "gradient_clip_val", gradient_clip_val, integer=False)
        require_positive(FIELD + "accumulate_grad_batches", accumulate_grad_batches)
        optional_positive(FIELD + "chunk_size", chunk_size)
        if batching not in BATCHING:
            raise ConfigurationError(f"{FIELD}batching={batching!r} is unknown: choose one of {', '.join(BATCHING)}")
        self.outer_lr = outer_lr
        self.gradient_clip_val = gradient_clip_val
        self.accumulate_grad_batches = accumulate_grad_batches
        self.batching = batching if self.has_batching_choice else "loop"
        self.chunk_size = chunk_size
        self.results = nn.ModuleDict({"val": EpisodeResults(), "test": EpisodeResults()})
        self._last_step_end: Optional[float] = None
        with warnings.catch_warnings():  # modules are replaced by primitive specs just below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        self._make_hparams_primitive()
        if not self.has_batching_choice:
            self.remove_ignored_hparams(["batching", "chunk_size"])

    # ------------------------------------------------------------------ the subclass contract
    def training_objective(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor) -> tuple[Tensor, Tensor]:
        """One task's meta-loss (differentiable w.r.t. ``params``) and its query predictions."""
        raise NotImplementedError

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Query predictions of one task after adaptation, and before it (or ``None``)."""
        raise NotImplementedError

    #: Whether :meth:`evaluate_task` takes gradients (inner-loop adaptation); metric learners do not.
    adapts_with_gradients: bool = True

    #: Whether ``batching`` (loop / vmap of the tasks' inner loops) means anything for this learner;
    #: ``False``: tasks always run one by one (or the learner batches them itself).
    has_batching_choice: bool = True

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy for integer labels, mean squared error for float targets."""
        if targets.is_floating_point():
            return F.mse_loss(predictions, targets)
        return F.cross_entropy(predictions, targets)

    # ------------------------------------------------------------------ task batching
    @property
    def batching_mode(self) -> str:
        """The resolved batching mode (``"auto"`` decided for this module and device)."""
        return choose_batching(self, self.device) if self.batching == "auto" else self.batching

    def meta_parameters(self) -> Params:
        """The parameters the outer loop trains, keyed as in ``named_parameters``."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def outer_backward(self, batch: TaskBatch, sync: bool = True, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Accumulate ``scale`` times the mean meta-gradient of ``batch`` into ``.grad``.

        Returns the per-task meta-losses and query predictions (detached).  ``sync=False`` skips
        the DDP all-reduce (gradient accumulation).
        """
        params = self.meta_parameters()
        tasks = batch.tensors()
        if self.batching_mode == "vmap":
            grads, losses, predictions = vmap_meta_gradients(self.training_objective, params, tasks, self.chunk_size)
            self._check_finite(losses)
            with self._backward_sync(sync):
                self.manual_backward(surrogate_loss(params, grads) * scale)
            return losses, predictions
        losses, predictions = [], []
        count = batch.num_tasks
        for i in range(count):
            loss, prediction = self.training_objective(params, *(t[i] for t in tasks))
            losses.append(self.backward_losses(loss.reshape(1), scale / count, sync and i == count - 1)[0])
            predictions.append(prediction.detach())
        return torch.stack(losses), torch.stack(predictions)

    def evaluate_batch(self, batch: TaskBatch) -> tuple[Tensor, Optional[Tensor]]:
        """Query predictions ``[B, M, ...]`` after (and before) adaptation for every task."""
        tasks = batch.tensors()
        if self.batching_mode == "vmap":
            return torch.func.vmap(self.evaluate_task, chunk_size=self.chunk_size)(*tasks)
        outputs = [self.evaluate_task(*(t[i] for t in tasks)) for i in range(batch.num_tasks)]
        after = torch.stack([o[0] for o in outputs])
        before = None if outputs[0][1] is None else torch.stack([o[1] for o in outputs])
        return after, before

    def backward_losses(self, losses: Tensor, scale: float, sync: bool) -> Tensor:
        """Backpropagate ``scale`` times the sum of ``losses`` (per-task losses of one group of tasks) after
        checking that they are finite; ``sync=False`` skips the DDP all-reduce (every group but a step's
        last, or gradient accumulation).  Returns ``losses`` detached.  The per-task loop, the grouped
        learners (SNAIL, MANN, metric learners embedding together) and fine-tuning all go through here,
        so a NaN loss stops training the same way in each (vmap hands its surrogate loss over itself)."""
        detached = losses.detach()
        self._check_finite(detached)
        with self._backward_sync(sync):
            self.manual_backward(losses.sum() * scale)
        return detached

    def _backward_sync(self, sync: bool):
        strategy = self.trainer.strategy
        if sync or not isinstance(strategy, ParallelStrategy):
            return contextlib.nullcontext()
        return strategy.block_backward_sync()

    @property
    def inner_loss_scale(self) -> float:
        """The scale for inner-loop losses: the Trainer's fp16 ``GradScaler`` scale, else 1.

        Under ``16-mixed`` the outer loss is scaled by Lightning's GradScaler, but gradients taken
        inside the inner loop are not, and small ones underflow in float16.  Scaling the inner loss
        by the same dynamic scale (and unscaling the gradient) protects them; an overflow makes
        the meta-loss non-finite, and the GradScaler then skips the step and lowers the scale.
        bfloat16 has float32's range and needs none of this.
        """
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _check_finite(self, losses: Tensor) -> None:
        if torch.isfinite(losses).all():
            return
        if self.inner_loss_scale != 1.0:
            rank_zero_warn(f"fp16 overflow at global step {self.global_step}: the GradScaler skips this outer "
                           "step and lowers its scale")
            return
        raise FloatingPointError(
            f"meta-loss is not finite ({losses.tolist()}) at global step {self.global_step} (epoch "
            f"{self.current_epoch}); training stopped before the outer update, so the weights are not NaN. "
            f"Lower {FIELD}outer_lr or the inner learning rate, or set {FIELD}gradient_clip_val.")

    # ------------------------------------------------------------------ Lightning: training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.outer_lr)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        accumulate = self.accumulate_grad_batches
        step_now = (batch_idx + 1) % accumulate == 0 or self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        losses, predictions = self.outer_backward(batch, sync=step_now, scale=1.0 / accumulate)
        if step_now:
            optimizer.step()
            optimizer.zero_grad()
            self._step_schedulers("step")
        self.log_training(batch, losses, predictions)
        return losses.mean()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = self.trainer.global_step if interval == "step" else self.current_epoch + 1
            if count % config.frequency:
                continue
            if config.reduce_on_plateau:
                monitor = self.trainer.callback_metrics.get(config.monitor)
                if monitor is not None:
                    config.scheduler.step(monitor)
            else:
                config.scheduler.step()

    def log_training(self, batch: TaskBatch, losses: Tensor, predictions: Tensor) -> None:
        """Log one training step: ``train/loss``, ``train/acc`` (or ``train/mse``) of ``outer_backward``'s
        per-task ``losses`` and ``predictions``, and ``train/tasks_per_s``.  Override to log more."""
        scores = episode_scores(predictions, batch.query_y)
        size = batch.num_tasks
        # sync_dist: the mean over every process's tasks, as one process with the whole meta-batch logs
        self.log("train/loss", losses.mean(), prog_bar=True, on_step=True, on_epoch=False, batch_size=size,
                 sync_dist=True)
        metric = "mse" if batch.is_regression else "acc"
        self.log(f"train/{metric}", scores[metric].mean(), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=size, sync_dist=True)
        now = time.perf_counter()
        if self._last_step_end is not None:
            tasks = size * self.trainer.world_size
            self.log("train/tasks_per_s", tasks / max(now - self._last_step_end, 1e-9), on_step=True,
                     on_epoch=False, batch_size=size)
        self._last_step_end = now

    def on_train_epoch_start(self) -> None:
        self._last_step_end = None

    # ------------------------------------------------------------------ Lightning: evaluation
    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self.results["val"].reset()

    def on_test_epoch_start(self) -> None:
        self.results["test"].reset()

    def on_validation_epoch_end(self) -> None:
        summary = self.log_results("val")
        if summary and self.trainer.state.fn == "validate":
            rank_zero_info(format_summary("val", summary, self.results["val"].count(), self.summary_order(summary)))

    def on_test_epoch_end(self) -> None:
        summary = self.log_results("test")
        if summary:
            rank_zero_info(format_summary("test", summary, self.results["test"].count(), self.summary_order(summary)))

    def summary_order(self, summary: dict[str, tuple[float, float]]) -> Sequence[str]:
        """The names of ``summary`` printed after ``test``, in order."""
        return SUMMARY_ORDER

    def episode_results(self, batch: TaskBatch, stage: str) -> dict[str, Tensor]:
        """Per-episode evaluation values ``{name: [B]}`` of ``batch`` (``acc``/``mse``, ``loss``, and the
        same ``*_before`` adaptation when :meth:`evaluate_batch` gives predictions before it); each name
        is reported as ``{stage}/{name}`` with a 95% CI over the stage's episodes.  Override to report
        other values (MANN: accuracy per presentation of a class)."""
        if self.adapts_with_gradients and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} adapts to each {stage} task with gradients, which inference mode forbids:"
                " build the Trainer with inference_mode=False (the lightning-meta CLI does this by default)")
        with torch.enable_grad() if self.adapts_with_gradients else contextlib.nullcontext():
            after, before = self.evaluate_batch(batch)
        values = episode_scores(after, batch.query_y)
        if before is not None:
            values.update({f"{name}_before": v for name, v in episode_scores(before, batch.query_y).items()})
        return values

    def _evaluate(self, batch: TaskBatch, stage: str) -> None:
        values = self.episode_results(batch, stage)
        index = batch.index if batch.index is not None else torch.arange(batch.num_tasks,
                                                                         device=batch.support_x.device)
        keep = index >= 0
        self.results[stage].update({k: v[keep] for k, v in values.items()}, index[keep])

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        """Log the stage's results (``{stage}/{name}`` and ``{stage}/{name}_ci95``) at the end of its epoch
        and return them, ``{name: (mean, ci95)}``.  Override to log more (a W&B plot, a flag)."""
        results = self.results[stage]
        if not results.names:
            return {}
        summary = results.compute()
        self.check_finite_results(stage, summary)
        for name, (mean, ci95) in summary.items():
            self.log(f"{stage}/{name}", mean, prog_bar=name in ("acc", "mse"), sync_dist=False)
            if not name.startswith("loss"):
                self.log(f"{stage}/{name}_ci95", ci95, sync_dist=False)
        return summary

    def check_finite_results(self, stage: str, summary: dict[str, tuple[float, float]]) -> None:
        """A non-finite evaluation result is never reported as a number: an error at test, a warning at
        validation (where :class:`~lightning_meta.callbacks.BestCheckpoint` then keeps its best)."""
        bad = [f"{stage}/{name} = {mean}" for name, (mean, _) in summary.items() if not math.isfinite(mean)]
        if not bad:
            return
        message = (f"{', '.join(bad)}: the model's {stage} predictions are not finite (it diverged, or an input is"
                   " NaN); lower the learning rates or set model.init_args.gradient_clip_val, and check the data")
        if stage == "test":
            raise FloatingPointError(message)
        rank_zero_warn(message)

    # ------------------------------------------------------------------ prediction on new classes
    # ``predict_task`` (Python) and ``predict_step`` (``python -m lightning_meta predict``): one task's
    # support set in, class probabilities of its queries out.  One call, no training loop; learners
    # that adapt with gradients adapt on the support set, metric learners summarise it.
    def predict_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class probabilities ``[M, ways]`` of the queries ``query_x`` given a labelled support set.

        ``support_y`` holds class indices ``0..ways-1`` (every class at least once).  The learner is
        evaluated as at test time (``eval()`` mode for the call, then restored; MAML-style learners
        adapt with ``test_inner_steps`` steps); inputs are moved to the learner's device and the
        probabilities stay there.  Classification only.

        Example::

            model = MAML.load_from_checkpoint("runs/.../best.ckpt")
            probabilities = model.predict_task(support_x, support_y, query_x)   # [M, ways]
            predicted = probabilities.argmax(1)
        """
        ways = support_set_ways(support_y)
        if len(support_x) != len(support_y):
            raise ValueError(f"{len(support_x)} support images but {len(support_y)} support labels")
        if query_x.shape[1:] != support_x.shape[1:]:
            raise ValueError(f"query images of shape {list(query_x.shape[1:])} differ from the support images'"
                             f" {list(support_x.shape[1:])}")
        support_x, support_y, query_x = (t.to(self.device) for t in (support_x, support_y, query_x))
        self.check_prediction_classes(support_x, ways, "the support set")
        training = self.training
        self.eval()
        try:
            return self._predict_one(support_x, support_y, query_x, ways)
        finally:
            self.train(training)

    def predict_step(self, batch: TaskBatch, batch_idx: int = 0, dataloader_idx: int = 0) -> Tensor:
        """Probabilities ``[B, M, ways]`` of the queries of every task of ``batch`` (its ``query_y`` is unused).

        Lightning has put the learner in ``eval()`` mode; a prediction writer callback (the CLI's
        :class:`~lightning_meta.callbacks.PredictionCSV`) turns them into files.
        """
        ways = batch.ways
        return torch.stack([self._predict_one(task.support_x, task.support_y, task.query_x, ways) for task in batch])

    def prediction_probabilities(self, predictions: Tensor, ways: int) -> Tensor:
        """Class probabilities from :meth:`evaluate_task`'s query predictions (logits, which evaluation
        scores with cross-entropy): softmax over the first ``ways`` outputs (a classifier head may have
        more outputs than the task has classes)."""
        return predictions[..., :ways].float().softmax(-1)

    def check_prediction_classes(self, support_x: Tensor, ways: int, source: str) -> None:
        """Fail before predicting when the learner cannot take these images or output ``ways`` classes.

        Runs :meth:`probe` on the support images (learners whose output does not fix a number of
        classes, such as metric learners, return ``None`` and take any number).
        """
        try:
            with torch.no_grad():
                output = self.probe(support_x.to(self.device))
        except RuntimeError as error:
            raise ConfigurationError(
                f"{source}: the model cannot take images of shape {list(support_x.shape[1:])}: {error}. Give images"
                " decoded as the training images were (the data module of the training config does this)") from error
        if output is not None and output.shape[-1] < ways:
            raise ConfigurationError(
                f"{source} has {ways} classes but the model outputs {output.shape[-1]} (its classifier head,"
                " model.init_args.backbone.init_args.out_features, is fixed by training): give at most"
                f" {output.shape[-1]} classes, or train a model with out_features >= {ways}")

    def check_prediction_data(self, datamodule: Any) -> None:
        """``setup("predict")``: check the data module's prediction task against the learner."""
        prediction_set = getattr(datamodule, "prediction_set", None)
        if prediction_set is None:
            return
        task = prediction_set()
        source = f"data.init_args.support_dir={datamodule.support_dir!r}"
        self.check_prediction_classes(task.support_x, task.ways, source)

    def _predict_one(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        if support_y.is_floating_point():
            raise ValueError(f"{type(self).__name__}: prediction classifies; float support targets mean regression")
        if self.adapts_with_gradients and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} adapts to the support set with gradients, which inference mode forbids:"
                " build the Trainer with inference_mode=False (the lightning-meta CLI does this by default) and do"
                " not call predict_task under torch.inference_mode()")
        placeholder = torch.zeros(len(query_x), dtype=torch.long, device=query_x.device)
        with torch.enable_grad() if self.adapts_with_gradients else torch.no_grad():
            predictions, _ = self.evaluate_task(support_x, support_y, query_x, placeholder)
        return self.prediction_probabilities(predictions.detach(), ways)

    # ------------------------------------------------------------------ checks and checkpoints
    def setup(self, stage: str) -> None:
        if str(self.trainer.precision).startswith("bf16") and self.device.type == "cpu" and not cpu_has_fast_bf16():
            rank_zero_warn("precision='bf16-mixed' on a CPU without native bf16 (no AVX512-BF16/AMX): convolutions "
                           "fall back to slow kernels (measured ~10x slower than fp32 for Conv4) and meta-gradients "
                           "lose 20-50% of their accuracy. Use precision='32-true' on this machine")
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.check_stage(datamodule, stage)

    def check_stage(self, datamodule: Any, stage: str) -> None:
        """Fail before ``stage`` runs when the learner cannot take the data it will see.

        Checks every split the stage uses (``fit``: train, val and test) with :meth:`check_data`, and
        the support set of ``predict`` with :meth:`check_prediction_data`.  Lightning calls it from
        ``setup``; the CLI calls it earlier, before any logger or run folder exists.
        """
        if stage == "predict":
            self.check_prediction_data(datamodule)
            return
        if not hasattr(datamodule, "source"):
            return
        for split in datamodule.splits_needed.get(stage, ()):
            self.check_data(datamodule, split)

    def check_data(self, datamodule: Any, split: str) -> None:
        """Fail before training when the learner cannot take the data's episodes.

        The default draws one episode and runs :meth:`evaluate_task`'s forward pass on it without
        adaptation via :meth:`probe`; subclasses with stronger assumptions extend it.
        """
        ways, shots, queries = datamodule.setting(split)
        task = datamodule.source(split).sample(torch.Generator().manual_seed(0), ways, shots, queries)
        try:
            with torch.no_grad():
                output = self.probe(task.support_x.to(self.device))
        except RuntimeError as error:
            raise ConfigurationError(
                f"the model cannot take the '{split}' inputs of shape {list(task.support_x.shape[1:])}: {error}. "
                "Match the backbone's input arguments (in_channels, image_size, in_features) to the data") from error
        if output is None:
            return
        if task.support_y.is_floating_point():
            if output.shape[-1] != task.support_y.shape[-1]:
                raise ConfigurationError(
                    f"the model predicts {output.shape[-1]} values per point but the targets have "
                    f"{task.support_y.shape[-1]}: set the backbone's out_features to {task.support_y.shape[-1]}")
        elif output.shape[-1] < ways:
            prefix = "" if split == "train" else "test_"
            raise ConfigurationError(
                f"the model outputs {output.shape[-1]} classes but data.init_args.{prefix}ways={ways}: set the "
                f"backbone's out_features to at least {ways} (model.init_args.backbone.init_args.out_features)")

    def probe(self, x: Tensor) -> Optional[Tensor]:
        """A forward pass on a batch of inputs, used by :meth:`check_data` (``None``: skip the checks)."""
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = _rng_states()
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        decoding = decoding_settings(datamodule)
        if decoding is not None:  # how the data were decoded, checked when the checkpoint is evaluated
            checkpoint[DECODING_KEY] = decoding

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restore the RNG only when a Trainer resumes, never on a plain load_from_checkpoint.
        if self._trainer is not None and "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

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


def _rng_states() -> dict[str, Any]:
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


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def support_set_ways(support_y: Tensor) -> int:
    """The number of classes of a support set, checking its labels are ``0..N-1`` with each present."""
    if support_y.is_floating_point() or support_y.dim() != 1 or support_y.numel() == 0:
        raise ValueError(f"support labels must be a non-empty 1-D tensor of class indices, got "
                         f"{tuple(support_y.shape)} {support_y.dtype} (prediction classifies; no regression)")
    ways = int(support_y.max()) + 1
    missing = sorted(set(range(ways)) - set(support_y.unique().tolist()))
    if missing or int(support_y.min()) < 0:
        raise ValueError(f"support labels must cover every class 0..{ways - 1} at least once; missing {missing}")
    return ways
