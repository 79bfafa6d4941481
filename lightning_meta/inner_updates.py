"""Inner-loop update rules: ``update(params, grads, loss, state, step) -> (params, state)``.

Each rule is pure: it returns new parameters and its new state (momentum buffers, Adam's moments)
and keeps nothing on the object, so one rule serves every task of a meta-batch, under ``vmap`` too.
Its hyper-parameters (rates, momenta) may be tensors that require grad: learned rates receive
meta-gradients through the update (MAML++, Meta-SGD).  :func:`lightning_meta.inner_loop.adapt` drives them;
the Meta-Learner LSTM's rule, which also reads the loss, is
:class:`~lightning_meta.models.meta_lstm_cell.MetaLSTMUpdate`.

* :class:`SGD`: ``theta - lr * grad``, with a fixed rate or learned :class:`StepSizes`;
* :class:`MomentumSGD`: ``torch.optim.SGD(momentum=...)``'s heavy-ball update;
* :class:`Adam`: ``torch.optim.Adam``'s update, operation for operation (bias corrections included).

Example::

    trajectory = adapt(support_loss, params, steps=5, update=Adam(1e-3, betas=(0.0, 0.999)), graph="none")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from lightning_meta.errors import MODEL_ARGS, require_choice
from lightning_meta.inner_loop import Params

#: a step size per parameter name and inner step: ``step_size(name, step) -> rate``
StepSize = Callable[[str, int], Union[Tensor, float]]
#: a rate: a number, a tensor (possibly learned), or a :data:`StepSize`
Rate = Union[float, Tensor, StepSize]
Number = Union[float, Tensor]

StepSizeKind = Literal["fixed", "per_parameter", "per_layer_per_step"]


def rate_of(rate: Rate, name: str, step: int) -> Union[Tensor, float]:
    """The value of ``rate`` for parameter ``name`` at inner step ``step``."""
    return rate(name, step) if callable(rate) else rate


def square_root(x: Number) -> Number:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


@dataclass(frozen=True, eq=False)
class SGD:
    """Gradient descent, ``theta - lr * grad``; no state.

    Example::

        SGD(0.4)                                       # MAML
        SGD(step_sizes.bind(learned_rates))            # Meta-SGD, MAML++ (see StepSizes)
    """

    lr: Rate

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Any, step: int) -> tuple[Params, Any]:
        return {name: p - rate_of(self.lr, name, step) * grads[name] for name, p in params.items()}, state


@dataclass(frozen=True, eq=False)
class MomentumSGD:
    """Gradient descent with momentum, as ``torch.optim.SGD(lr, momentum)`` (no dampening, not Nesterov).

    The state is the velocity ``v_t = momentum * v_{t-1} + grad_t`` (``v_1 = grad_1``) and the update
    ``theta - lr * v_t``.

    Example::

        update = MomentumSGD(lr=torch.tensor(0.1, requires_grad=True), momentum=0.9)   # a learned rate
    """

    lr: Rate
    momentum: Number = 0.9

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Optional[Params],
                 step: int) -> tuple[Params, Params]:
        velocity = {name: grads[name] if state is None else state[name] * self.momentum + grads[name]
                    for name in params}
        return {name: p - rate_of(self.lr, name, step) * velocity[name] for name, p in params.items()}, velocity


class AdamState(NamedTuple):
    """Adam's step count and first and second moments, per parameter name."""

    count: int
    exp_avg: Params
    exp_avg_sq: Params


@dataclass(frozen=True, eq=False)
class Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` computes it, moments starting at zero.

    Reptile's inner optimiser (the paper uses ``betas=(0, 0.999)``).  ``lr`` and ``betas`` may be tensors
    that require grad.

    Example::

        update = Adam(1e-3, betas=(0.0, 0.999), eps=1e-8)
    """

    lr: Number
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: float = 1e-8

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Optional[AdamState],
                 step: int) -> tuple[Params, AdamState]:
        beta1, beta2 = self.betas
        count = 1 if state is None else state.count + 1
        correction1 = 1 - beta1 ** count
        correction2_sqrt = square_root(1 - beta2 ** count)
        exp_avg, exp_avg_sq, updated = {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            m = (torch.zeros_like(p) if state is None else state.exp_avg[name]) * beta1 + g * (1 - beta1)
            v = (torch.zeros_like(p) if state is None else state.exp_avg_sq[name]) * beta2 + g * g * (1 - beta2)
            exp_avg[name], exp_avg_sq[name] = m, v
            updated[name] = p - (self.lr / correction1) * m / (v.sqrt() / correction2_sqrt + self.eps)
        return updated, AdamState(count, exp_avg, exp_avg_sq)


class StepSizes(nn.Module):
    """Inner-loop step sizes of :class:`SGD`, fixed or meta-learned.

    * ``"fixed"``: one scalar ``init`` (MAML); no parameters.
    * ``"per_parameter"``: a learned tensor shaped like each adapted parameter, shared by all
      steps (Meta-SGD, Li et al. 2017).
    * ``"per_layer_per_step"``: a learned scalar per adapted parameter tensor and step (MAML++
      "LSLR", Antoniou et al. 2019).  Steps beyond the trained ones reuse the last rate.

    The learned rates are ordinary parameters of the meta-learner (``step_sizes.rates.{i}``), so the
    outer optimizer, DDP and checkpoints treat them like the weights.  Inside ``vmap`` they are passed
    in functionally: :meth:`bind` turns a dict of their current values into a :data:`StepSize`.

    Example::

        sizes = StepSizes({"w": torch.Size([3, 2])}, steps=5, init=0.1, kind="per_parameter")
        update = SGD(sizes.bind(dict(sizes.named_parameters())))
    """

    def __init__(self, shapes: Mapping[str, torch.Size], steps: int, init: float, kind: StepSizeKind = "fixed"):
        super().__init__()
        require_choice(MODEL_ARGS + "step_sizes", kind, StepSizeKind)
        self.kind = kind
        self.init = float(init)
        self.index = {name: i for i, name in enumerate(shapes)}
        if kind == "per_parameter":
            rates = [torch.full(tuple(shape), self.init) for shape in shapes.values()]
        elif kind == "per_layer_per_step":
            rates = [torch.full((steps,), self.init) for _ in shapes]
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
        if self.kind == "per_parameter":
            return lambda name, step: rates[self.index[name]]
        return lambda name, step: rates[self.index[name]][min(step, rates[self.index[name]].shape[0] - 1)]
