"""Action distributions of the policies as plain tensors: log-probability, entropy, KL, sampling from uniforms.

``torch.distributions`` objects check their arguments (data-dependent control flow that ``vmap``
refuses), are not pytrees (a vmapped policy cannot return them) and draw from the global RNG. These
two are ``NamedTuple`` s of tensors: ``functional_call`` and ``vmap`` over per-task weights return them as
they are, every method is tensors in, tensors out, and :meth:`sample` turns uniform variates in [0, 1)
into actions by the inverse CDF, so a rollout is a pure function of its noise
(:func:`lightning_meta.envs.rollout_uniforms`).

Example::

    dist = policy(observations)                      # DiagonalGaussian or Categorical, batch [B, n]
    actions = dist.sample(noise).detach()            # noise: uniforms [B, n, action_size] or [B, n]
    log_probs = dist.log_prob(actions)               # [B, n]
    kl = old.kl(dist)                                # KL(old || dist), [B, n]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.special import ndtri

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def open_uniform(u: Tensor) -> Tensor:
    """``u`` with exact zeros raised to the smallest positive number of its dtype, so that the inverse
    CDF of a Gaussian stays finite (``torch.rand`` may return 0)."""
    return u.clamp_min(torch.finfo(u.dtype).tiny)


class DiagonalGaussian(NamedTuple):
    """A Gaussian with independent action dimensions: ``mean`` and ``log_std`` of shape ``[..., action_size]``.

    Example::

        dist = DiagonalGaussian(torch.zeros(3, 2), torch.zeros(3, 2))
        dist.sample(torch.rand(3, 2)).shape, dist.log_prob(torch.zeros(3, 2)).shape   # [3, 2], [3]
    """

    mean: Tensor
    log_std: Tensor

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-density of ``action [..., action_size]``, summed over the action dimensions: ``[...]``."""
        z = (action - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - _HALF_LOG_TWO_PI).sum(-1)

    def entropy(self) -> Tensor:
        """Differential entropy ``[...]``."""
        return (self.log_std + 0.5 + _HALF_LOG_TWO_PI).sum(-1)

    def kl(self, other: DiagonalGaussian) -> Tensor:
        """``KL(self || other)`` ``[...]``: in TRPO, ``old.kl(new)`` (Schulman et al. 2015)."""
        variance_ratio = torch.exp(2 * (self.log_std - other.log_std))
        mean_term = ((self.mean - other.mean) * torch.exp(-other.log_std)).square()
        return (other.log_std - self.log_std + 0.5 * (variance_ratio + mean_term - 1)).sum(-1)

    def sample(self, u: Tensor) -> Tensor:
        """The action ``mean + std * Phi^-1(u)`` for uniforms ``u [..., action_size]`` in [0, 1).

        Differentiable in the mean and the standard deviation (reparameterised); rollouts ``detach`` it.
        """
        return self.mean + torch.exp(self.log_std) * ndtri(open_uniform(u))

    def mode(self) -> Tensor:
        """The deterministic action: the mean."""
        return self.mean

    def detach(self) -> DiagonalGaussian:
        """The same distribution cut from the graph (the "old" policy of TRPO and PPO)."""
        return DiagonalGaussian(self.mean.detach(), self.log_std.detach())


class Categorical(NamedTuple):
    """A distribution over ``0..K-1`` given by normalised log-probabilities ``logits [..., K]``
    (build it with :meth:`from_logits`, which normalises).

    Example::

        dist = Categorical.from_logits(torch.zeros(3, 4))
        dist.sample(torch.rand(3))            # long [3], uniform over 0..3
    """

    logits: Tensor

    @staticmethod
    def from_logits(logits: Tensor) -> Categorical:
        """The distribution of unnormalised ``logits [..., K]``."""
        return Categorical(torch.log_softmax(logits, dim=-1))

    @property
    def probs(self) -> Tensor:
        return torch.exp(self.logits)

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-probability of ``action [...]`` (long): ``[...]``."""
        return torch.gather(self.logits, -1, action.unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(-1)

    def kl(self, other: Categorical) -> Tensor:
        """``KL(self || other)`` ``[...]``."""
        return (self.probs * (self.logits - other.logits)).sum(-1)

    def sample(self, u: Tensor) -> Tensor:
        """The action whose CDF interval holds the uniform ``u [...]``: the number of cumulative
        probabilities at or below ``u`` (the last action if rounding leaves the total below ``u``)."""
        cdf = torch.cumsum(self.probs, dim=-1)
        count = (cdf <= u.unsqueeze(-1)).sum(-1)
        return count.clamp_max(self.logits.shape[-1] - 1)

    def mode(self) -> Tensor:
        """The most probable action."""
        return self.logits.argmax(-1)

    def detach(self) -> Categorical:
        return Categorical(self.logits.detach())
