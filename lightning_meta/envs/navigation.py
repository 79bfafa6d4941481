"""2D navigation to a hidden goal, the point-mass task of MAML (Finn et al. 2017), batched over tasks and envs."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_meta.envs.family import FAMILY_ARGS, Task, TaskFamily
from lightning_meta.errors import require_positive

#: an action's coordinates are clipped to [-MAX_STEP, MAX_STEP]
MAX_STEP = 0.1
#: the episode ends once both coordinates are within GOAL_TOLERANCE of the goal
GOAL_TOLERANCE = 0.01


class Navigation2D(TaskFamily):
    """A point in the plane, starting at the origin, moved towards a goal it cannot see.

    A task is a goal drawn uniformly from ``[-0.5, 0.5]^2``. The observation is the position; an
    action is a 2-D step, each coordinate clipped to ``[-0.1, 0.1]``; the reward is minus the
    Euclidean distance from the new position to the goal (as the authors' code, rllab /
    pytorch-maml-rl, computes it; the paper's text says squared distance). An episode ends when both
    coordinates are within 0.01 of the goal, or at ``horizon`` steps. Deterministic: ``noise_size`` 0.
    Works under ``torch.func.vmap`` over the task dimension.

    Args:
        horizon: steps of one episode (the paper: 100).

    Example::

        family = Navigation2D()
        task = family.stack([family.sample_task(torch.Generator().manual_seed(i)) for i in range(20)])
        state, obs = family.reset(task, 20, torch.empty(20, 20, 0))
        state, obs, reward, done = family.step(task, state, torch.zeros(20, 20, 2), torch.empty(20, 20, 0))
    """

    observation_size = 2
    action_size = 2
    noise_size = 0

    def __init__(self, horizon: int = 100):
        require_positive(FAMILY_ARGS + "horizon", horizon)
        self.horizon = horizon

    def sample_task(self, generator: torch.Generator) -> Task:
        """``{"goal": [2]}``, uniform in ``[-0.5, 0.5]^2`` (drawn in float64, returned in the default dtype)."""
        goal = torch.rand(2, generator=generator, dtype=torch.float64) - 0.5
        return {"goal": goal.to(torch.get_default_dtype())}

    def reset(self, task: Task, n: int, noise: Tensor) -> tuple[Tensor, Tensor]:
        goal = task["goal"]
        position = goal.new_zeros(goal.shape[:-1] + (n, 2))
        return position, position

    def step(self, task: Task, state: Tensor, action: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        position = state + action.to(state.dtype).clamp(-MAX_STEP, MAX_STEP)
        # coordinate by coordinate: square().sum(-1) and all(-1) over the size-2 dim ran up to 50x slower (2 threads)
        dx, dy = (position - task["goal"].unsqueeze(-2)).unbind(-1)
        done = torch.maximum(dx.abs(), dy.abs()) < GOAL_TOLERANCE
        return position, position, -torch.hypot(dx, dy), done
