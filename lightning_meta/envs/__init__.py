"""Batched meta-RL task families (see :mod:`lightning_meta.envs.family`)."""

from lightning_meta.envs.family import TaskFamily, rollout_uniforms

__all__ = ["TaskFamily", "rollout_uniforms"]
