"""Collecting trajectories of a batched task family: ``B`` tasks x ``n`` episodes in one loop over time.

:func:`collect` runs a policy (one set of weights, or one per task) in every environment of a
:class:`~lightning_meta.envs.TaskFamily` at once; the action noise and the environment noise of task
``b`` come from ``(key[b], phase)`` (:func:`~lightning_meta.envs.rollout_uniforms`), so the episodes of a
task do not depend on the other tasks of its batch, on the process that collects them or on a resume.
:func:`with_advantages` fits the linear feature baseline per task and adds normalised GAE advantages.

Example::

    trajectories = collect(family, batch.task, policy_at(policy, params), n=20, keys=batch.key, phase=0)
    trajectories.returns().mean(1)                  # [B]: each task's mean undiscounted return
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_meta.envs.family import Task, TaskFamily, rollout_uniforms
from lightning_meta.linear_baseline import LinearFeatureBaseline
from lightning_meta.policy_gradient import discounted_returns, gae

#: ``policy_at(observations [B, n, obs]) -> distribution`` with batch shape ``[B, n]``
PolicyAt = Callable[[Tensor], Any]


class Trajectories(NamedTuple):
    """``n`` episodes of each of ``B`` tasks, padded to the horizon ``T`` (a pytree: ``vmap`` slices it per task).

    ``masks`` is 1 up to and including an episode's last step; ``old`` is the sampling policy's action
    distribution at each step (the "old" policy of TRPO's KL and PPO's ratio) and ``log_probs`` its
    log-probabilities of the actions taken; ``advantages`` and the baseline's ``values`` are set by
    :func:`with_advantages`.
    """

    observations: Tensor   # [B, n, T, observation_size]
    actions: Tensor        # [B, n, T, action_size] (float) or [B, n, T] (long)
    rewards: Tensor        # [B, n, T], 0 after an episode's end
    masks: Tensor          # [B, n, T]
    log_probs: Tensor      # [B, n, T]
    old: Any               # DiagonalGaussian | Categorical with batch [B, n, T]
    advantages: Optional[Tensor] = None
    values: Optional[Tensor] = None

    def returns(self) -> Tensor:
        """Undiscounted return of each episode ``[..., n]``."""
        return (self.rewards * self.masks).sum(-1)

    def steps(self) -> int:
        """Environment steps taken (valid steps of all episodes)."""
        return int(self.masks.sum().item())


def policy_at(policy: nn.Module, params: Optional[dict[str, Tensor]] = None, per_task: bool = False) -> PolicyAt:
    """The policy as a function of observations ``[B, n, obs]``: with its own weights, ``params`` shared
    by all tasks, or ``params`` stacked per task (``per_task``: dim 0 is the task, vmapped)."""
    if params is None:
        return policy
    if not per_task:
        return lambda observations: functional_call(policy, params, (observations,))
    return lambda observations: vmap(lambda p, o: functional_call(policy, p, (o,)))(params, observations)


def collect(family: TaskFamily, task: Task, policy: PolicyAt, n: int, keys: Tensor, phase: int,
            dtype: torch.dtype = torch.float32) -> Trajectories:
    """``n`` episodes of every task, ``family.horizon`` steps long, actions sampled from ``policy`` with the
    noise of ``(keys[b], phase)``: phase ``2 * phase`` draws the actions, ``2 * phase + 1`` the environment.

    Runs without gradients: what the learner differentiates is recomputed from the returned tensors.
    """
    device, horizon = keys.device, family.horizon
    tasks = keys.shape[0]
    action_width = family.action_size if not family.discrete else 1
    env_width = max(family.noise_size, 1)
    action_noise = rollout_uniforms(keys, 2 * phase, (n, horizon, action_width), torch.float64, device)
    env_noise = rollout_uniforms(keys, 2 * phase + 1, (n, horizon + 1, env_width), torch.float64, device)
    env_noise = env_noise[..., :family.noise_size]
    observations, actions, rewards, masks, log_probs, olds = [], [], [], [], [], []
    with torch.no_grad():
        state, observation = family.reset(task, n, env_noise[:, :, 0])
        alive = torch.ones(tasks, n, dtype=dtype, device=device)
        for t in range(horizon):
            observation = observation.to(dtype)
            distribution = policy(observation)
            u = action_noise[:, :, t].to(dtype)
            action = distribution.sample(u if not family.discrete else u[..., 0])
            state, next_observation, reward, done = family.step(task, state, action, env_noise[:, :, t + 1])
            observations.append(observation)
            actions.append(action)
            rewards.append(reward.to(dtype) * alive)
            masks.append(alive)
            log_probs.append(distribution.log_prob(action))
            olds.append(distribution)
            alive = alive * (~done).to(dtype)
            observation = next_observation
    old = type(olds[0])(*(torch.stack(parts, dim=2) for parts in zip(*olds)))
    return Trajectories(torch.stack(observations, 2), torch.stack(actions, 2), torch.stack(rewards, 2),
                        torch.stack(masks, 2), torch.stack(log_probs, 2), old)


def normalised(values: Tensor, masks: Tensor, eps: float = 1e-8) -> Tensor:
    """``values [B, n, T]`` standardised per task over its valid steps (``pytorch-maml-rl``'s
    ``weighted_normalize``)."""
    count = masks.sum((1, 2), keepdim=True).clamp_min(1)
    mean = (values * masks).sum((1, 2), keepdim=True) / count
    variance = ((values - mean).square() * masks).sum((1, 2), keepdim=True) / count
    return (values - mean) / (variance.sqrt() + eps) * masks


def with_advantages(trajectories: Trajectories, gamma: float, gae_lambda: float,
                    baseline: LinearFeatureBaseline) -> Trajectories:
    """``trajectories`` with GAE advantages over a linear feature baseline fitted to each task's own
    episodes, standardised per task (MAML-RL's and ProMP's sample processing)."""
    observations, rewards, masks = trajectories.observations, trajectories.rewards, trajectories.masks
    coefficients = baseline.fit(observations, discounted_returns(rewards, masks, gamma), masks)
    values = baseline.predict(coefficients, observations, masks)
    advantages = normalised(gae(rewards, values, masks, gamma, gae_lambda), masks)
    return trajectories._replace(advantages=advantages, values=values)

