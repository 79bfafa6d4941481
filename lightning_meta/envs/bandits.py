"""Bernoulli multi-armed bandits, one pull per episode (RL², Duan et al. 2016), batched over tasks and envs."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_meta.envs.family import FAMILY_ARGS, Task, TaskFamily
from lightning_meta.errors import require_positive


class BernoulliBandits(TaskFamily):
    """``arms`` arms, arm ``a`` paying 1 with probability ``p[a]`` and 0 otherwise.

    A task is ``p``, each entry uniform in [0, 1]. An episode is one pull (``horizon`` 1): the
    observation is a constant zero of size 1, the action an arm ``0..arms-1``, the reward 1.0 when the
    environment's uniform ``noise[..., 0]`` is below ``p[action]``, and the episode is done after it.
    What an agent learns about ``p`` it carries across episodes (a trial of many pulls, as in RL²).
    Works under ``torch.func.vmap`` over the task dimension.

    Args:
        arms: the number of arms (the paper: 5, 10, 50).

    Example::

        family = BernoulliBandits(arms=5)
        task = family.stack([family.sample_task(torch.Generator().manual_seed(i)) for i in range(8)])
        noise = torch.rand(8, 100, 1)
        state, obs = family.reset(task, 100, noise)
        state, obs, reward, done = family.step(task, state, torch.zeros(8, 100, dtype=torch.long), noise)
    """

    observation_size = 1
    horizon = 1
    noise_size = 1

    def __init__(self, arms: int = 5):
        require_positive(FAMILY_ARGS + "arms", arms)
        self.arms = self.num_actions = arms

    def sample_task(self, generator: torch.Generator) -> Task:
        """``{"p": [arms]}``, uniform in [0, 1] (drawn in float64, returned in the default dtype)."""
        p = torch.rand(self.num_actions, generator=generator, dtype=torch.float64)
        return {"p": p.to(torch.get_default_dtype())}

    def reset(self, task: Task, n: int, noise: Tensor) -> tuple[Tensor, Tensor]:
        """The state is the constant observation itself (a tensor, so vmap can return it)."""
        p = task["p"]
        observation = p.new_zeros(p.shape[:-1] + (n, 1))
        return observation, observation

    def step(self, task: Task, state: Tensor, action: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = task["p"]
        success = noise[..., 0].to(p.dtype) < torch.gather(p, -1, action)
        return state, state, success.to(p.dtype), torch.ones_like(success)
