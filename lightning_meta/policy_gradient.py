"""Returns, advantages and the policy-gradient surrogates of meta-RL: DiCE, LVC, REINFORCE, PPO's clip.

Every function works on trajectories padded to a common horizon, time on the last dim: ``rewards``,
``values``, ``log_probs``, ``advantages`` and ``masks`` are ``[..., T]``, any leading shape (``[B, n]``
tasks x environments).  ``masks`` (bool or float) is 1 up to and including an episode's last step and 0
on the padding after it.  Surrogates return *per-step objectives* ``[..., T]`` (zero on padding), to be
maximised; the caller picks the reduction::

    objective = dice(log_probs, rewards, masks, gamma=0.99)                # [B, n, T]
    loss = -objective.sum(-1).mean()          # the Monte-Carlo estimate of -J (sum over time, mean over episodes)
    loss = -masked_mean(ppo_clip(log_probs, old_log_probs, advantages, masks), masks)   # per-step mean (PPO, TRPO)

All are pure tensor functions (no in-place op, no data-dependent branch), so they run under
``torch.func.grad`` and ``vmap`` over tasks, and differentiate to any order.

Which surrogate for MAML's inner step (Rothfuss et al. 2019, "ProMP", Sec. 4-5):

* :func:`reinforce` (``log pi * A``, as in MAML's and ``pytorch-maml-rl``'s code): the right gradient, but
  its Hessian lacks the score-function terms, so the second-order meta-gradient is biased.
* :func:`dice` (Foerster et al. 2018): unbiased derivatives of every order; high-variance Hessians.
* :func:`lvc` (ProMP's low-variance curvature): the right gradient, a biased but much lower-variance Hessian.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def discount_matrix(length: int, factor: float, like: Tensor) -> Tensor:
    """``D [T, T]`` with ``D[t, s] = factor ** (s - t)`` for ``s >= t`` and 0 below the diagonal, so that
    ``x @ D.T`` is the discounted sum of ``x`` from each step onwards (one matmul instead of a loop over time)."""
    steps = torch.arange(length, device=like.device)
    lag = steps.unsqueeze(0) - steps.unsqueeze(1)
    powers = torch.tensor(factor, dtype=like.dtype, device=like.device).pow(lag.clamp_min(0))
    return torch.where(lag >= 0, powers, torch.zeros_like(powers))


def discounted_returns(rewards: Tensor, masks: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t = sum_{s >= t} gamma^(s-t) r_s`` over the valid steps ``[..., T]`` (0 on padding).

    Example::

        discounted_returns(torch.tensor([1., 1., 1.]), torch.tensor([1, 1, 0]), gamma=0.5)   # [1.5, 1., 0.]
    """
    masks = masks.to(rewards.dtype)
    return ((rewards * masks) @ discount_matrix(rewards.shape[-1], gamma, rewards).T) * masks


def gae(rewards: Tensor, values: Tensor, masks: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) ``[..., T]``, 0 on padding.

    ``A_t = sum_{s >= t} (gamma lam)^(s-t) delta_s`` with ``delta_t = r_t + gamma V_{t+1} - V_t``, where the
    value after an episode's last step (padding, or past the horizon) is 0, as in ``pytorch-maml-rl``'s
    ``BatchEpisodes.gae`` and ProMP's sample processor.  ``lam = 1`` gives ``G_t - V_t``.

    Example::

        advantages = gae(rewards, baseline.predict(coefficients, observations, masks), masks, 0.99, 1.0)
    """
    masks = masks.to(rewards.dtype)
    values = values * masks
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + gamma * next_values - values) * masks
    return (deltas @ discount_matrix(rewards.shape[-1], gamma * lam, rewards).T) * masks


def valid(x: Tensor, masks: Tensor) -> Tensor:
    """``x`` with its padded steps set to 0 *before* any arithmetic: padding may hold an action of probability
    0 (``log pi = -inf``), and ``-inf * 0`` or ``exp(-inf - -inf)`` would be NaN in the value or the gradient."""
    return torch.where(masks.bool(), x, torch.zeros_like(x))


def magic_box(x: Tensor) -> Tensor:
    """DiCE's operator ``exp(x - stop_gradient(x))``: 1 in value, ``d/dθ magic_box(x) = magic_box(x) dx/dθ``."""
    return torch.exp(x - x.detach())


def dice(log_probs: Tensor, rewards: Tensor, masks: Tensor, gamma: float,
         values: Optional[Tensor] = None) -> Tensor:
    """The DiCE objective per step (Foerster et al. 2018), whose derivatives of every order are unbiased
    estimates of those of the expected discounted return ``J``.

    Without ``values``: ``magic_box(sum_{s <= t} log pi_s) * gamma^t r_t``, as ProMP's ``DICEMAML``
    (``meta_policy_search/meta_algos/dice_maml.py``); its sum over time equals the discounted return in
    value.  With state ``values V_t`` (a baseline, e.g. :class:`~lightning_meta.linear_baseline.LinearFeatureBaseline`):
    Loaded DiCE's form with ``lambda = 1`` (Farquhar et al. 2019; the baseline of Mao et al. 2019)
    ``(magic_box(sum_{s <= t} log pi_s) - magic_box(sum_{s < t} log pi_s)) * gamma^t (G_t - V_t)``,
    zero in value, every derivative the same in expectation, lower variance.

    ``log_probs [..., T]`` are the log-probabilities of the taken actions under the parameters being
    differentiated.  Example::

        inner_loss = -dice(dist.log_prob(actions), rewards, masks, gamma=0.99).sum(-1).mean()
    """
    log_probs, masks = valid(log_probs, masks), masks.to(log_probs.dtype)
    discount = torch.tensor(gamma, dtype=log_probs.dtype, device=log_probs.device).pow(
        torch.arange(log_probs.shape[-1], device=log_probs.device))
    cumulative = torch.cumsum(log_probs, dim=-1)
    if values is None:
        return magic_box(cumulative) * discount * rewards * masks
    advantages = discount * (discounted_returns(rewards, masks, gamma) - values)
    return (magic_box(cumulative) - magic_box(cumulative - log_probs)) * advantages * masks


def lvc(log_probs: Tensor, advantages: Tensor, masks: Tensor) -> Tensor:
    """ProMP's low-variance curvature objective per step, ``exp(log pi_t - stop_gradient(log pi_t)) * A_t``
    (Rothfuss et al. 2019, Eq. 4; ``meta_policy_search/meta_algos/pro_mp.py``'s likelihood ratio at the
    sampling policy).

    Its gradient is the policy gradient; its Hessian keeps each step's own score terms and drops the
    cross terms between steps, which DiCE keeps: biased, far less variance.  ``advantages`` are constants
    (e.g. :func:`gae`).  Example::

        inner_loss = -lvc(dist.log_prob(actions), advantages, masks).sum(-1).mean()
    """
    return magic_box(valid(log_probs, masks)) * valid(advantages, masks)


def reinforce(log_probs: Tensor, advantages: Tensor, masks: Tensor) -> Tensor:
    """The plain score-function objective per step ``log pi_t * A_t`` (Williams 1992), MAML-RL's inner loss.

    Right gradient, wrong Hessian (no score-function outer products): kept as the reference that shows why
    :func:`dice` and :func:`lvc` exist.  Example::

        inner_loss = -reinforce(dist.log_prob(actions), advantages, masks).sum(-1).mean()
    """
    return valid(log_probs, masks) * valid(advantages, masks)


def ppo_clip(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, masks: Tensor,
             clip: float = 0.2) -> Tensor:
    """PPO's clipped surrogate per step (Schulman et al. 2017, Eq. 7), ``min(r A, clip(r, 1-eps, 1+eps) A)``
    with ``r = exp(log pi - log pi_old)``; the outer objective of ProMP with ``old_log_probs`` from the
    sampling policy.  Example::

        loss = -masked_mean(ppo_clip(new.log_prob(actions), old_log_probs, advantages, masks), masks)
    """
    ratio = torch.exp(valid(log_probs - old_log_probs, masks))
    advantages = valid(advantages, masks)
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def masked_mean(values: Tensor, masks: Tensor) -> Tensor:
    """The mean of ``values`` over the valid steps (``masks`` broadcast to ``values``), a scalar.

    Example::

        masked_mean(torch.tensor([1., 2., 9.]), torch.tensor([1, 1, 0]))     # tensor(1.5)
    """
    masks = masks.to(values.dtype)
    return (values * masks).sum() / masks.sum()
