"""External memory with least-recently-used access (LRUA), the memory of Santoro et al.'s MANN.

A memory is ``slots`` rows of ``width`` numbers, one memory per episode, batched ``[B, slots, width]``
(nothing is shared between the episodes of a batch: each has its own rows, usage and weights).
:class:`LRUAMemory` holds no parameters; the controller emits, per step and per head ``h``, a key
``k_t^h`` (``width``) and a write gate logit ``alpha_t^h``, and :meth:`LRUAMemory.step` does one step
of the paper's equations (Santoro et al. 2016, Sec. 3.2)::

    w_lu_{t-1}  = 1 on the n slots of least usage w_u_{t-1}, 0 elsewhere     (n = read heads)
    w_w_t^h     = sigmoid(alpha^h) w_r_{t-1}^h + (1 - sigmoid(alpha^h)) w_lu_{t-1}
    M           = M_{t-1} with the slots of w_lu_{t-1} set to zero           ("prior to writing")
    M_t         = M + sum_h w_w_t^h (outer) k_t^h
    w_r_t^h(i)  = softmax_i( beta_t^h cosine(k_t^h, M_t(i)) )                (content addressing)
    r_t^h       = sum_i w_r_t^h(i) M_t(i)                                    (a convex combination of rows)
    w_u_t       = gamma w_u_{t-1} + sum_h w_r_t^h + sum_h w_w_t^h

Key strengths ``beta_t^h``: the paper's addressing is the plain cosine, ``beta = 1`` (``strengths=None``).
Cosines lie in ``[-1, 1]``, so among ``slots`` rows the best match gets at most ``e^2 / (e^2 + slots - 1)``
of the read weight (``e / (e + slots - 1)`` when the other rows are wiped, cosine 0).  A controller may
pass per-head strengths ``beta >= 0`` ``[B, heads]`` that multiply the cosines before the softmax, the
key strength of the Neural Turing Machine (Graves et al. 2014) that MANN builds on, to sharpen reads.

Least-used weights: the paper's ``m(w_u, n)``, 1 on the ``n = read_heads`` least-used slots, shared by
all heads (with one head, the single least-used slot).  We keep the paper's definition because it is
the one the published numbers come from and because ``n`` fresh slots per step are what ``n`` heads
need to bind ``n`` new items; the alternative (every head writing into the single least-used slot)
would sum the heads' keys into one row.  Ties in usage (at ``t = 0`` every slot is unused) go to the
lowest slot index, so the choice is deterministic.

The initial state is empty: ``M_0 = 0``, ``w_r_0 = 0`` (nothing read yet: the first write goes to the
least-used slots only), ``w_u_0 = 0``.  :meth:`LRUAMemory.initial_state` builds it per episode, so
memory is wiped at the start of every episode.

Reference:
    A. Santoro, S. Bartunov, M. Botvinick, D. Wierstra, T. Lillicrap, "Meta-Learning with
    Memory-Augmented Neural Networks", ICML 2016.

Example::

    memory = LRUAMemory(slots=128, width=40, read_heads=4)
    state = memory.initial_state(batch_size=16)
    for t in range(50):
        keys, alphas = ...                  # [16, 4, 40] and [16, 4] from the controller
        reads, state = memory.step(keys, alphas, state)   # reads [16, 4, 40]

Recurrent states in general (a controller's, a memory's, tuples of both): :func:`unroll` runs a step
function along a sequence, :func:`repeat_state` copies a state of one sequence to continue it several
ways at once (MANN's queries, each a one-step continuation of the support stream).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, TypeVar

import torch
from torch import Tensor, nn


class MemoryState(NamedTuple):
    """One step's memory of a batch of episodes.

    ``memory [B, slots, width]``, ``read_weights [B, heads, slots]`` (``w_r``), ``usage [B, slots]``
    (``w_u``) and ``write_weights [B, heads, slots]`` (``w_w`` of the step that produced this state,
    kept for inspection).
    """

    memory: Tensor
    read_weights: Tensor
    usage: Tensor
    write_weights: Tensor


class LRUAMemory(nn.Module):
    """A batched external memory written by least-recently-used access, read by cosine similarity.

    See the module docstring for the equations.

    Args:
        slots: memory rows per episode (128 in the paper).
        width: numbers per row, the size of the keys (40 in the paper).
        read_heads: read (and write) heads; also the number of least-used slots ``n`` (4 in the paper).
        gamma: decay of the usage weights (0.95 in the paper's and public re-implementations).
        eps: rows and keys of norm at most ``eps`` count as empty: cosine 0 (a wiped row has norm 0).

    Reference:
        Santoro et al., "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016.

    Example::

        memory = LRUAMemory(slots=4, width=3, read_heads=1)
        state = memory.initial_state(2)                        # two episodes
        reads, state = memory.step(torch.randn(2, 1, 3), torch.zeros(2, 1), state)
        state.read_weights.sum(-1)                             # tensor([[1.], [1.]])
    """

    def __init__(self, slots: int, width: int, read_heads: int = 1, gamma: float = 0.95, eps: float = 1e-8):
        super().__init__()
        if min(slots, width, read_heads) < 1:
            raise ValueError(f"LRUAMemory needs slots, width and read_heads >= 1, got {slots}, {width}, {read_heads}")
        if read_heads > slots:
            raise ValueError(f"LRUAMemory: {read_heads} read heads need at least as many slots, got {slots}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"LRUAMemory: gamma={gamma} must lie in [0, 1]")
        self.slots, self.width, self.read_heads = slots, width, read_heads
        self.gamma, self.eps = gamma, eps

    def extra_repr(self) -> str:
        return f"slots={self.slots}, width={self.width}, read_heads={self.read_heads}, gamma={self.gamma}"

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None) -> MemoryState:
        """The empty memory of ``batch_size`` episodes (all zeros: nothing written, read or used)."""
        zeros = dict(device=device, dtype=dtype or torch.get_default_dtype())
        return MemoryState(
            memory=torch.zeros(batch_size, self.slots, self.width, **zeros),
            read_weights=torch.zeros(batch_size, self.read_heads, self.slots, **zeros),
            usage=torch.zeros(batch_size, self.slots, **zeros),
            write_weights=torch.zeros(batch_size, self.read_heads, self.slots, **zeros),
        )

    def least_used(self, usage: Tensor) -> Tensor:
        """``w_lu [B, slots]``: 1 on the ``read_heads`` slots of least ``usage``, ties to the lowest index."""
        order = torch.argsort(usage.detach(), dim=-1, stable=True)[..., : self.read_heads]
        return torch.zeros_like(usage).scatter(-1, order, 1.0)

    def write_weights(self, alphas: Tensor, previous_read_weights: Tensor, least_used: Tensor) -> Tensor:
        """``w_w [B, heads, slots] = sigmoid(alpha) w_r_{t-1} + (1 - sigmoid(alpha)) w_lu_{t-1}``."""
        gate = torch.sigmoid(alphas).unsqueeze(-1)
        return gate * previous_read_weights + (1 - gate) * least_used.unsqueeze(1)

    def inverse_norm(self, x: Tensor) -> Tensor:
        """``1 / |x|`` along the last dimension (``[...]``); vectors of norm ``<= eps`` (a wiped row) get 0
        with a zero gradient.  (``1 / (|x| + eps)`` would give them a gradient of ``1 / eps^2``: harmless
        in float32 when multiplied by zeros, but it overflows float16 gradients into NaN.)  From the
        squared norm, whose backward is one product (that of ``norm`` divides and masks every element)."""
        squared = (x * x).sum(-1)
        return torch.where(squared > self.eps ** 2, squared, torch.full_like(squared, float("inf"))).rsqrt()

    def address(self, keys: Tensor, memory: Tensor, strengths: Optional[Tensor] = None) -> Tensor:
        """Read weights ``[B, heads, slots]``: softmax over slots of ``beta * cosine(key, M_i)``, with the
        key strengths ``beta = strengths [B, heads]`` (``None``: 1, the paper's plain cosine).  A wiped
        (all-zero) row has cosine 0 with every key.

        The cosines are the dot products ``k . M_i`` scaled by ``1 / (|k| |M_i|)``: the same numbers as
        unit keys times unit rows, but the divisions (and their backward) act on ``[B, heads, slots]``
        instead of every element of the memory, the largest cost of a step at the paper's sizes."""
        scale = self.inverse_norm(keys).unsqueeze(-1) * self.inverse_norm(memory).unsqueeze(-2)
        if strengths is not None:
            scale = strengths.unsqueeze(-1) * scale
        return torch.softmax(torch.bmm(keys, memory.transpose(1, 2)) * scale, dim=-1)

    def step(self, keys: Tensor, alphas: Tensor, state: MemoryState,
             strengths: Optional[Tensor] = None) -> tuple[Tensor, MemoryState]:
        """One write then read: ``keys [B, heads, width]``, ``alphas [B, heads]`` (write gate logits) and
        optional key strengths ``[B, heads]`` (see :meth:`address`).

        Returns the read vectors ``[B, heads, width]`` and the new state.  The step runs in at least
        float32 with autocast off: under fp16/bf16 mixed precision the memory keeps float32 rows, usage
        and weights (it is a few small products per step, and sums of many steps' keys need the range).
        """
        dtype = torch.promote_types(keys.dtype, torch.float32)
        with torch.autocast(keys.device.type, enabled=False):
            keys, alphas = keys.to(dtype), alphas.to(dtype)
            strengths = None if strengths is None else strengths.to(dtype)
            state = MemoryState(*(value.to(dtype) for value in state))
            least_used = self.least_used(state.usage)
            write = self.write_weights(alphas, state.read_weights, least_used)
            # torch.bmm and baddbmm, not @: matmul's backward of these vector products is several times slower
            memory = torch.baddbmm(state.memory * (1 - least_used).unsqueeze(-1), write.transpose(1, 2), keys)
            read = self.address(keys, memory, strengths)
            reads = torch.bmm(read, memory)
            usage = self.gamma * state.usage + read.sum(1) + write.sum(1)
        return reads, MemoryState(memory, read, usage, write)


State = TypeVar("State")


def unroll(step: Callable[[Tensor, State], tuple[Tensor, State]], inputs: Tensor, state: State
           ) -> tuple[Tensor, State]:
    """Run ``step(inputs[:, t], state) -> (output, state)`` for ``t = 0, 1, ...``: the outputs stacked
    along dim 1, ``[B, T, ...]``, and the last state.

    Example::

        cell = nn.GRUCell(4, 8)
        outputs, h = unroll(lambda x, h: (cell(x, h),) * 2, torch.randn(2, 5, 4), None)   # [2, 5, 8], [2, 8]
    """
    outputs = []
    for t in range(inputs.shape[1]):
        output, state = step(inputs[:, t], state)
        outputs.append(output)
    return torch.stack(outputs, 1), state


def repeat_state(state: Any, count: int) -> Any:
    """``state`` of a batch of one (tensors ``[1, ...]`` in tuples, named tuples, lists, dicts; ``None``)
    repeated ``count`` times along dim 0, without copying the tensors.

    Example::

        repeat_state((torch.zeros(1, 8), None), 5)[0].shape      # [5, 8]
    """
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.expand(count, *state.shape[1:])
    if isinstance(state, tuple):
        values = [repeat_state(s, count) for s in state]
        return type(state)(*values) if hasattr(state, "_fields") else tuple(values)
    if isinstance(state, list):
        return [repeat_state(s, count) for s in state]
    if isinstance(state, dict):
        return {k: repeat_state(v, count) for k, v in state.items()}
    raise TypeError(f"cannot repeat a recurrent state of type {type(state).__name__}")
