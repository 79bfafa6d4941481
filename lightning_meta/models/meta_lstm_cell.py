"""The coordinate-wise two-layer LSTM of the Meta-Learner LSTM (Ravi & Larochelle 2017), and its input preprocessing.

The learner's parameters are flattened to one vector of ``n`` coordinates and every coordinate is a
row of a batch of ``n``: the same LSTM weights serve every coordinate, so the meta-learner has a
few thousand parameters whatever the size of the learner.

* Layer 1 is a standard LSTM (hidden size 20 in the paper) fed the preprocessed gradient and loss.
* Layer 2 is the LSTM whose cell state *is* the learner's parameter vector:
  ``c_t = f_t * c_{t-1} - i_t * grad_t`` with
  ``f_t = sigmoid(W_f [h_t, c_{t-1}, f_{t-1}] + b_f)`` and ``i_t = sigmoid(W_i [h_t, c_{t-1}, i_{t-1}] + b_i)``,
  ``h_t`` being layer 1's output for that coordinate.  With ``f_t = 1`` and ``i_t = lr`` it is SGD.

The module holds no learner parameters: ``c_0`` (the learned initialisation) lives with the learner
in :class:`~lightning_meta.algorithms.meta_lstm.MetaLearnerLSTM`.  It is written with plain tensor
operations so it runs under ``torch.func.functional_call`` and ``vmap``.  :class:`MetaLSTMUpdate` makes
it an update rule of the inner-loop engine (:func:`lightning_meta.inner_loop.adapt`), on the learner's
parameters flattened by :class:`FlatLayout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.inner_loop import Params
from lightning_meta.internals import inside_functorch_transform


def preprocess_gradient(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016, Appendix A) preprocessing: ``x -> [..., 2]``.

    ``(log|x| / p, sign(x))`` if ``|x| >= e^-p``, else ``(-1, e^p x)``: gradients and losses of very
    different magnitudes become inputs of order one, and the sign survives.

    Example::

        preprocess_gradient(torch.tensor([1.0, -1e-6]))   # [[0.0, 1.0], [-1.0, -0.0454]]
    """
    threshold = math.exp(-p)
    large = x.abs() >= threshold
    # log of a clamped |x| keeps the unused branch finite (no NaN leaking through torch.where's backward)
    log_part = torch.where(large, x.abs().clamp_min(threshold).log() / p, torch.full_like(x, -1.0))
    sign_part = torch.where(large, torch.sign(x), x * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


class MetaLSTMState(NamedTuple):
    """The recurrent state after an update, one row per learner coordinate.

    ``hidden``/``cell``: layer 1's ``h`` and ``c`` ``[hidden_size, n]`` (feature-major); ``forget``/``input``: layer 2's
    last gate values ``[n]`` (the ``f_{t-1}``, ``i_{t-1}`` of the next update).
    """

    hidden: Tensor
    cell: Tensor
    forget: Tensor
    input: Tensor


class CoordinateMetaLSTM(nn.Module):
    """Two LSTM layers applied to every learner coordinate; layer 2's cell state is the learner's parameters.

    Args:
        input_size: features per coordinate fed to layer 1 (4: preprocessed gradient and loss).
        hidden_size: layer 1's hidden size (20 in the paper).
        forget_bias: initial ``b_f`` (the paper draws it from U(4, 5): ``f ~ 0.99``, almost no decay).
        input_bias: initial ``b_i`` (the paper draws it from U(-5, -4): ``i ~ 0.01``, a small learning rate).
        init_range: every weight (and layer 1's biases) starts uniform in ``[-init_range, init_range]``
            (0.01 in the authors' code).

    Example::

        lstm = CoordinateMetaLSTM(input_size=4, hidden_size=20)
        params, state = lstm(features, grad, params, None)   # one update of all n coordinates
    """

    def __init__(self, input_size: int = 4, hidden_size: int = 20, forget_bias: float = 4.5,
                 input_bias: float = -4.5, init_range: float = 0.01):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        # layer 1: a standard LSTM cell (gate order i, f, g, o as torch.nn.LSTMCell)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        # layer 2: forget and input gates over [h_t, c_{t-1}, gate_{t-1}]
        self.forget_weight = nn.Parameter(torch.empty(hidden_size + 2))
        self.input_weight = nn.Parameter(torch.empty(hidden_size + 2))
        self.forget_bias = nn.Parameter(torch.tensor(float(forget_bias)))
        self.input_bias = nn.Parameter(torch.tensor(float(input_bias)))
        for weight in (self.weight_ih, self.weight_hh, self.bias, self.forget_weight, self.input_weight):
            nn.init.uniform_(weight, -init_range, init_range)

    def initial_state(self, reference: Tensor) -> MetaLSTMState:
        """Zero state for ``reference.shape[0]`` coordinates (gates ``f_0 = i_0 = 0``, as the authors' code)."""
        n = reference.shape[0]
        zeros = reference.new_zeros(self.hidden_size, n)
        return MetaLSTMState(zeros, zeros, reference.new_zeros(n), reference.new_zeros(n))

    def forward(self, features: Tensor, grad: Tensor, params: Tensor,
                state: Optional[MetaLSTMState]) -> tuple[Tensor, MetaLSTMState]:
        """One update: ``features [n, input_size]``, ``grad [n]``, ``params`` = ``c_{t-1}`` ``[n]`` -> ``(c_t, state)``."""
        if state is None:
            state = self.initial_state(params)
        # layer 1, feature-major ([4 * hidden, n]): each gate is a contiguous block (measured 1.3-2x faster
        # than [n, 4 * hidden] on CPU for n = 7k-28k coordinates)
        gates = torch.addmm(self.bias.unsqueeze(1), self.weight_ih, features.t()) + self.weight_hh @ state.hidden
        i1, f1, g1, o1 = gates.chunk(4, dim=0)
        cell = torch.sigmoid(f1) * state.cell + torch.sigmoid(i1) * torch.tanh(g1)
        hidden = torch.sigmoid(o1) * torch.tanh(cell)
        # layer 2: the gates of every coordinate from [h_t, c_{t-1}, gate_{t-1}]
        w_f, w_i, h = self.forget_weight, self.input_weight, self.hidden_size
        forget = torch.sigmoid(w_f[:h] @ hidden + params * w_f[h] + state.forget * w_f[h + 1] + self.forget_bias)
        input_gate = torch.sigmoid(w_i[:h] @ hidden + params * w_i[h] + state.input * w_i[h + 1] + self.input_bias)
        new_params = forget * params - input_gate * grad
        return new_params, MetaLSTMState(hidden, cell, forget, input_gate)


@dataclass(frozen=True)
class FlatLayout:
    """A module's parameters as one vector ``[n]`` (``named_parameters`` order) and back.

    4-D weights stored channels-last in the module come back channels-last (outside ``vmap``, where
    memory formats cannot be queried), so convolutions run as fast as on the module.

    Example::

        layout = FlatLayout.of(learner)
        flat = layout.flatten(dict(learner.named_parameters()))   # [n]
        params = layout.unflatten(flat)                            # the same dict
    """

    shapes: Mapping[str, torch.Size]
    channels_last: frozenset[str]

    @classmethod
    def of(cls, module: nn.Module) -> "FlatLayout":
        named = list(module.named_parameters())
        channels_last = frozenset(name for name, p in named if p.dim() == 4 and not p.is_contiguous()
                                  and p.is_contiguous(memory_format=torch.channels_last))
        return cls({name: p.shape for name, p in named}, channels_last)

    def flatten(self, params: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([params[name].reshape(-1) for name in self.shapes])

    def unflatten(self, flat: Tensor) -> Params:
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        keep_format = not inside_functorch_transform()
        params = {}
        for (name, shape), chunk in zip(self.shapes.items(), torch.split(flat, sizes)):
            value = chunk.reshape(shape)
            if name in self.channels_last and keep_format:
                value = value.contiguous(memory_format=torch.channels_last)
            params[name] = value
        return params


@dataclass(frozen=True, eq=False)
class MetaLSTMUpdate:
    """The Meta-Learner LSTM as an inner-loop update rule ``update(params, grads, loss, state, step)``.

    It reads the learner's gradient *and loss*: ``lstm`` (run with the weights ``weights``, passed
    functionally so they receive meta-gradients, under ``vmap`` too) takes ``inputs(flat grad, loss)`` and
    writes the new flat parameters ``c_t = f_t * c_{t-1} - i_t * grad_t``; the state is the LSTM's
    :class:`MetaLSTMState` (``None`` at the first update).

    Example::

        rule = MetaLSTMUpdate(lstm, dict(lstm.named_parameters()), FlatLayout.of(learner), lstm_inputs)
        trajectory = adapt(support_loss, dict(learner.named_parameters()), 5, rule, graph="first_order")
    """

    lstm: CoordinateMetaLSTM
    weights: Mapping[str, Tensor]
    layout: FlatLayout
    inputs: Callable[[Tensor, Tensor], Tensor]

    def __call__(self, params: Params, grads: Params, loss: Tensor, state: Optional[MetaLSTMState],
                 step: int) -> tuple[Params, MetaLSTMState]:
        c, grad = self.layout.flatten(params), self.layout.flatten(grads)
        c, state = functional_call(self.lstm, dict(self.weights), (self.inputs(grad, loss), grad, c, state))
        return self.layout.unflatten(c), state
