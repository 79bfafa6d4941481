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
    w_r_t^h(i)  = softmax_i( cosine(k_t^h, M_t(i)) )                         (content addressing)
    r_t^h       = sum_i w_r_t^h(i) M_t(i)                                    (a convex combination of rows)
    w_u_t       = gamma w_u_{t-1} + sum_h w_r_t^h + sum_h w_w_t^h

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
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
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
        eps: added to the norms of the cosine similarity (a wiped row has norm 0).

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

    def address(self, keys: Tensor, memory: Tensor) -> Tensor:
        """Read weights ``[B, heads, slots]``: softmax over slots of ``cosine(key, M_i)``."""
        keys_unit = keys / (keys.norm(dim=-1, keepdim=True) + self.eps)
        rows_unit = memory / (memory.norm(dim=-1, keepdim=True) + self.eps)
        return torch.softmax(keys_unit @ rows_unit.transpose(1, 2), dim=-1)

    def step(self, keys: Tensor, alphas: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
        """One write then read: ``keys [B, heads, width]``, ``alphas [B, heads]`` (write gate logits).

        Returns the read vectors ``[B, heads, width]`` and the new state.
        """
        least_used = self.least_used(state.usage)
        write = self.write_weights(alphas, state.read_weights, least_used)
        memory = state.memory * (1 - least_used).unsqueeze(-1)
        memory = memory + write.transpose(1, 2) @ keys
        read = self.address(keys, memory)
        reads = read @ memory
        usage = self.gamma * state.usage + read.sum(1) + write.sum(1)
        return reads, MemoryState(memory, read, usage, write)
