"""Reptile (Nichol, Achiam, Schulman 2018): move the initialisation towards each task's fine-tuned weights."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.data.episodes import episode_generator
from lightning_meta.data.sequences import OrderedTasks, episode_addresses
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, optional_positive, require_positive
from lightning_meta.inner_loop import (
    Forward,
    Params,
    Update,
    adapt,
    example_order,
    has_batchnorm,
    interpolation_loss,
    sub_params,
    supervised_loss,
)
from lightning_meta.inner_updates import InnerOptimizer, check_inner_optimizer, inner_optimizer_rule
from lightning_meta.models.backbone import build_module
from lightning_meta.models.norm import require_norm_statistics
from lightning_meta.tasks import TaskBatch

#: salt of the generators that order the inner-loop mini-batches (distinct from the episode sampler's)
INNER_BATCH_SEED = 20180308

#: at most this many images per vectorised chunk in non-transductive evaluation (support + one query each)
GROUP_IMAGES = 1024


class Reptile(MetaLearner):
    """Reptile: fine-tune a copy of the weights on each task, then move the weights towards the copies.

    For each task of a meta-batch the inner loop starts from the meta-learned weights ``theta`` and
    takes ``inner_steps`` steps of SGD or Adam on mini-batches of the task's examples, giving
    ``phi_i``.  The outer update is ``theta <- theta + epsilon * mean_i(phi_i - theta)``: Reptile
    treats ``theta - phi_i`` as a gradient.  It is handed to Lightning as the surrogate loss
    ``sum((p * (p - phi).detach()).sum())`` through ``manual_backward`` (whose gradient is exactly
    ``theta - phi``), so the default SGD outer optimiser with learning rate ``outer_lr`` (epsilon)
    performs the Reptile update, and any ``--optimizer``/``--lr_scheduler``, ``gradient_clip_val``,
    mixed precision and DDP's all-reduce apply unchanged.  ``outer_lr_final`` anneals epsilon
    linearly to that value over the run, as the paper does (to 0).  The logged ``train/loss`` is the
    query loss of ``phi_i`` (a training loss when the query set is trained on, see below).

    Inner optimiser: a functional, first-order SGD or Adam (:class:`~lightning_meta.inner_updates.SGD`,
    :class:`~lightning_meta.inner_updates.Adam`) on the parameter dict through the engine's
    :func:`~lightning_meta.inner_loop.adapt` (``graph="none"``), not ``torch.optim`` on a per-task copy
    of the module.  Reptile never differentiates through the
    inner loop, so either would be correct; the functional one keeps the module unmutated (no
    deep copy per task), runs the tasks of a meta-batch under ``vmap`` (sinusoid MLPs) as well as in
    a loop, and protects fp16 inner gradients with the Trainer's loss scale.  The paper's Adam
    has ``beta1 = 0``; its moments are reset for every task here.  (The reference code keeps the
    second moments and step count of one TensorFlow Adam across tasks; a task's adaptation would
    then depend on the tasks trained before it, on the same rank, which breaks the equality of
    DDP and vmap with one looped process.)

    Inner batches: the paper meta-trains on ``train_shots`` examples per class (more than the
    test shots) in mini-batches of ``inner_batch_size`` drawn by shuffling the examples, epoch
    after epoch (a batch can span two epochs), and has no query set in training.  With
    ``train_on_query=True`` (default) the inner loop trains on the support and query examples
    pooled, so ``shots + queries`` plays the role of ``train_shots`` (5 + 5 for the paper's 10 on
    Omniglot).  Evaluation fine-tunes on the support set only, ``test_inner_steps`` steps of
    ``test_inner_batch_size``.  ``None`` (or a size at least the set's) uses the whole set at every
    step.  The shuffles are a pure function of the episode's address (index and epoch), so they are
    the same in loop and vmap mode, across DDP world sizes and on resume.

    Evaluation and BatchNorm: BatchNorm uses the statistics of the batch it sees, in the inner loop
    as at evaluation (``track_running_stats=False``, as MAML).  With ``transductive=False``
    (default) each query is predicted in a batch of the support set plus that query alone, as the
    reference code does: a query's prediction depends on the support set and itself, never on the
    other queries.  With ``transductive=True`` all queries are predicted in one batch, so the
    BatchNorm statistics are those of the query set (the paper's transductive setting, and what
    MAML's evaluation does).  Models without BatchNorm predict every query independently either way.
    The flag is a hyper-parameter (saved and logged by every logger) and logged with each result
    as ``val/transductive`` / ``test/transductive`` (1.0 or 0.0); ``test`` prints it beside the
    summary.

    Args:
        backbone: the learner, e.g. ``Conv4`` or ``MLP`` (or a ``{"class_path", "init_args"}`` dict).
            BatchNorm must use batch statistics (``Conv4(batch_norm_stats="batch")``).
        inner_lr: inner-loop learning rate (Adam or SGD).
        inner_steps: inner-loop steps per task in meta-training.
        test_inner_steps: inner-loop steps at validation, test and prediction (default: ``inner_steps``).
        inner_optimizer: ``"adam"`` or ``"sgd"`` (also ``"momentum"``, ``"nesterov"``, the rules MAML takes).
        inner_betas: Adam's ``(beta1, beta2)``; the paper uses ``beta1 = 0``.
        inner_eps: Adam's epsilon.
        inner_momentum: the momentum of ``"momentum"`` and ``"nesterov"``, in [0, 1).
        inner_weight_decay: L2 weight decay added to the inner gradient (``torch.optim``'s ``weight_decay``).
        inner_batch_size: examples per inner step in meta-training (``None``: all of them).
        test_inner_batch_size: examples per inner step at evaluation (default: ``inner_batch_size``).
        train_on_query: meta-train the inner loop on support and query examples pooled.
        transductive: BatchNorm statistics over all queries at evaluation (see above).
        outer_lr: epsilon, the learning rate of the default SGD outer optimiser.
        outer_lr_final: anneal epsilon linearly from ``outer_lr`` to this value over the run
            (``trainer.max_steps``, or ``max_epochs`` batches); ``None``: constant.
        Remaining arguments (``batching``, ``chunk_size``, ``gradient_clip_val``,
        ``accumulate_grad_batches``): see :class:`~lightning_meta.algorithms.base.MetaLearner`.

    The adapted network is ``self.backbone`` (checkpoints from before it was renamed from ``model`` load:
    :attr:`renamed_prefixes`).

    Hooks to override: :meth:`inner_loss` (the loss the inner loop descends), :meth:`inner_update` (the
    inner optimiser), :meth:`adapt`.

    References:
        Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms." arXiv:1803.02999, 2018.
        Reference code: https://github.com/openai/supervised-reptile

    Example::

        import pytorch_lightning as pl
        from lightning_meta.algorithms.reptile import Reptile
        from lightning_meta.data import OmniglotDataModule
        from lightning_meta.models import Conv4

        model = Reptile(Conv4(1, 5), inner_lr=1e-3, inner_steps=5, test_inner_steps=50, inner_batch_size=10,
                        test_inner_batch_size=5, outer_lr=1.0, outer_lr_final=0.0)
        data = OmniglotDataModule("data", download=True, ways=5, shots=5, queries=5, meta_batch_size=5)
        pl.Trainer(max_steps=100_000, inference_mode=False).fit(model, data)
    """

    renamed_prefixes = {"model.": "backbone."}

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        test_inner_steps: Optional[int] = None,
        inner_optimizer: InnerOptimizer = "adam",
        inner_betas: tuple[float, float] = (0.0, 0.999),
        inner_eps: float = 1e-8,
        inner_batch_size: Optional[int] = None,
        test_inner_batch_size: Optional[int] = None,
        train_on_query: bool = True,
        transductive: bool = False,
        outer_lr: float = 1.0,
        outer_lr_final: Optional[float] = None,
        inner_momentum: float = 0.9,
        inner_weight_decay: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(outer_lr=outer_lr, **kwargs)
        require_positive(MODEL_ARGS + "inner_lr", inner_lr, integer=False)
        require_positive(MODEL_ARGS + "inner_steps", inner_steps)
        optional_positive(MODEL_ARGS + "test_inner_steps", test_inner_steps)
        optional_positive(MODEL_ARGS + "inner_batch_size", inner_batch_size)
        optional_positive(MODEL_ARGS + "test_inner_batch_size", test_inner_batch_size)
        betas = check_inner_optimizer(inner_optimizer, inner_momentum, inner_betas, inner_eps, inner_weight_decay)
        if outer_lr_final is not None:
            require_positive(MODEL_ARGS + "outer_lr_final", outer_lr_final, allow_zero=True, integer=False)
            if outer_lr_final > outer_lr:
                raise ConfigurationError(
                    f"{MODEL_ARGS}outer_lr_final={outer_lr_final} is larger than {MODEL_ARGS}outer_lr={outer_lr}: it "
                    "is the value epsilon is annealed down to (the paper anneals 1.0 to 0.0)")
        for name, value in (("train_on_query", train_on_query), ("transductive", transductive)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{MODEL_ARGS}{name}={value!r} must be true or false")
        self.backbone = build_module(backbone)
        require_norm_statistics(self.backbone, running=False, field=MODEL_ARGS + "backbone",
                                why="the inner loop would update running statistics in place and mix them across "
                                    "tasks; Reptile normalises with batch statistics")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.test_inner_steps = test_inner_steps or inner_steps
        self.inner_optimizer = inner_optimizer
        self.inner_betas = betas
        self.inner_eps = inner_eps
        self.inner_momentum = float(inner_momentum)
        self.inner_weight_decay = float(inner_weight_decay)
        self.inner_batch_size = inner_batch_size
        self.test_inner_batch_size = test_inner_batch_size or inner_batch_size
        self.train_on_query = train_on_query
        self.transductive = transductive
        self.outer_lr_final = outer_lr_final
        self.normalises_over_batch = has_batchnorm(self.backbone)

    # ------------------------------------------------------------------ hooks
    def inner_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The loss the inner loop descends (cross-entropy or MSE)."""
        return self.loss(predictions, targets)

    def forward_fn(self) -> Forward:
        """``forward(params, inputs)``: the backbone run with the weights ``params`` (no mutation)."""
        return lambda p, x: functional_call(self.backbone, p, (x,))

    def inner_update(self, params: Params) -> Update:
        """The inner optimiser of ``inner_optimizer`` (:func:`~lightning_meta.inner_updates.inner_optimizer_rule`,
        as MAML's): SGD with ``inner_lr``, or Adam with ``inner_lr``, ``inner_betas`` and ``inner_eps`` (moments
        fresh for every task), or momentum SGD.  ``params`` are the weights the task adapts from; Reptile
        learns no hyper-parameter of the rule, so it reads none from them."""
        return inner_optimizer_rule(self.inner_optimizer, self.inner_lr, self.inner_momentum, self.inner_betas,
                                    self.inner_eps, self.inner_weight_decay)

    def adapt(self, params: Params, x: Tensor, y: Tensor, order: Tensor, steps: int) -> Params:
        """``steps`` first-order steps of the inner optimiser from ``params`` on ``(x, y)``.

        Step ``j`` trains on the examples ``order[j * b:(j + 1) * b]`` with ``b = len(order) // steps``
        (see :func:`~lightning_meta.inner_loop.example_order`).  The returned weights carry no graph to
        ``params``.
        """
        support_loss = supervised_loss(self.forward_fn(), x, y, self.inner_loss, order.reshape(steps, -1))
        return adapt(support_loss, params, steps, self.inner_update(params), "none", self.inner_loss_scale)[-1]

    def predict_queries(self, params: Params, support_x: Tensor, query_x: Tensor) -> Tensor:
        """Query predictions with the weights ``params``, BatchNorm as set by ``transductive``.

        Non-transductive with BatchNorm: each query in a batch of the support set and itself
        (vectorised over queries).  Otherwise all queries in one batch.
        """
        forward = self.forward_fn()
        if self.transductive or not self.normalises_over_batch:
            return forward(params, query_x)

        def one(query: Tensor) -> Tensor:
            return forward(params, torch.cat([support_x, query.unsqueeze(0)]))[-1]

        chunk = max(1, GROUP_IMAGES // (support_x.shape[0] + 1))
        return vmap(one, chunk_size=chunk)(query_x)

    # ------------------------------------------------------------------ the MetaLearner contract
    def training_objective(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor, order: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """A loss whose gradient w.r.t. ``params`` is ``theta - phi`` and whose value is the query loss of ``phi``."""
        x, y = self._training_set(support_x, support_y, query_x, query_y)
        if order is None:
            order = example_order(x.shape[0], self.inner_steps, self.inner_batch_size,
                                  torch.default_generator).to(x.device)
        theta = sub_params(params, "backbone")
        phi = self.adapt(theta, x, y, order, self.inner_steps)
        predictions = self.forward_fn()(phi, query_x)
        query_loss = self.loss(predictions, query_y).detach()
        return query_loss + interpolation_loss(theta, phi), predictions.detach()

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                      order: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if order is None:  # a single task (prediction): a fixed shuffle
            order = example_order(support_x.shape[0], self.test_inner_steps, self.test_inner_batch_size,
                                  episode_generator(INNER_BATCH_SEED, "test", 0)).to(support_x.device)
        theta = {name: p.detach() for name, p in self.backbone.named_parameters()}
        phi = self.adapt(theta, support_x, support_y, order, self.test_inner_steps)
        after = self.predict_queries(phi, support_x, query_x).detach()
        before = self.predict_queries(theta, support_x, query_x).detach()
        return after, before

    def probe(self, x: Tensor) -> Union[Tensor, None]:
        return self.backbone(x)

    # ------------------------------------------------------------------ mini-batch orders
    def _training_set(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, Tensor]:
        if not self.train_on_query:
            return support_x, support_y
        return torch.cat([support_x, query_x]), torch.cat([support_y, query_y])

    def _with_order(self, batch: TaskBatch, stage: str) -> OrderedTasks:
        if stage == "train":
            size = batch.support_x.shape[1] + (batch.query_x.shape[1] if self.train_on_query else 0)
            steps, batch_size, epoch = self.inner_steps, self.inner_batch_size, self.current_epoch
        else:
            size, steps, batch_size, epoch = batch.support_x.shape[1], self.test_inner_steps, \
                self.test_inner_batch_size, None
        addresses = episode_addresses(batch, fallback_start=self.global_step * batch.num_tasks)
        split = "train" if stage == "train" else "test"
        orders = torch.stack([
            example_order(size, steps, batch_size, episode_generator(INNER_BATCH_SEED, split, a, epoch))
            for a in addresses])
        return OrderedTasks(*batch.tensors(), index=batch.index, order=orders.to(batch.support_x.device))

    def outer_backward(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        return super().outer_backward(self._with_order(batch, "train"))

    def evaluate_batch(self, batch: TaskBatch) -> tuple[Tensor, Optional[Tensor]]:
        return super().evaluate_batch(self._with_order(batch, "eval"))

    # ------------------------------------------------------------------ optimisation and records
    def make_optimizer(self, group: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        """SGD with learning rate ``outer_lr`` (epsilon): a step on :func:`interpolation_loss` is Reptile's update."""
        return torch.optim.SGD(parameters, lr=self.outer_lr)

    def make_scheduler(self, group: str, optimizer: torch.optim.Optimizer) -> Optional[dict[str, Any]]:
        """Epsilon annealed linearly to ``outer_lr_final`` over the run's outer steps, if set."""
        if self.outer_lr_final is None:
            return None
        end = self.outer_lr_final / self.outer_lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 + (end - 1.0) * min(step / self.outer_steps_planned(), 1.0))
        return {"scheduler": schedule, "interval": "step"}

    def outer_steps_planned(self) -> float:
        """The run's outer steps (``inf`` until the Trainer knows its batches), read when the schedule steps, not
        when ``configure_optimizers`` makes it (see :meth:`require_run_length`)."""
        planned = self.planned_batches()
        return max(1, math.ceil(planned / self.accumulate_grad_batches)) if math.isfinite(planned) else math.inf

    def on_train_start(self) -> None:
        """Refuse an annealed epsilon over a run without an end, before the first batch (:meth:`require_run_length`)."""
        super().on_train_start()
        if self.outer_lr_final is not None:
            self.require_run_length(f"{MODEL_ARGS}outer_lr_final (epsilon annealed over the whole run)")

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        summary = super().log_results(stage)
        if summary:
            self.log(f"{stage}/transductive", float(self.transductive), sync_dist=False)
            if stage == "test":
                how = ("transductive: BatchNorm statistics over all queries of an episode" if self.transductive else
                       "non-transductive: each query predicted with BatchNorm statistics of the support set and "
                       "itself" if self.normalises_over_batch else "non-transductive (no BatchNorm)")
                rank_zero_info(f"Reptile evaluation: transductive={self.transductive} ({how}), "
                               f"{self.test_inner_steps} inner steps")
        return summary
