"""Random tabular MDPs (RL², Duan et al. 2016), batched over tasks and envs."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_meta.envs.family import FAMILY_ARGS, Task, TaskFamily
from lightning_meta.errors import require_positive


class TabularMDPs(TaskFamily):
    """MDPs of ``states`` states and ``actions`` actions with random transitions and rewards.

    A task is ``{"transitions": [states, actions, states], "reward_mean": [states, actions]}``: each
    row ``transitions[s, a]`` drawn from a flat Dirichlet (normalised ``Exp(1)`` variates, themselves
    ``-log(1 - U)``), then each ``reward_mean[s, a]`` from ``N(1, 1)``. An episode starts in state 0
    (as the RL² authors' rllab code and pytorch-maml-rl do; the paper does not say) and lasts
    ``horizon`` steps; ``done`` is always False, the caller stops at the horizon. The observation is
    the state one-hot. A step draws the reward ``N(reward_mean[s, a], 1)`` as the inverse normal CDF of
    ``noise[..., 0]``, and the next state as the inverse CDF of ``transitions[s, a]`` at ``noise[..., 1]``
    (the first state whose cumulative probability exceeds it). Uniforms are clamped into the open
    interval (0, 1) of their dtype first, so a reward is always finite. Reset draws nothing.
    Works under ``torch.func.vmap`` over the task dimension.

    Args:
        states: the number of states (the paper: 10).
        actions: the number of actions (the paper: 5).
        horizon: steps of one episode (the paper: 10).

    Example::

        family = TabularMDPs(states=10, actions=5)
        task = family.stack([family.sample_task(torch.Generator().manual_seed(i)) for i in range(8)])
        noise = torch.rand(8, 16, 2)
        state, obs = family.reset(task, 16, noise)          # obs [8, 16, 10]
        state, obs, reward, done = family.step(task, state, torch.zeros(8, 16, dtype=torch.long), noise)
    """

    noise_size = 2

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10):
        require_positive(FAMILY_ARGS + "states", states)
        require_positive(FAMILY_ARGS + "actions", actions)
        require_positive(FAMILY_ARGS + "horizon", horizon)
        self.states, self.actions, self.horizon = states, actions, horizon
        self.observation_size, self.num_actions = states, actions

    def sample_task(self, generator: torch.Generator) -> Task:
        """The transition table, then the mean rewards (drawn in float64, returned in the default dtype)."""
        states, actions = self.observation_size, self.num_actions
        weights = -torch.log1p(-torch.rand(states, actions, states, generator=generator, dtype=torch.float64))
        transitions = weights / weights.sum(-1, keepdim=True)
        reward_mean = 1.0 + torch.randn(states, actions, generator=generator, dtype=torch.float64)
        dtype = torch.get_default_dtype()
        return {"transitions": transitions.to(dtype), "reward_mean": reward_mean.to(dtype)}

    def reset(self, task: Task, n: int, noise: Tensor) -> tuple[Tensor, Tensor]:
        mean = task["reward_mean"]
        state = torch.zeros(mean.shape[:-2] + (n,), dtype=torch.long, device=mean.device)
        return state, self.one_hot(state, mean.dtype)

    def step(self, task: Task, state: Tensor, action: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, transitions = task["reward_mean"], task["transitions"]
        pair = state * self.num_actions + action  # the row (s, a) of the tables flattened to [states * actions]
        reward = torch.gather(mean.flatten(-2), -1, pair) + torch.special.ndtri(open_unit(noise[..., 0], mean.dtype))
        rows = transitions.flatten(-3, -2)
        row = torch.gather(rows, -2, pair.unsqueeze(-1).expand(pair.shape + rows.shape[-1:]))
        below = row.cumsum(-1) <= open_unit(noise[..., 1], mean.dtype).unsqueeze(-1)
        next_state = below.sum(-1).clamp(max=self.observation_size - 1)  # round-off can leave the total below 1
        return next_state, self.one_hot(next_state, mean.dtype), reward, torch.zeros_like(next_state, dtype=torch.bool)

    def one_hot(self, state: Tensor, dtype: torch.dtype) -> Tensor:
        """``[..., states]`` with a 1 at ``state`` (a comparison, not ``F.one_hot``, so vmap can batch it)."""
        return (state.unsqueeze(-1) == torch.arange(self.observation_size, device=state.device)).to(dtype)


def open_unit(uniform: Tensor, dtype: torch.dtype) -> Tensor:
    """``uniform`` in ``dtype``, clamped into (0, 1): its smallest normal number to the largest number below 1."""
    finfo = torch.finfo(dtype)
    return uniform.to(dtype).clamp(finfo.tiny, 1.0 - finfo.eps / 2)
