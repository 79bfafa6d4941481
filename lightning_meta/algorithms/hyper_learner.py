"""``HyperparameterLearner``: hyper-parameters learned by gradient through whole training runs.

One outer step is one (or a meta-batch of) unrolled training run(s): the inner model is trained from scratch
(initialisation and mini-batch order seeded per run by the data, :class:`~lightning_meta.data.digits.RunBatch`)
for ``inner_steps`` steps of an inner optimizer whose hyper-parameters are the learner's parameters; the
validation loss after training is differentiated w.r.t. them by :func:`~lightning_meta.hypergradients.hypergradient`
(``mode`` reverse / forward / implicit, ``checkpoint_every``), and the outer optimizer (Adam at ``outer_lr``)
takes one step through the root's :meth:`~lightning_meta.algorithms.learner.Learner.outer_step`, so DDP
(runs split across ranks, hypergradients averaged), accumulation and ``gradient_clip_val`` (hypergradient
norm clipping) apply.

What is learned, each through a transform that keeps it valid:

* ``learn_lr``: the inner rate, ``exp`` of a learned log-rate, ``scalar``, ``per_step``, ``per_layer`` (one per
  parameter tensor) or ``per_layer_per_step`` (Maclaurin et al. 2015's schedules); ``fixed``: ``inner_lr``.
* ``learn_momentum``: the momentum of ``inner_optimizer: momentum | nesterov``, ``sigmoid`` of a learned logit,
  same granularities.
* ``learn_example_weights``: one weight in [0, 1] per training example (``sigmoid`` of a learned logit), the
  training loss ``mean_i w_i * loss_i`` (data hyper-cleaning, Franceschi et al. 2017).

Keep-best-on-validation (``keep_best``): at each validation the hyper-parameters are scored by fixed seeded
runs (``val/loss``); the best so far are kept (``best_hyper``, in checkpoints) and ``test`` uses them.  Test
logs ``test/loss`` and ``test/acc`` of runs trained with them and, with example weights,
``test/retrained_loss`` and ``test/retrained_acc`` of runs trained (without weights) on the examples weighted
above 0.5 together with the validation set, as Franceschi et al. compare with an oracle trained on the clean
training and the validation examples; with label noise, ``test/keep_precision`` and ``test/keep_recall``: of
the examples weighted above 0.5, the fraction whose labels are clean, and of the clean examples, the fraction
weighted above 0.5.

References: Maclaurin, Duvenaud & Adams 2015, "Gradient-based hyperparameter optimization through
reversible learning"; Franceschi et al. 2017, "Forward and reverse gradient-based hyperparameter
optimization"; Lorraine et al. 2020 (implicit).

Example::

    model = HyperparameterLearner(MLP(64, 10, (100, 100)), inner_steps=100, inner_batch_size=100,
                                  inner_optimizer="momentum", inner_lr=0.1, learn_lr="per_layer_per_step",
                                  learn_momentum="per_layer_per_step", outer_lr=0.05, gradient_clip_val=1.0)
    trainer = pl.Trainer(max_steps=60, inference_mode=False)
    trainer.fit(model, DigitsDataModule(train_samples=1000, val_samples=400, test_samples=397))
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.learner import Learner
from lightning_meta.errors import (
    MODEL_ARGS,
    ConfigurationError,
    optional_positive,
    require_choice,
    require_positive,
)
from lightning_meta.hypergradients import (
    HyperGradient,
    Mode,
    TrainLoss,
    ValLoss,
    bind_update,
    hypergradient,
    train,
)
from lightning_meta.inner_loop import Params, Update, example_order
from lightning_meta.inner_updates import (
    InnerOptimizer,
    check_inner_optimizer,
    inner_optimizer_rule,
)
from lightning_meta.internals import attached_trainer
from lightning_meta.models.backbone import build_module

#: how finely a rate or momentum is learned (``fixed``: not learned)
Granularity = Literal["fixed", "scalar", "per_step", "per_layer", "per_layer_per_step"]
Init = Literal["default", "zeros"]
#: the learned hyper-parameters: their name in ``hyper`` (hypergradient's), and the transform of the raw parameter
HYPER_KEYS = {"lr": "update.lr", "momentum": "update.momentum", "example_weights": "weights"}


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class HyperparameterLearner(Learner):
    """Learns an inner optimizer's rates and momenta, or per-example weights, by hypergradients through
    unrolled training runs (see the module docstring).

    Args:
        model: the inner model (e.g. ``MLP(64, 10, (100, 100))``; ``MLP(64, 10, ())`` is softmax regression),
            trained from scratch in every run; its own weights are never trained.
        inner_steps: steps of each training run (``T``).
        inner_batch_size: examples per inner step (mini-batches of a seeded order); ``None``: the whole set.
        inner_optimizer: ``sgd``, ``momentum``, ``nesterov`` or ``adam`` (the differentiable rules of
            :mod:`lightning_meta.inner_updates`).
        inner_lr / inner_momentum: their values when fixed, and the starting point when learned.
        learn_lr / learn_momentum: granularity of the learned rate / momentum (``fixed``: not learned).
        learn_example_weights: learn one weight in [0, 1] per training example.
        example_weight_init: the starting weight of every example, in (0, 1).
        inner_init: ``default`` (the model's own initialisation, seeded per run) or ``zeros`` (convex models).
        mode: ``reverse``, ``forward`` or ``implicit`` (training-loss hyper-parameters only: example weights).
        checkpoint_every: reverse mode keeps the parameters every this many steps and one segment's graph at
            a time (``None``: one graph over the whole run).
        keep_best: test with the hyper-parameters of the best validation loss (else the last).
        outer_lr, gradient_clip_val, accumulate_grad_batches: the root's (Adam on the hyper-parameters;
            ``gradient_clip_val`` clips the hypergradient's norm).
    """

    selection_metric = "loss"
    selection_mode = "min"
    fractions = ("acc", "retrained_acc", "keep_precision", "keep_recall")
    summary_names = ("loss", "acc", "retrained_loss", "retrained_acc", "keep_precision", "keep_recall")
    evaluation_needs_grad = True
    throughput_unit = "runs"

    def __init__(self, model: Union[nn.Module, dict[str, Any]], inner_steps: int = 100,
                 inner_batch_size: Optional[int] = 100,
                 inner_optimizer: InnerOptimizer = "momentum", inner_lr: float = 0.1, inner_momentum: float = 0.9,
                 learn_lr: Granularity = "per_layer_per_step", learn_momentum: Granularity = "fixed",
                 learn_example_weights: bool = False, example_weight_init: float = 0.5, inner_init: Init = "default",
                 mode: Mode = "reverse", checkpoint_every: Optional[int] = None, keep_best: bool = True,
                 outer_lr: float = 0.05, gradient_clip_val: Optional[float] = None, accumulate_grad_batches: int = 1):
        super().__init__(outer_lr=outer_lr, gradient_clip_val=gradient_clip_val,
                         accumulate_grad_batches=accumulate_grad_batches)
        require_positive(MODEL_ARGS + "inner_steps", inner_steps)
        optional_positive(MODEL_ARGS + "inner_batch_size", inner_batch_size)
        optional_positive(MODEL_ARGS + "checkpoint_every", checkpoint_every)
        require_positive(MODEL_ARGS + "inner_lr", inner_lr, integer=False)
        check_inner_optimizer(inner_optimizer, inner_momentum)
        require_choice(MODEL_ARGS + "learn_lr", learn_lr, Granularity)
        require_choice(MODEL_ARGS + "learn_momentum", learn_momentum, Granularity)
        require_choice(MODEL_ARGS + "inner_init", inner_init, Init)
        require_choice(MODEL_ARGS + "mode", mode, Mode)
        if learn_momentum != "fixed" and inner_optimizer not in ("momentum", "nesterov"):
            raise ConfigurationError(
                f"{MODEL_ARGS}learn_momentum={learn_momentum!r}: {MODEL_ARGS}inner_optimizer={inner_optimizer!r} has"
                " no momentum to learn; use inner_optimizer momentum or nesterov, or learn_momentum fixed")
        if learn_momentum != "fixed" and not 0 < inner_momentum < 1:
            raise ConfigurationError(f"{MODEL_ARGS}inner_momentum={inner_momentum!r} is invalid for a learned momentum:"
                                     " it must be in (0, 1)")
        if not (isinstance(example_weight_init, (int, float)) and 0 < example_weight_init < 1):
            raise ConfigurationError(f"{MODEL_ARGS}example_weight_init={example_weight_init!r} is invalid: it must be"
                                     " in (0, 1)")
        if mode == "implicit" and (learn_lr != "fixed" or learn_momentum != "fixed"):
            raise ConfigurationError(
                f"{MODEL_ARGS}mode='implicit' differentiates the optimum of the training loss, which the optimizer's"
                " rate and momentum do not move: use mode reverse or forward, or set learn_lr and learn_momentum to"
                " fixed")
        if learn_lr == "fixed" and learn_momentum == "fixed" and not learn_example_weights:
            raise ConfigurationError(
                f"{MODEL_ARGS}learn_lr, learn_momentum and learn_example_weights leave nothing to learn: choose a"
                " granularity for learn_lr or learn_momentum, or set learn_example_weights true")
        self.model = build_module(model)  # a {"class_path", "init_args"} spec when loaded from a checkpoint
        self.model.requires_grad_(False)  # a template: every run trains a seeded copy of its parameters
        self.inner_steps, self.inner_batch_size = inner_steps, inner_batch_size
        self.inner_optimizer, self.inner_lr, self.inner_momentum = inner_optimizer, inner_lr, inner_momentum
        self.granularity = {"lr": learn_lr, "momentum": learn_momentum}
        self.learn_example_weights, self.example_weight_init = learn_example_weights, example_weight_init
        self.inner_init, self.mode, self.checkpoint_every = inner_init, mode, checkpoint_every
        self.keep_best = keep_best
        self.tensor_names = [name for name, _ in self.model.named_parameters()]
        self.hyper = nn.ParameterDict()
        for name, raw in (("lr", math.log(inner_lr)),
                          ("momentum", logit(inner_momentum) if learn_momentum != "fixed" else 0.0)):
            shape = self.raw_shape(self.granularity[name])
            if shape is not None:
                self.hyper[name] = nn.Parameter(torch.full(shape, raw))
        self.register_buffer("best_val_loss", torch.tensor(math.inf))
        for name, value in self.hyper.items():
            self.register_buffer(f"best_{name}", value.detach().clone())

    # ------------------------------------------------------------------ the hyper-parameters
    def raw_shape(self, granularity: str) -> Optional[tuple[int, ...]]:
        steps, tensors = self.inner_steps, len(self.tensor_names)
        return {"fixed": None, "scalar": (), "per_step": (steps,), "per_layer": (tensors,),
                "per_layer_per_step": (steps, tensors)}[granularity]

    def ensure_example_weights(self, examples: int) -> None:
        """Create the per-example weights for ``examples`` training examples (at setup: the data decide how many)."""
        if not self.learn_example_weights:
            return
        if "example_weights" in self.hyper:
            have = self.hyper["example_weights"].shape[0]
            if have != examples:
                raise ConfigurationError(
                    f"data.init_args.train_samples={examples}, but the learner holds {have} example weights (from its"
                    f" checkpoint): use train_samples={have}")
            return
        raw = torch.full((examples,), logit(self.example_weight_init), device=self.device, dtype=self.dtype_of_model)
        self.hyper["example_weights"] = nn.Parameter(raw)
        self.register_buffer("best_example_weights", raw.clone())

    def outer_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"hyper": list(self.hyper.values())}

    def hyper_values(self, raw: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
        """The hyper-parameters as :func:`~lightning_meta.hypergradients.hypergradient` takes them (``update.lr``
        ``[T, P]`` ..., ``weights [N]``), computed from ``raw`` (default: the learned parameters) with graph."""
        raw = dict(self.hyper.items()) if raw is None else raw
        values = {}
        for name, value in raw.items():
            if name == "example_weights":
                values[HYPER_KEYS[name]] = torch.sigmoid(value)
                continue
            value = value.exp() if name == "lr" else torch.sigmoid(value)
            if self.granularity[name] == "per_layer":  # hypergradient takes [T, P]: the same rates at every step
                value = value.unsqueeze(0).expand(self.inner_steps, -1).contiguous()
            values[HYPER_KEYS[name]] = value
        return values

    def best_raw(self) -> dict[str, Tensor]:
        """The raw hyper-parameters of the best validation loss (the current ones before any validation)."""
        if not torch.isfinite(self.best_val_loss):
            return {name: value.detach() for name, value in self.hyper.items()}
        return {name: getattr(self, f"best_{name}") for name in self.hyper}

    def evaluated_hyper_values(self, testing: bool) -> dict[str, Tensor]:
        """The hyper-parameter values an evaluation trains with (no graph): the best on validation at test
        (``keep_best``), else the current ones."""
        raw = self.best_raw() if testing and self.keep_best else {k: v.detach() for k, v in self.hyper.items()}
        return {key: value.detach() for key, value in self.hyper_values(raw).items()}

    def update_rule(self) -> Update:
        """The inner optimizer with the fixed values; the learned ones are set per step by ``hypergradient``."""
        return inner_optimizer_rule(self.inner_optimizer, self.inner_lr, self.inner_momentum)

    # ------------------------------------------------------------------ one run
    def initial_params(self, seed: int) -> Params:
        """The inner model's parameters at the start of run ``seed``: its own initialisation under that seed
        (drawn on the CPU, whatever the device), or zeros."""
        dtype = next(self.model.parameters()).dtype
        if self.inner_init == "zeros":
            return {name: torch.zeros_like(p) for name, p in self.model.named_parameters()}
        fresh = copy.deepcopy(self.model).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in fresh.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return {name: p.detach().to(device=self.device, dtype=dtype) for name, p in fresh.named_parameters()}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        return torch.func.functional_call(self.model, params, (x,))

    def run_problem(self, batch: Any, run: int, train_set: Optional[tuple[Tensor, Tensor]] = None
                    ) -> tuple[TrainLoss, ValLoss, Params]:
        """The losses and initial parameters of run ``run`` of ``batch``: ``train_loss(params, hyper, step)``
        on the step's mini-batch (example weights from ``hyper["weights"]``), ``val_loss(params, hyper)`` on
        the set that scores the run (validation; test at test).  ``train_set``: train on these inputs and labels
        in place of the batch's training set."""
        seed = int(batch.seed[run])
        x, y = (batch.train_x, batch.train_y) if train_set is None else train_set
        x = x.to(self.dtype_of_model)
        eval_x, eval_y = batch.scored_set(run)
        eval_x = eval_x.to(self.dtype_of_model)
        generator = torch.Generator().manual_seed(seed)
        order = example_order(len(x), self.inner_steps, self.inner_batch_size, generator)
        order = order.reshape(self.inner_steps, -1).to(x.device)
        whole = order.shape[1] == len(x)

        def train_loss(params: Params, hyper: dict[str, Tensor], step: int) -> Tensor:
            chosen = slice(None) if whole else order[step]
            losses = F.cross_entropy(self(params, x[chosen]), y[chosen], reduction="none")
            if "weights" in hyper:
                losses = hyper["weights"][chosen] * losses
            return losses.mean()

        def val_loss(params: Params, hyper: dict[str, Tensor]) -> Tensor:
            return F.cross_entropy(self(params, eval_x), eval_y)

        return train_loss, val_loss, self.initial_params(seed)

    @property
    def dtype_of_model(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def run_hypergradient(self, batch: Any, run: int, hyper: dict[str, Tensor]) -> HyperGradient:
        """The validation loss of run ``run`` of ``batch`` and its hypergradient w.r.t. ``hyper``
        (:meth:`hyper_values`)."""
        train_loss, val_loss, params = self.run_problem(batch, run)
        return hypergradient(train_loss, val_loss, params, hyper, self.update_rule(), self.inner_steps, self.mode,
                             self.checkpoint_every)

    def trained_params(self, batch: Any, run: int, hyper: dict[str, Tensor],
                       train_set: Optional[tuple[Tensor, Tensor]] = None) -> Params:
        """The inner model's parameters after run ``run`` of ``batch`` with the hyper-parameters ``hyper`` (on
        ``train_set`` if given, see :meth:`run_problem`)."""
        train_loss, _, params = self.run_problem(batch, run, train_set)
        hyper = {key: value.detach() for key, value in hyper.items()}
        rule = bind_update(self.update_rule(), hyper, list(params))
        final, _ = train(train_loss, params, hyper, rule, 0, self.inner_steps, None, "none")
        return final

    # ------------------------------------------------------------------ training and evaluation
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        examples = getattr(datamodule, "num_train_examples", None)
        if self.learn_example_weights:
            if examples is None:
                raise ConfigurationError(
                    f"{MODEL_ARGS}learn_example_weights=true needs a data module that says how many training examples"
                    " it has (num_train_examples), such as lightning_meta.data.DigitsDataModule")
            self.ensure_example_weights(int(examples))
        super().setup(stage)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        runs = batch.num_tasks
        losses, norms = [], []
        for run in range(runs):
            hyper = self.hyper_values()
            result = self.run_hypergradient(batch, run, hyper)
            self.check_finite(result.loss.reshape(1))
            grads = {key: g.to(hyper[key].dtype) for key, g in result.grads.items()}
            for key, g in grads.items():
                if not torch.isfinite(g).all():
                    raise FloatingPointError(
                        f"the hypergradient of {key!r} is not finite at global step {self.global_step}: lower "
                        f"{MODEL_ARGS}outer_lr, set {MODEL_ARGS}gradient_clip_val, or lower inner_lr")
            norms.append(torch.stack([g.square().sum() for g in grads.values()]).sqrt())
            surrogate = sum((hyper[key] * g.detach()).sum() for key, g in grads.items())
            self.backpropagate(surrogate, scale=1.0 / runs, last=run == runs - 1)
            losses.append(result.loss)
        self.outer_step()
        # hypergrad_norm: each run's hypergradient norm w.r.t. the hyper-parameter values (before the chain rule to
        # the learned parameters and before clipping), averaged over the step's runs
        # hypergrad_norm_<name>: the same, of one kind of hyper-parameter (lr, momentum, weights)
        norms = torch.stack(norms)
        values: dict[str, Any] = {"loss": torch.stack(losses).mean(), "hypergrad_norm": norms.norm(dim=1).mean()}
        for column, key in enumerate(grads):
            values[f"hypergrad_norm_{key.removeprefix('update.')}"] = norms[:, column].mean()
        for name, value in self.hyper_values().items():
            values[f"{name.removeprefix('update.')}_mean"] = value.detach().mean()
        self.log_values("train", values, units=runs)

    def evaluate_tasks(self, batch: Any) -> dict[str, Tensor]:
        """``loss`` and ``acc`` of each run on the set that scores it, trained with the current (validation) or
        best (test, ``keep_best``) hyper-parameters; with example weights, at test, ``retrained_loss`` and
        ``retrained_acc`` of runs trained without weights on the kept examples (weight > 0.5) and the validation
        set (Franceschi et al.'s comparison with their oracle, clean training + validation examples); with label
        noise, the weights' ``keep_precision`` and ``keep_recall`` of clean examples (the same for every run)."""
        trainer = attached_trainer(self)
        testing = trainer is not None and trainer.testing
        hyper = self.evaluated_hyper_values(testing)
        values = self.scores(batch, hyper)
        if "weights" in hyper and testing:
            kept = hyper["weights"] > 0.5
            train_set = (torch.cat([batch.train_x[kept], batch.val_x]), torch.cat([batch.train_y[kept], batch.val_y]))
            unweighted = {key: value for key, value in hyper.items() if key != "weights"}
            retrained = self.scores(batch, unweighted, train_set)
            values.update(retrained_loss=retrained["loss"], retrained_acc=retrained["acc"])
        if "weights" in hyper and batch.flipped.any():
            kept, clean = hyper["weights"] > 0.5, ~batch.flipped
            precision = (kept & clean).sum() / kept.sum().clamp(min=1)
            recall = (kept & clean).sum() / clean.sum().clamp(min=1)
            values["keep_precision"] = precision.to(values["acc"].dtype).expand(batch.num_tasks)
            values["keep_recall"] = recall.to(values["acc"].dtype).expand(batch.num_tasks)
        return values

    def scores(self, batch: Any, hyper: dict[str, Tensor], train_set: Optional[tuple[Tensor, Tensor]] = None
               ) -> dict[str, Tensor]:
        """``loss`` and ``acc`` ``[runs]`` on the set that scores each run of ``batch``, trained with ``hyper`` (on
        ``train_set`` if given)."""
        losses, accuracies = [], []
        for run in range(batch.num_tasks):
            params = self.trained_params(batch, run, hyper, train_set)
            x, y = batch.scored_set(run)
            with torch.no_grad():
                logits = self(params, x.to(self.dtype_of_model))
                losses.append(F.cross_entropy(logits, y))
                accuracies.append((logits.argmax(1) == y).to(logits.dtype).mean())
        return {"loss": torch.stack(losses), "acc": torch.stack(accuracies)}

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        """The root's, and at validation: keep the hyper-parameters if their validation loss is the best so far."""
        summary = super().log_results(stage)
        if stage == "val" and summary and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            loss = summary["loss"][0]
            if math.isfinite(loss) and loss < float(self.best_val_loss):
                self.best_val_loss.fill_(loss)
                for name, value in self.hyper.items():
                    getattr(self, f"best_{name}").copy_(value.detach())
            self.log("val/best_loss", float(self.best_val_loss), sync_dist=False)
        return summary

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict", {}).get("hyper.example_weights")
        if weights is not None:  # created at setup, so a checkpoint loaded before any setup creates it here
            self.ensure_example_weights(int(weights.shape[0]))
        super().on_load_checkpoint(checkpoint)
