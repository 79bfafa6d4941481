"""``MetaLearner``: the supervised episodic learner, on labelled support and query sets.

Every few-shot learner of lightning-meta (the MAML family, Reptile, Meta-LSTM, the metric learners,
SNAIL, MANN, fine-tuning) is a subclass.  It sits on :class:`~lightning_meta.algorithms.learner.Learner`
(the outer step, evaluation by name, checkpoints) and adds what labelled episodes need: the
:class:`~lightning_meta.tasks.TaskBatch`, accuracy (or MSE) and loss per episode, prediction from a
support set, and the data checks.  A subclass says what one task costs and predicts:

* :meth:`MetaLearner.training_objective` ``(params, support_x, support_y, query_x, query_y)
  -> (meta_loss, query_predictions)``: one task's meta-loss, differentiable w.r.t. ``params`` (the
  learner's parameters as a dict, ``dict(self.named_parameters())`` keys);
* :meth:`MetaLearner.evaluate_task` ``(support_x, support_y, query_x, query_y)
  -> (query_predictions, predictions_before_adaptation | None)``.

These per-task functions never touch the Trainer, so a wrapper can call a learner it holds.  The
class batches tasks in a Python loop (one task's graph in memory at a time, one backward per task,
DDP sync only on the last) or under ``torch.func.vmap`` (each task's meta-gradient inside vmap, handed
to the outer step as gradients).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from lightning_meta.algorithms.learner import Learner, surrogate_loss
from lightning_meta.algorithms.support_prediction import (
    check_prediction_classes,
    predict_task,
    support_set_ways,
    task_probabilities,
)
from lightning_meta.errors import DATA_ARGS, MODEL_ARGS, ConfigurationError, optional_positive, require_choice
from lightning_meta.inner_loop import Params, choose_batching, vmap_meta_gradients
from lightning_meta.metrics import SUMMARY_ORDER, episode_scores
from lightning_meta.tasks import TaskBatch

__all__ = ["MetaLearner", "support_set_ways"]

Batching = Literal["auto", "loop", "vmap"]



class MetaLearner(Learner):
    """Base class of the supervised episodic learners (see the module docstring for the contract).

    Args:
        batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (vmap for small models without BatchNorm or
            convolutions on CPU; see :func:`lightning_meta.inner_loop.choose_batching`).  Learners
            whose class sets ``has_batching_choice = False`` always loop, and neither ``batching`` nor
            ``chunk_size`` is recorded in their hyperparameters.
        chunk_size: in vmap mode, tasks vectorised at once (``None``: the whole meta-batch).
        Remaining arguments (``outer_lr``, ``gradient_clip_val``, ``accumulate_grad_batches``): see
        :class:`~lightning_meta.algorithms.learner.Learner`.

    Example::

        class MyLearner(MetaLearner):
            def training_objective(self, params, sx, sy, qx, qy):
                logits = torch.func.functional_call(self.net, sub_params(params, "net"), (qx,))
                return F.cross_entropy(logits, qy), logits
            def evaluate_task(self, sx, sy, qx, qy):
                return self.net(qx), None
    """

    selection_metric = "acc"
    selection_mode = "max"
    fractions = ("acc",)
    summary_names = SUMMARY_ORDER
    evaluation_needs_grad = True
    #: Whether the learner scores a query set: ``False`` for learners that adapt on support sets alone
    #: (generators); those accept ``data.init_args.queries: 0``, the others reject it before training.
    needs_queries: bool = True

    #: Whether ``batching`` (loop / vmap of the tasks' inner loops) means anything for this learner;
    #: ``False``: tasks always run one by one (or the learner batches them itself).
    has_batching_choice: bool = True

    def __init__(self, batching: Batching = "auto", chunk_size: Optional[int] = None, **kwargs: Any):
        super().__init__(**kwargs)
        optional_positive(MODEL_ARGS + "chunk_size", chunk_size)
        require_choice(MODEL_ARGS + "batching", batching, Batching)
        self.batching = batching if self.has_batching_choice else "loop"
        self.chunk_size = chunk_size
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

    def outer_backward(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Back-propagate the mean meta-loss of ``batch``'s tasks into ``.grad`` (see
        :meth:`~lightning_meta.algorithms.learner.Learner.backpropagate`) and return the per-task meta-losses
        and query predictions (detached)."""
        params = self.meta_parameters()
        tasks = batch.tensors()
        if self.batching_mode == "vmap":
            grads, losses, predictions = vmap_meta_gradients(self.training_objective, params, tasks, self.chunk_size)
            self.check_finite(losses)
            self.backpropagate(surrogate_loss(params, grads))
            return losses, predictions
        losses, predictions = [], []
        count = batch.num_tasks
        for i in range(count):
            loss, prediction = self.training_objective(params, *(t[i] for t in tasks))
            losses.append(self.backpropagate(loss, scale=1 / count, last=i == count - 1))
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

    # ------------------------------------------------------------------ training and evaluation
    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        losses, predictions = self.outer_backward(batch)
        self.outer_step()
        self.log_training(batch, losses, predictions)
        return losses.mean()

    def log_training(self, batch: TaskBatch, losses: Tensor, predictions: Tensor) -> None:
        """Log one training step: ``train/loss``, ``train/acc`` (or ``train/mse``) of ``outer_backward``'s
        per-task ``losses`` and ``predictions``, and ``train/tasks_per_s``.  Override to log more."""
        scores = episode_scores(predictions, batch.query_y)
        metric = "mse" if batch.is_regression else "acc"
        self.log_values("train", {"loss": losses.mean(), metric: scores[metric].mean()}, units=batch.num_tasks,
                        prog_bar=("loss", metric))

    def evaluate_tasks(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Per-episode ``acc`` (or ``mse``) and ``loss`` of the queries, and the same ``*_before`` adaptation
        when :meth:`evaluate_batch` gives predictions before it."""
        after, before = self.evaluate_batch(batch)
        values = episode_scores(after, batch.query_y)
        if before is not None:
            values.update({f"{name}_before": v for name, v in episode_scores(before, batch.query_y).items()})
        return values

    def resolve_selection(self, datamodule: Any) -> tuple[str, str]:
        """``val/mse`` (lower is better) on regression data, ``val/acc`` (higher) on classes."""
        if datamodule is not None and getattr(datamodule, "is_regression", False):
            return "mse", "min"
        return "acc", "max"

    # ------------------------------------------------------------------ prediction on new classes
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
        return predict_task(self, support_x, support_y, query_x)

    def predict_step(self, batch: TaskBatch, batch_idx: int = 0, dataloader_idx: int = 0) -> Tensor:
        """Probabilities ``[B, M, ways]`` of the queries of every task of ``batch`` (its ``query_y`` is unused).

        Lightning has put the learner in ``eval()`` mode; :meth:`prediction_writer` turns them into files.
        """
        ways = batch.ways
        return torch.stack([task_probabilities(self, task.support_x, task.support_y, task.query_x, ways)
                            for task in batch])

    def prediction_writer(self) -> Optional[Callback]:
        """``predictions.csv``: one row per query with its class probabilities."""
        from lightning_meta.callbacks.prediction_csv import PredictionCSV

        return PredictionCSV()

    def prediction_probabilities(self, predictions: Tensor, ways: int) -> Tensor:
        """Class probabilities from :meth:`evaluate_task`'s query predictions (logits, which evaluation
        scores with cross-entropy): softmax over the first ``ways`` outputs (a classifier head may have
        more outputs than the task has classes)."""
        return predictions[..., :ways].float().softmax(-1)

    def check_prediction_classes(self, support_x: Tensor, ways: int, source: str) -> None:
        """Fail before predicting when the learner cannot take these images or output ``ways`` classes
        (see :func:`~lightning_meta.algorithms.support_prediction.check_prediction_classes`)."""
        check_prediction_classes(self, support_x, ways, source)

    # ------------------------------------------------------------------ checks
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

    def check_prediction_data(self, datamodule: Any) -> None:
        """``setup("predict")``: check the data module's prediction task against the learner."""
        prediction_set = getattr(datamodule, "prediction_set", None)
        if prediction_set is None:
            return
        task = prediction_set()
        source = f"data.init_args.support_dir={datamodule.support_dir!r}"
        self.check_prediction_classes(task.support_x, task.ways, source)

    def check_data(self, datamodule: Any, split: str) -> None:
        """Fail before training when the learner cannot take the data's episodes.

        The default draws one episode and runs :meth:`evaluate_task`'s forward pass on it without
        adaptation via :meth:`probe`; subclasses with stronger assumptions extend it.
        """
        ways, shots, queries = datamodule.setting(split)
        if queries == 0 and self.needs_queries:
            field = "queries" if split == "train" else "test_queries"
            raise ConfigurationError(
                f"{DATA_ARGS}{field}=0: {type(self).__name__} scores a query set; give each class at least one"
                f" query (e.g. {field}: 15). Only learners without a query set (generators) take 0")
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
