"""SNAIL's sequence model (Mishra et al. 2018): causal temporal-convolution and soft-attention blocks.

Every block maps a sequence ``[B, T, C]`` to ``[B, T, C + added]`` (dense connections: the block's
output is its input with new features concatenated), causally: position ``t`` depends on positions
``<= t`` only.  Each block also has :meth:`step`, the output of *new* elements ``[B, M, C]`` each
appended on its own after a prefix ``[B, S, C]`` (position ``S``), from the prefix's inputs to that
block.  :class:`SnailSequenceModel` uses it to compute a support set's activations once and then
every query against them, as if each query were the last element of its own sequence: queries never
see each other.

* :class:`DenseBlock`: a causal convolution of kernel 2 and dilation ``d``, gated
  (``tanh(x_f) * sigmoid(x_g)``, ``filters`` channels), concatenated to its input.
* :class:`TCBlock`: ``ceil(log2 T)`` dense blocks with dilations 1, 2, 4, ..., so the last position
  sees the whole sequence of length ``T``.
* :class:`AttentionBlock`: single-head causal soft attention (keys, queries ``key_size``, values
  ``value_size``, scaled by ``sqrt(key_size)``), values concatenated to the input.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DenseBlock(nn.Module):
    """Gated causal convolution (kernel 2, ``dilation``) whose ``filters`` outputs are concatenated to the input.

    Example::

        block = DenseBlock(64, 128, dilation=2)
        block(torch.randn(8, 11, 64)).shape       # [8, 11, 192]
    """

    def __init__(self, in_channels: int, filters: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        # the kernel's two taps as two linear maps: contiguous weights, matrix products only (on CPU a
        # dilated nn.Conv1d loops over small copies, and slicing its [2F, C, 2] kernel copies it per call);
        # initialised exactly as nn.Conv1d(in_channels, 2 * filters, kernel_size=2)
        conv = nn.Conv1d(in_channels, 2 * filters, kernel_size=2)
        self.earlier = nn.utils.skip_init(nn.Linear, in_channels, 2 * filters, bias=False)  # tap at t - dilation
        self.current = nn.utils.skip_init(nn.Linear, in_channels, 2 * filters)               # tap at t
        with torch.no_grad():
            self.earlier.weight.copy_(conv.weight[:, :, 0])
            self.current.weight.copy_(conv.weight[:, :, 1])
            self.current.bias.copy_(conv.bias)

    def _gate(self, pre: Tensor) -> Tensor:
        xf, xg = pre.chunk(2, dim=-1)
        return torch.tanh(xf) * torch.sigmoid(xg)

    def _taps(self, earlier: Tensor, current: Tensor) -> Tensor:
        """The convolution's pre-activations from the inputs at ``t - dilation`` and ``t`` (``[..., C]`` each)."""
        return self.current(current) + self.earlier(earlier)

    def forward(self, x: Tensor) -> Tensor:
        earlier = F.pad(x, (0, 0, self.dilation, 0))[:, : x.shape[1]]  # x[t - d]; zeros before the start
        return torch.cat([x, self._gate(self._taps(earlier, x))], -1)

    def step(self, prefix: Tensor, new: Tensor) -> Tensor:
        """Outputs ``[B, M, C + filters]`` of ``new [B, M, C]``, each at position ``S`` after ``prefix [B, S, C]``."""
        position = prefix.shape[1] - self.dilation
        earlier = prefix[:, position] if position >= 0 else prefix.new_zeros(prefix.shape[0], prefix.shape[2])
        return torch.cat([new, self._gate(self._taps(earlier.unsqueeze(1), new))], -1)


class TCBlock(nn.Module):
    """``ceil(log2 sequence_length)`` dense blocks with dilations 1, 2, 4, ...

    Example::

        block = TCBlock(64, sequence_length=6, filters=128)   # 3 dense blocks: 64 + 3 * 128 outputs
    """

    def __init__(self, in_channels: int, sequence_length: int, filters: int):
        super().__init__()
        depth = max(1, math.ceil(math.log2(sequence_length)))
        self.blocks = nn.ModuleList(DenseBlock(in_channels + i * filters, filters, 2 ** i) for i in range(depth))
        self.out_channels = in_channels + depth * filters

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def step(self, prefix: Tensor, new: Tensor) -> Tensor:
        return step_blocks(self.blocks, prefix, new)


def step_blocks(blocks: Sequence[nn.Module], prefix: Tensor, new: Tensor) -> Tensor:
    """``new`` through ``blocks`` one ``step`` at a time, the prefix advanced through each block alongside."""
    for block in blocks:
        new, prefix = block.step(prefix, new), block(prefix)
    return new


class AttentionBlock(nn.Module):
    """Causal single-head soft attention whose ``value_size`` outputs are concatenated to the input.

    Example::

        block = AttentionBlock(64, key_size=32, value_size=32)
        block(torch.randn(8, 11, 64)).shape       # [8, 11, 96]
    """

    def __init__(self, in_channels: int, key_size: int, value_size: int):
        super().__init__()
        # no key bias: it adds query . bias to every logit of a row, which the softmax ignores (its gradient
        # is exactly zero, and Adam would random-walk it on round-off)
        self.key = nn.Linear(in_channels, key_size, bias=False)
        self.query = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        logits = self.query(x) @ self.key(x).transpose(1, 2) * self.scale             # [B, T, T]
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = logits.masked_fill(future, float("-inf")).softmax(-1)
        return torch.cat([x, weights @ self.value(x)], -1)

    def step(self, prefix: Tensor, new: Tensor) -> Tensor:
        query = self.query(new)                                                       # [B, M, K]
        to_prefix = query @ self.key(prefix).transpose(1, 2) * self.scale            # [B, M, S]
        to_self = (query * self.key(new)).sum(-1, keepdim=True) * self.scale         # [B, M, 1]
        weights = torch.cat([to_prefix, to_self], -1).softmax(-1)
        values = weights[..., :-1] @ self.value(prefix) + weights[..., -1:] * self.value(new)
        return torch.cat([new, values], -1)


class SnailSequenceModel(nn.Module):
    """Attention and TC blocks, alternating (attention first and last), then a linear output layer.

    ``attention[i] = (key_size, value_size)`` of the ``i``-th attention block; ``tc_filters[i]`` the
    filters of the ``i``-th TC block, between attention blocks ``i`` and ``i + 1``.  The paper's
    Omniglot and mini-ImageNet model: ``attention=((64, 32), (256, 128), (512, 256))``,
    ``tc_filters=(128, 128)``.

    Example::

        model = SnailSequenceModel(64 + 5, sequence_length=6, outputs=5)
        logits = model(torch.randn(8, 6, 69))                          # every position: [8, 6, 5]
        logits = model.step(torch.randn(8, 5, 69), torch.randn(8, 15, 69))   # 15 queries: [8, 15, 5]
    """

    def __init__(self, in_channels: int, sequence_length: int, outputs: int,
                 attention: Sequence[Sequence[int]] = ((64, 32), (256, 128), (512, 256)),
                 tc_filters: Sequence[int] = (128, 128)):
        super().__init__()
        if len(tc_filters) != len(attention) - 1:
            raise ValueError(f"SNAIL needs one TC block between consecutive attention blocks: {len(attention)}"
                             f" attention blocks take {len(attention) - 1} tc_filters, not {len(tc_filters)}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for i, (key_size, value_size) in enumerate(attention):
            blocks.append(AttentionBlock(channels, key_size, value_size))
            channels += value_size
            if i < len(tc_filters):
                tc = TCBlock(channels, sequence_length, tc_filters[i])
                blocks.append(tc)
                channels = tc.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Linear(channels, outputs)

    def forward(self, sequence: Tensor) -> Tensor:
        """Outputs ``[B, T, outputs]`` at every position of ``sequence [B, T, C]`` (causal)."""
        for block in self.blocks:
            sequence = block(sequence)
        return self.output(sequence)

    def step(self, prefix: Tensor, new: Tensor) -> Tensor:
        """Outputs ``[B, M, outputs]`` of each of ``new [B, M, C]`` appended alone after ``prefix [B, S, C]``."""
        return self.output(step_blocks(self.blocks, prefix, new))
