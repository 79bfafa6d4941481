"""The MuJoCo task families of the MAML paper on gymnasium's v5 environments: cheetah and ant, velocity and direction.

The environment never sees the task: each family computes the task's reward from the step's info
(``x_velocity``, and the ant's ``reward_contact``) and the action, as defined by MAML (Finn et al., 2017,
rllab ``cbfinn/maml_rl``) and its PyTorch port ``tristandeleu/pytorch-maml-rl``
(``maml_rl/envs/mujoco/half_cheetah.py``, ``ant.py``), so no environment has to be registered.  The
dynamics, observations and reset noise are gymnasium's v5 ones (frame skip 5, ``dt = 0.05``); the
episodes last 200 steps as in the paper.  ProMP (``jonasrothfuss/ProMP``) uses the same cheetah tasks
(velocity in ``[0, 3]``) but gym's ant costs (survive 1.0, control ``0.5 ||a||^2``): not these.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from lightning_meta.envs.family import Task
from lightning_meta.envs.gymnasium_tasks import GymnasiumTasks, Vectorization

#: the cost of an action ``a``: ``CONTROL_COST * ||a||^2`` (``0.5 * 1e-1`` in MAML's cheetah)
CHEETAH_CONTROL_COST = 0.05
#: MAML's ant: ``0.5 * 1e-2 * ||a / scaling||^2`` (the ant's action bounds are [-1, 1]: scaling 1)
ANT_CONTROL_COST = 0.005
#: MAML's ant is paid for staying alive (its episode ends when the torso leaves z in [0.2, 1])
ANT_SURVIVE_REWARD = 0.05


class HalfCheetahVel(GymnasiumTasks):
    """HalfCheetah running at a goal velocity drawn from U[0, 2]: reward ``-|v_x - goal| - 0.05 ||a||^2``.

    Args:
        horizon: steps of one episode (200 in the MAML paper).
        vectorization: ``"sync"`` or ``"async"`` (see :class:`GymnasiumTasks`).
        make_kwargs: keyword arguments of ``gymnasium.make("HalfCheetah-v5", ...)``.

    Example::

        family = HalfCheetahVel()
        data = EnvTaskDataModule(family, rollouts=20, meta_batch_size=40)
    """

    def __init__(self, horizon: int = 200, vectorization: Vectorization = "sync",
                 make_kwargs: Optional[dict[str, Any]] = None):
        super().__init__("HalfCheetah-v5", low=0.0, high=2.0, make_kwargs=make_kwargs, horizon=horizon,
                         vectorization=vectorization)

    def task_reward(self, task: Task, action: Tensor, reward: Tensor, info: dict[str, Tensor]) -> Tensor:
        goal = task["task"][:, None]
        return -(info["x_velocity"] - goal).abs() - CHEETAH_CONTROL_COST * action.square().sum(-1)


class HalfCheetahDir(GymnasiumTasks):
    """HalfCheetah running forward or backward (direction ±1, each with probability 1/2):
    reward ``direction * v_x - 0.05 ||a||^2``.

    Args:
        horizon / vectorization / make_kwargs: as for :class:`HalfCheetahVel`.

    Example::

        family = HalfCheetahDir(horizon=200)
    """

    def __init__(self, horizon: int = 200, vectorization: Vectorization = "sync",
                 make_kwargs: Optional[dict[str, Any]] = None):
        super().__init__("HalfCheetah-v5", values=[-1.0, 1.0], make_kwargs=make_kwargs, horizon=horizon,
                         vectorization=vectorization)

    def task_reward(self, task: Task, action: Tensor, reward: Tensor, info: dict[str, Tensor]) -> Tensor:
        direction = task["task"][:, None]
        return direction * info["x_velocity"] - CHEETAH_CONTROL_COST * action.square().sum(-1)


def ant_survival_and_costs(action: Tensor, info: dict[str, Tensor]) -> Tensor:
    """The Ant rewards' task-free part: survival bonus, control cost and gymnasium's (negative) contact reward."""
    return ANT_SURVIVE_REWARD - ANT_CONTROL_COST * action.square().sum(-1) + info["reward_contact"]


class AntVel(GymnasiumTasks):
    """Ant walking at a goal velocity drawn from U[0, 3]: reward ``-|v_x - goal| + 1 + 0.05 - 0.005 ||a||^2
    - contact cost``.

    The contact cost is gymnasium's ``5e-4 * sum(clip(cfrc_ext, -1, 1)^2)`` (MAML's ``0.5 * 1e-3``); the
    episode ends when the torso leaves z in [0.2, 1] (gymnasium's ``healthy_z_range``, MAML's as well).

    Args:
        horizon / vectorization / make_kwargs: as for :class:`HalfCheetahVel`.

    Example::

        family = AntVel(horizon=200)
    """

    def __init__(self, horizon: int = 200, vectorization: Vectorization = "sync",
                 make_kwargs: Optional[dict[str, Any]] = None):
        super().__init__("Ant-v5", low=0.0, high=3.0, make_kwargs=make_kwargs, horizon=horizon,
                         vectorization=vectorization)

    def task_reward(self, task: Task, action: Tensor, reward: Tensor, info: dict[str, Tensor]) -> Tensor:
        goal = task["task"][:, None]
        forward = -(info["x_velocity"] - goal).abs() + 1.0  # MAML: "make it happy, not suicidal"
        return forward + ant_survival_and_costs(action, info)


class AntDir(GymnasiumTasks):
    """Ant walking forward or backward (direction ±1, each with probability 1/2): reward ``direction * v_x
    + 0.05 - 0.005 ||a||^2 - contact cost`` (contact cost and termination as in :class:`AntVel`).

    Args:
        horizon / vectorization / make_kwargs: as for :class:`HalfCheetahVel`.

    Example::

        family = AntDir(horizon=200)
    """

    def __init__(self, horizon: int = 200, vectorization: Vectorization = "sync",
                 make_kwargs: Optional[dict[str, Any]] = None):
        super().__init__("Ant-v5", values=[-1.0, 1.0], make_kwargs=make_kwargs, horizon=horizon,
                         vectorization=vectorization)

    def task_reward(self, task: Task, action: Tensor, reward: Tensor, info: dict[str, Tensor]) -> Tensor:
        direction = task["task"][:, None]
        return direction * info["x_velocity"] + ant_survival_and_costs(action, info)
