"""Batched meta-RL task families (see :mod:`lightning_meta.envs.family`)."""

from lightning_meta.envs.bandits import BernoulliBandits
from lightning_meta.envs.family import TaskFamily, rollout_uniforms
from lightning_meta.envs.gymnasium_tasks import GymnasiumTasks
from lightning_meta.envs.metaworld_tasks import MetaWorldML1
from lightning_meta.envs.mujoco_presets import AntDir, AntVel, HalfCheetahDir, HalfCheetahVel
from lightning_meta.envs.navigation import Navigation2D
from lightning_meta.envs.tabular_mdp import TabularMDPs

__all__ = ["AntDir", "AntVel", "BernoulliBandits", "GymnasiumTasks", "HalfCheetahDir", "HalfCheetahVel", "MetaWorldML1",
           "Navigation2D", "TabularMDPs", "TaskFamily", "rollout_uniforms"]
