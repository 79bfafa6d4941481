"""Inner-loop update rules: ``update(params, grads, loss, state, step) -> (params, state)``.

Each rule is pure: it returns new parameters and its new state (momentum buffers, Adam's moments)
and keeps nothing on the object, so one rule serves every task of a meta-batch, under ``vmap`` too.
Its hyper-parameters (rates, momenta, betas, weight decay) may be tensors that require grad: learned
rates receive meta-gradients through the update (MAML++, Meta-SGD), and a hypergradient reaches any of
them.  :func:`lightning_meta.inner_loop.adapt` drives them; the Meta-Learner LSTM's rule, which also
reads the loss, is :class:`~lightning_meta.models.meta_lstm_cell.MetaLSTMUpdate`.

* :class:`SGD`: ``torch.optim.SGD(lr, weight_decay)``, ``theta - lr * grad``, with a fixed rate or learned
  :class:`StepSizes`;
* :class:`MomentumSGD`: ``torch.optim.SGD(momentum=..., nesterov=..., weight_decay=...)`` (no dampening);
* :class:`Adam`: ``torch.optim.Adam``'s update (bias corrections and L2 ``weight_decay`` included), with a
  square root whose derivative stays finite at a zero second moment.

Weight decay is ``torch.optim``'s L2 form: ``weight_decay * theta`` is added to the gradient before the
rule sees it.

Example::

    trajectory = adapt(support_loss, params, steps=5, update=Adam(1e-3, betas=(0.0, 0.999)), graph="none")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_choice, require_positive
from lightning_meta.inner_loop import Params, Update

#: a step size per parameter name and inner step: ``step_size(name, step) -> rate``
StepSize = Callable[[str, int], Union[Tensor, float]]
#: a rate: a number, a tensor (possibly learned), or a :data:`StepSize`
Rate = Union[float, Tensor, StepSize]
Number = Union[float, Tensor]

StepSizeKind = Literal["fixed", "scalar", "per_layer", "per_step", "per_parameter", "per_layer_per_step"]


def rate_of(rate: Rate, name: str, step: int) -> Union[Tensor, float]:
    """The value of ``rate`` for parameter ``name`` at inner step ``step``."""
    return rate(name, step) if callable(rate) else rate


def square_root(x: Number) -> Number:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def is_zero(x: Number) -> bool:
    """Whether ``x`` is the plain number 0 (a tensor, possibly learned, never counts as zero)."""
    return not isinstance(x, Tensor) and x == 0


def with_weight_decay(params: Params, grads: Params, weight_decay: Number) -> Params:
    """``grad + weight_decay * theta`` per parameter (``torch.optim``'s L2 weight decay); ``grads`` itself
    when ``weight_decay`` is the number 0, so a rule without decay computes exactly what it did before."""
    if is_zero(weight_decay):
        return grads
    return {name: g + weight_decay * params[name] for name, g in grads.items()}


def sqrt_finite_at_zero(v: Tensor) -> Tensor:
    """``v.sqrt()`` (the same values) with derivative 0 instead of infinity where ``v`` is 0.

    Adam's second moment is exactly 0 wherever every gradient so far was 0 (an input that is 0 in every
    example); there ``d sqrt(v)/dv = inf`` meets ``dv/dg = 2 (1 - beta2) g = 0`` and the chain rule gives
    NaN, which then reaches every hypergradient.  The update's true derivative there is finite: the
    first moment ``m`` is 0 too, so the denominator's derivative is multiplied by 0 whatever it is.
    """
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def descend(params: Params, directions: Params, lr: Rate, step: int) -> Params:
    """``theta - lr * direction`` per parameter, the rate read with :func:`rate_of`."""
    return {name: p - rate_of(lr, name, step) * directions[name] for name, p in params.items()}


@dataclass(frozen=True, eq=False)
class SGD:
    """Gradient descent, ``theta - lr * (grad + weight_decay * theta)``; no state.

    Example::

        SGD(0.4)                                       # MAML
        SGD(step_sizes.bind(learned_rates))            # Meta-SGD, MAML++ (see StepSizes)
    """

    lr: Rate
    weight_decay: Number = 0.0

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Any, step: int) -> tuple[Params, Any]:
        return descend(params, with_weight_decay(params, grads, self.weight_decay), self.lr, step), state


@dataclass(frozen=True, eq=False)
class MomentumSGD:
    """Gradient descent with momentum, as ``torch.optim.SGD(lr, momentum, nesterov=..., weight_decay=...)``
    with no dampening.

    With ``d_t = grad_t + weight_decay * theta_t``, the state is the velocity ``v_t = momentum * v_{t-1} + d_t``
    (``v_1 = d_1``) and the update ``theta - lr * v_t``, or with ``nesterov=True``
    ``theta - lr * (d_t + momentum * v_t)`` (Sutskever et al. 2013's form, as ``torch.optim`` has it).
    ``momentum``, like ``lr``, may be a number, a tensor or a :data:`StepSize` (learned momenta per tensor
    or step, :class:`StepSizes`).

    Example::

        update = MomentumSGD(lr=torch.tensor(0.1, requires_grad=True), momentum=0.9)   # a learned rate
        update = MomentumSGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    """

    lr: Rate
    momentum: Rate = 0.9
    nesterov: bool = False
    weight_decay: Number = 0.0

    def __post_init__(self) -> None:
        if (self.nesterov and not isinstance(self.momentum, Tensor) and not callable(self.momentum)
                and self.momentum <= 0):
            raise ValueError(f"Nesterov momentum needs a momentum > 0, got {self.momentum}")

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Optional[Params],
                 step: int) -> tuple[Params, Params]:
        decayed = with_weight_decay(params, grads, self.weight_decay)
        momentum = self.momentum
        velocity = {name: decayed[name] if state is None
                    else state[name] * rate_of(momentum, name, step) + decayed[name] for name in params}
        directions = ({name: decayed[name] + rate_of(momentum, name, step) * v for name, v in velocity.items()}
                      if self.nesterov else velocity)
        return descend(params, directions, self.lr, step), velocity


class AdamState(NamedTuple):
    """Adam's step count and first and second moments, per parameter name."""

    count: int
    exp_avg: Params
    exp_avg_sq: Params


@dataclass(frozen=True, eq=False)
class Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` computes it, moments starting at zero.

    Reptile's inner optimiser (the paper uses ``betas=(0, 0.999)``).  ``lr`` (a number, a tensor or a
    :data:`StepSize`), ``betas`` and ``weight_decay`` (L2, added to the gradient as ``torch.optim.Adam``
    does; not AdamW) may be tensors that require grad.  Where a gradient has been exactly zero so far,
    the square root of the second moment is differentiated as 0 (:func:`sqrt_finite_at_zero`), so
    hypergradients through the update stay finite; the values are ``torch.optim.Adam``'s.

    Example::

        update = Adam(1e-3, betas=(0.0, 0.999), eps=1e-8)
    """

    lr: Rate
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: Number = 0.0

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Optional[AdamState],
                 step: int) -> tuple[Params, AdamState]:
        beta1, beta2 = self.betas
        count = 1 if state is None else state.count + 1
        correction1 = 1 - beta1 ** count
        correction2_sqrt = square_root(1 - beta2 ** count)
        grads = with_weight_decay(params, grads, self.weight_decay)
        exp_avg, exp_avg_sq, updated = {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            m = (torch.zeros_like(p) if state is None else state.exp_avg[name]) * beta1 + g * (1 - beta1)
            v = (torch.zeros_like(p) if state is None else state.exp_avg_sq[name]) * beta2 + g * g * (1 - beta2)
            exp_avg[name], exp_avg_sq[name] = m, v
            rate = rate_of(self.lr, name, step)
            updated[name] = p - (rate / correction1) * m / (sqrt_finite_at_zero(v) / correction2_sqrt + self.eps)
        return updated, AdamState(count, exp_avg, exp_avg_sq)


#: the inner optimizers a learner names in its ``inner_optimizer`` argument (MAML family, Reptile)
InnerOptimizer = Literal["sgd", "momentum", "nesterov", "adam"]


def check_inner_optimizer(optimizer: Any, momentum: Any = 0.9, betas: Any = (0.9, 0.999), eps: Any = 1e-8,
                          weight_decay: Any = 0.0, prefix: str = MODEL_ARGS) -> tuple[float, float]:
    """Check a learner's ``inner_optimizer``, ``inner_momentum``, ``inner_betas``, ``inner_eps`` and
    ``inner_weight_decay`` arguments (field names ``{prefix}inner_...``); a bad one raises a one-line
    :class:`~lightning_meta.errors.ConfigurationError` naming it.  Returns the betas as two floats."""
    require_choice(prefix + "inner_optimizer", optimizer, InnerOptimizer)
    if not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0 <= momentum < 1):
        raise ConfigurationError(f"{prefix}inner_momentum={momentum!r} is invalid: it must be a number in [0, 1)")
    if optimizer == "nesterov" and momentum == 0:
        raise ConfigurationError(f"{prefix}inner_momentum=0 is invalid with {prefix}inner_optimizer=nesterov: "
                                 "Nesterov momentum needs a momentum in (0, 1)")
    pair = tuple(betas) if isinstance(betas, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                 for b in pair):
        raise ConfigurationError(
            f"{prefix}inner_betas={betas!r} is invalid: give two numbers in [0, 1), e.g. [0.0, 0.999]")
    require_positive(prefix + "inner_eps", eps, integer=False)
    require_positive(prefix + "inner_weight_decay", weight_decay, allow_zero=True, integer=False)
    return float(pair[0]), float(pair[1])


def inner_optimizer_rule(optimizer: InnerOptimizer, lr: Rate, momentum: Rate = 0.9,
                         betas: tuple[Number, Number] = (0.9, 0.999), eps: float = 1e-8,
                         weight_decay: Number = 0.0) -> Update:
    """The update rule an ``inner_optimizer`` names: :class:`SGD`, :class:`MomentumSGD` (``"momentum"``,
    ``"nesterov"``) or :class:`Adam`, each with ``weight_decay``; ``lr`` (and the momentum) may be a
    :data:`StepSize` of learned rates.  The arguments a rule does not take are ignored.

    Example::

        inner_optimizer_rule("nesterov", 0.1, momentum=0.9)      # MomentumSGD(0.1, 0.9, nesterov=True)
        inner_optimizer_rule("adam", 1e-3, betas=(0.0, 0.999))   # Reptile's
    """
    if optimizer == "sgd":
        return SGD(lr, weight_decay)
    if optimizer in ("momentum", "nesterov"):
        return MomentumSGD(lr, momentum, optimizer == "nesterov", weight_decay)
    if optimizer == "adam":
        return Adam(lr, betas, eps, weight_decay)
    require_choice("inner_optimizer", optimizer, InnerOptimizer)
    raise AssertionError("unreachable")


class StepSizes(nn.Module):
    """Inner-loop step sizes (rates, or momenta) of the update rules, fixed or meta-learned.

    * ``"fixed"``: one number ``init`` (MAML); no parameters.
    * ``"scalar"``: one learned scalar shared by every adapted tensor and step.
    * ``"per_layer"``: a learned scalar per adapted parameter tensor, shared by all steps.
    * ``"per_step"``: a learned scalar per inner step, shared by all adapted tensors.
    * ``"per_parameter"``: a learned tensor shaped like each adapted parameter, shared by all
      steps (Meta-SGD, Li et al. 2017).
    * ``"per_layer_per_step"``: a learned scalar per adapted parameter tensor and step (MAML++
      "LSLR", Antoniou et al. 2019).

    Steps beyond the trained ones (``test_inner_steps > inner_steps``) reuse the last step's rate.
    The learned rates are ordinary parameters of the meta-learner (``step_sizes.rates.{i}``: one entry
    per adapted tensor, or a single entry ``rates.0`` for ``scalar`` and ``per_step``), so the outer
    optimizer, DDP and checkpoints treat them like the weights.  Inside ``vmap`` they are passed in
    functionally: :meth:`bind` turns a dict of their current values into a :data:`StepSize`.  ``field``
    names the argument in errors.

    Example::

        sizes = StepSizes({"w": torch.Size([3, 2])}, steps=5, init=0.1, kind="per_parameter")
        update = SGD(sizes.bind(dict(sizes.named_parameters())))
    """

    def __init__(self, shapes: Mapping[str, torch.Size], steps: int, init: float, kind: StepSizeKind = "fixed",
                 field: str = MODEL_ARGS + "step_sizes"):
        super().__init__()
        require_choice(field, kind, StepSizeKind)
        self.kind = kind
        self.init = float(init)
        self.index = {name: i for i, name in enumerate(shapes)}
        if kind == "per_parameter":
            rates = [torch.full(tuple(shape), self.init) for shape in shapes.values()]
        elif kind == "per_layer_per_step":
            rates = [torch.full((steps,), self.init) for _ in shapes]
        elif kind == "per_layer":
            rates = [torch.full((), self.init) for _ in shapes]
        elif kind == "per_step":
            rates = [torch.full((steps,), self.init)]
        elif kind == "scalar":
            rates = [torch.full((), self.init)]
        else:
            rates = []
        self.rates = nn.ParameterList([nn.Parameter(r) for r in rates])

    @property
    def learned(self) -> bool:
        return self.kind != "fixed"

    def bind(self, values: Optional[Mapping[str, Tensor]] = None) -> StepSize:
        """A :data:`StepSize` reading the rates from ``values`` (keys as in ``named_parameters``; default:
        the module's own)."""
        if not self.learned:
            return lambda name, step: self.init
        values = values if values is not None else dict(self.named_parameters())
        rates = [values[f"rates.{i}"] for i in range(len(self.rates))]
        if self.kind in ("per_parameter", "per_layer"):
            return lambda name, step: rates[self.index[name]]
        if self.kind == "scalar":
            return lambda name, step: rates[0]
        if self.kind == "per_step":
            return lambda name, step: rates[0][min(step, rates[0].shape[0] - 1)]
        return lambda name, step: rates[self.index[name]][min(step, rates[self.index[name]].shape[0] - 1)]
