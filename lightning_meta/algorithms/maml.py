"""MAML (Finn et al. 2017), first-order MAML, and the MAML++ options (Antoniou et al. 2019)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, optional_positive, require_positive
from lightning_meta.inner_loop import (
    Forward,
    Graph,
    Params,
    Update,
    adapt,
    multi_step_weights,
    sub_params,
    supervised_loss,
)
from lightning_meta.inner_updates import (
    InnerOptimizer,
    StepSizeKind,
    StepSizes,
    check_inner_optimizer,
    inner_optimizer_rule,
)
from lightning_meta.models.backbone import build_module


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning: learn an initialisation that adapts in a few gradient steps.

    Each task adapts the backbone with ``inner_steps`` steps of SGD (``inner_lr``; or momentum SGD,
    Nesterov, Adam: ``inner_optimizer``) on its support set; the meta-loss is the adapted model's loss
    on the query set, differentiated through the adaptation (second order) or not
    (``first_order=True``, FOMAML).  Evaluation adapts with
    ``test_inner_steps`` steps from the meta-learned weights and reports the query accuracy (or
    MSE) before and after adaptation.

    MAML++ options: ``step_sizes="per_layer_per_step"`` (learned per-layer per-step rates, LSLR),
    ``multi_step_loss=True`` (query loss after every step, annealed towards the last over
    ``multi_step_loss_epochs``), ``first_order_epochs`` (first-order for the first epochs).
    BatchNorm in the backbone uses the statistics of each batch, as MAML does.

    Inner optimizers: ``inner_optimizer="momentum"``/``"nesterov"`` (``inner_momentum``) or ``"adam"``
    (``inner_betas``, ``inner_eps``), each with L2 ``inner_weight_decay``, as ``torch.optim`` computes them
    (:mod:`lightning_meta.inner_updates`); the meta-gradient goes through the chosen update (second order
    unless ``first_order``), optimizer state fresh for every task.  Learned rates (``step_sizes``) work with
    every optimizer; learned momenta (``momentum_sizes``) with ``momentum`` and ``nesterov``.

    Args:
        backbone: the learner, e.g. ``Conv4`` or ``MLP`` (or a ``{"class_path", "init_args"}`` dict).
        inner_lr: inner-loop step size (initial value when learned).
        inner_steps: inner-loop steps in meta-training.
        test_inner_steps: inner-loop steps at validation and test (default: ``inner_steps``).
        first_order: drop second-order terms of the meta-gradient (FOMAML).
        step_sizes: ``"fixed"`` (``inner_lr``), or learned rates initialised to ``inner_lr``: ``"scalar"``
            (one), ``"per_layer"`` (one per adapted tensor), ``"per_step"`` (one per inner step),
            ``"per_parameter"`` (one per weight, Meta-SGD) or ``"per_layer_per_step"`` (MAML++ LSLR).
        multi_step_loss: meta-train on the query loss after every inner step (MAML++).
        multi_step_loss_epochs: epochs over which the multi-step weights anneal towards the last step.
        first_order_epochs: train first-order for this many epochs, then second-order (MAML++).
        inner_optimizer: ``"sgd"`` (MAML), ``"momentum"``, ``"nesterov"`` or ``"adam"``.
        inner_momentum: the momentum of ``"momentum"`` and ``"nesterov"``, in [0, 1) (initial value when learned).
        inner_betas: Adam's ``(beta1, beta2)``, each in [0, 1).
        inner_eps: Adam's epsilon.
        inner_weight_decay: L2 weight decay added to the inner gradient (``torch.optim``'s ``weight_decay``).
        momentum_sizes: the momentum, fixed (``"fixed"``) or learned with a kind of ``step_sizes``
            (``momentum_sizes.rates.{i}``); only with ``inner_optimizer`` ``"momentum"`` or ``"nesterov"``.
        Remaining arguments (``batching``, ``chunk_size``, ``outer_lr``, ``gradient_clip_val``,
        ``accumulate_grad_batches``): see :class:`~lightning_meta.algorithms.base.MetaLearner`.

    The adapted network is ``self.backbone`` (checkpoints from before it was renamed from ``model`` load:
    :attr:`renamed_prefixes`).  The inner loop runs through :func:`lightning_meta.inner_loop.adapt`.

    Hooks to override: :meth:`inner_loss` (the support loss adapted on), :meth:`query_loss` (the
    meta-objective), :meth:`prepare_task` (what is adapted and on which inputs), :meth:`inner_update`
    (the update rule).

    References:
        Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks." ICML 2017.
        Antoniou, Edwards, Storkey. "How to train your MAML." ICLR 2019.

    Example::

        from lightning_meta import MAML
        from lightning_meta.models import MLP
        from lightning_meta.data import SinusoidDataModule

        model = MAML(MLP(1, 1, (40, 40)), inner_lr=0.01, inner_steps=1, test_inner_steps=10)
        # Adam in the inner loop, a learned rate per layer and step:
        model = MAML(MLP(1, 1, (40, 40)), inner_lr=0.01, inner_steps=3, inner_optimizer="adam",
                     step_sizes="per_layer_per_step")
        pl.Trainer(max_epochs=10, inference_mode=False).fit(model, SinusoidDataModule())
    """

    renamed_prefixes = {"model.": "backbone."}

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        test_inner_steps: Optional[int] = None,
        first_order: bool = False,
        step_sizes: StepSizeKind = "fixed",
        multi_step_loss: bool = False,
        multi_step_loss_epochs: int = 10,
        first_order_epochs: int = 0,
        inner_optimizer: InnerOptimizer = "sgd",
        inner_momentum: float = 0.9,
        inner_betas: tuple[float, float] = (0.9, 0.999),
        inner_eps: float = 1e-8,
        inner_weight_decay: float = 0.0,
        momentum_sizes: StepSizeKind = "fixed",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        require_positive(MODEL_ARGS + "inner_lr", inner_lr, integer=False)
        require_positive(MODEL_ARGS + "inner_steps", inner_steps)
        optional_positive(MODEL_ARGS + "test_inner_steps", test_inner_steps)
        require_positive(MODEL_ARGS + "multi_step_loss_epochs", multi_step_loss_epochs)
        require_positive(MODEL_ARGS + "first_order_epochs", first_order_epochs, allow_zero=True)
        betas = check_inner_optimizer(inner_optimizer, inner_momentum, inner_betas, inner_eps, inner_weight_decay)
        if momentum_sizes != "fixed" and inner_optimizer not in ("momentum", "nesterov"):
            raise ConfigurationError(
                f"{MODEL_ARGS}momentum_sizes={momentum_sizes!r} learns a momentum, which "
                f"{MODEL_ARGS}inner_optimizer={inner_optimizer!r} has not: use momentum or nesterov, or fixed")
        self.backbone = build_module(backbone)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.test_inner_steps = test_inner_steps or inner_steps
        self.first_order = first_order
        self.multi_step_loss = multi_step_loss
        self.multi_step_loss_epochs = multi_step_loss_epochs
        self.first_order_epochs = first_order_epochs
        self.inner_optimizer = inner_optimizer
        self.inner_momentum = float(inner_momentum)
        self.inner_betas = betas
        self.inner_eps = float(inner_eps)
        self.inner_weight_decay = float(inner_weight_decay)
        shapes = {name: p.shape for name, p in self.backbone.named_parameters() if self.is_adapted(name)}
        if not shapes:
            raise ConfigurationError(f"{type(self).__name__} adapts no parameter of the backbone")
        self.step_sizes = StepSizes(shapes, inner_steps, inner_lr, step_sizes)
        self.momentum_sizes = StepSizes(shapes, inner_steps, inner_momentum, momentum_sizes,
                                        field=MODEL_ARGS + "momentum_sizes")

    # ------------------------------------------------------------------ hooks
    def is_adapted(self, name: str) -> bool:
        """Whether backbone parameter ``name`` is adapted in the inner loop (all of them in MAML)."""
        return True

    def inner_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The support-set loss the inner loop descends (cross-entropy or MSE)."""
        return self.loss(predictions, targets)

    def query_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The query-set loss after adaptation: the meta-objective."""
        return self.loss(predictions, targets)

    def prepare_task(self, params: Params, support_x: Tensor, query_x: Tensor) -> tuple[Params, Forward, Tensor, Tensor]:
        """Split the backbone for one task: ``(fast weights, forward(fast, inputs), support inputs, query inputs)``.

        MAML adapts every weight on the raw inputs; ANIL overrides this to adapt the head on body
        features computed once.
        """
        return params, lambda p, x: functional_call(self.backbone, p, (x,)), support_x, query_x

    def inner_update(self, params: Params) -> Update:
        """The inner-loop update rule, given the meta-parameters ``params`` (``named_parameters`` keys):
        the ``inner_optimizer`` (:func:`~lightning_meta.inner_updates.inner_optimizer_rule`) with the rates
        of ``step_sizes`` and the momenta of ``momentum_sizes`` (learned ones read from ``params``, so they
        get meta-gradients).  Override to adapt with another rule of :mod:`lightning_meta.inner_updates`."""
        return inner_optimizer_rule(self.inner_optimizer, self.step_sizes.bind(sub_params(params, "step_sizes")),
                                    self.momentum_sizes.bind(sub_params(params, "momentum_sizes")),
                                    self.inner_betas, self.inner_eps, self.inner_weight_decay)

    # ------------------------------------------------------------------ the MetaLearner contract
    @property
    def uses_first_order(self) -> bool:
        return self.first_order or self.current_epoch < self.first_order_epochs

    def training_objective(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor) -> tuple[Tensor, Tensor]:
        graph: Graph = "first_order" if self.uses_first_order else "second_order"
        trajectory, forward, query_in = self.adapt_task(params, support_x, support_y, query_x, self.inner_steps, graph)
        predictions = forward(trajectory[-1], query_in)
        if not self.multi_step_loss:
            return self.query_loss(predictions, query_y), predictions
        weights = multi_step_weights(self.inner_steps, self.current_epoch, self.multi_step_loss_epochs)
        losses = [self.query_loss(forward(p, query_in), query_y) for p in trajectory[1:-1]]
        losses.append(self.query_loss(predictions, query_y))
        return sum(w * loss for w, loss in zip(weights.tolist(), losses)), predictions

    def adapt_task(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int,
                   graph: Graph) -> tuple[list[Params], Forward, Tensor]:
        """One task's adaptation from the meta-parameters ``params``: ``(weights after 0..steps steps, forward,
        query inputs)``, differentiable as ``graph`` says (see :func:`lightning_meta.inner_loop.adapt`)."""
        fast, forward, support_in, query_in = self.prepare_task(sub_params(params, "backbone"), support_x, query_x)
        support_loss = supervised_loss(forward, support_in, support_y, self.inner_loss)
        trajectory = adapt(support_loss, fast, steps, self.inner_update(params), graph, self.inner_loss_scale)
        return trajectory, forward, query_in

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, Tensor]:
        trajectory, forward, query_in = self._evaluation_trajectory(support_x, support_y, query_x,
                                                                    self.test_inner_steps)
        return forward(trajectory[-1], query_in).detach(), forward(trajectory[0], query_in).detach()

    def adaptation_predictions(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                               steps: Optional[int] = None) -> Tensor:
        """Query predictions ``[steps + 1, M, ...]`` of one task after 0, 1, ..., ``steps`` inner steps.

        ``steps`` defaults to ``test_inner_steps``.  The task adapts as :meth:`evaluate_task` adapts it
        (no graph, from the detached meta-learned weights), so entry 0 is its prediction before
        adaptation and entry ``test_inner_steps`` its prediction after.  Needs gradients (not under
        ``torch.inference_mode()``); works under ``torch.func.vmap`` like :meth:`evaluate_task`.
        :class:`~lightning_meta.callbacks.AdaptationCurve` draws the accuracy (MSE) after each step
        from it; any learner with this method gets adaptation curves.

        Example::

            with torch.enable_grad():
                curve = model.adaptation_predictions(task.support_x, task.support_y, task.query_x)
            [(p.argmax(-1) == task.query_y).float().mean().item() for p in curve]   # accuracy per step
        """
        trajectory, forward, query_in = self._evaluation_trajectory(
            support_x, support_y, query_x, self.test_inner_steps if steps is None else steps)
        return torch.stack([forward(p, query_in).detach() for p in trajectory])

    def _evaluation_trajectory(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                               steps: int) -> tuple[list[Params], Forward, Tensor]:
        """Evaluation-time adaptation of one task, from the detached meta-learned weights."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return self.adapt_task(params, support_x, support_y, query_x, steps, "none")

    def probe(self, x: Tensor) -> Union[Tensor, None]:
        return self.backbone(x)
