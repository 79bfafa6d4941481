"""The gymnasium environment behind :class:`~lightning_meta.envs.MetaWorldML1`: one Meta-World ML1 environment
whose task is an index into ML1's list of tasks.

Meta-World 3.1.1's own gymnasium ids do not serve meta-RL (``gymnasium.make("Meta-World/ML1-train", ...)``
finds no entry point; ``make_vec`` for ML1-train binds the test split and fails on reset), so this adapter
drives the classic API: ``ML1(env_name, seed)`` for the tasks of each split, ``env.set_task(task)`` to
choose one, ``env.seed(seed)`` at reset.  Importing this module needs metaworld (the ``metaworld`` extra)
and registers :data:`ENV_ID`, so ``gymnasium.make("lightning_meta.envs.metaworld_env:lightning-meta/ML1-v0")``
works in every process, ``AsyncVectorEnv`` workers included.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, SupportsFloat

import gymnasium
import metaworld
import numpy as np
from metaworld.sawyer_xyz_env import SawyerXYZEnv

from lightning_meta.envs.metaworld_tasks import Split

ENV_ID = "lightning-meta/ML1-v0"


@functools.cache
def benchmark(env_name: str, seed: int) -> metaworld.ML1:
    """``ML1(env_name, seed)``, built once per process: it resets an environment 100 times to draw its goals."""
    return metaworld.ML1(env_name, seed=seed)


def ml1_tasks(env_name: str, seed: int, split: Split) -> list[metaworld.Task]:
    """The tasks of one split of ``ML1(env_name, seed)``: the same skill, a different goal each."""
    ml1 = benchmark(env_name, seed)
    return ml1.train_tasks if split == "train" else ml1.test_tasks


class ML1Env(gymnasium.Env):
    """A Meta-World ML1 environment as a gymnasium environment whose task is the attribute ``task_index``.

    Setting ``task_index`` calls the Meta-World environment's ``set_task`` with that task of the split;
    ``reset(seed=s)`` calls its ``seed(s)`` first (its own ``reset`` ignores ``seed``).  The goal of a task
    is fixed by ``set_task``; any other draw at reset comes from the seeded generator (``seeded_rand_vec``),
    never from numpy's global one, so an episode is a function of the task, the seed and the actions.

    Args:
        env_name: a Meta-World v3 skill, e.g. ``"reach-v3"`` (``metaworld.ML1.ENV_NAMES`` lists them).
        benchmark_seed: the seed of ``ML1(env_name, seed)``, which draws the goals of both splits.
        split: ``"train"`` or ``"test"``: which of ML1's two lists of goals the tasks come from.

    Example::

        env = gymnasium.make("lightning_meta.envs.metaworld_env:lightning-meta/ML1-v0", env_name="reach-v3")
        env.unwrapped.task_index = 7
        observation, info = env.reset(seed=0)
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, env_name: str = "reach-v3", benchmark_seed: int = 0, split: Split = "train"):
        self.tasks = ml1_tasks(env_name, benchmark_seed, split)
        self.env = benchmark(env_name, benchmark_seed).train_classes[env_name]()
        self.env.seeded_rand_vec = True
        self.task_index = 0  # Meta-World refuses to step before a task is set
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space

    @property
    def task_index(self) -> int:
        """The index of the current task in the split's list."""
        return self._task_index

    @task_index.setter
    def task_index(self, index: float) -> None:
        self._task_index = int(index)
        self.env.set_task(self.tasks[self._task_index])

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.env.seed(seed)
        return self.env.reset()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()


# no passive checker: it warns that the hidden goal's part of the observation space has zero width (ML1's design)
gymnasium.register(ENV_ID, entry_point=ML1Env, max_episode_steps=SawyerXYZEnv.max_path_length,
                   disable_env_checker=True)
