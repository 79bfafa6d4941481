"""``MetaWorldML1``: a Meta-World ML1 benchmark (one manipulation skill, a different goal per task) as a batched
task family, through :class:`~lightning_meta.envs.GymnasiumTasks`.

A task is an index into one split of ``ML1(env_name, seed)`` (50 goals each in metaworld 3.1.1), drawn
uniformly from the task's key; each of the ``B x n`` sub-environments is a
:class:`~lightning_meta.envs.metaworld_env.ML1Env` that applies it with Meta-World's own ``set_task``.

metaworld is the ``metaworld`` extra, imported when a family is built: ``pip install
'lightning-meta[metaworld]'``.  It pins ``mujoco==3.3.0``, so it does not share an environment with the
``rl`` extra of ``make install`` (MuJoCo 4).
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Literal

from lightning_meta.envs.family import FAMILY_ARGS
from lightning_meta.envs.gymnasium_tasks import GymnasiumTasks, Vectorization
from lightning_meta.errors import ConfigurationError, require_choice

Split = Literal["train", "test"]
INSTALL = "pip install 'lightning-meta[metaworld]'"


def import_metaworld_env(owner: str) -> ModuleType:
    """:mod:`lightning_meta.envs.metaworld_env` (which imports metaworld), or a one-line error naming the extra."""
    try:
        return importlib.import_module("lightning_meta.envs.metaworld_env")
    except ImportError as error:
        raise ConfigurationError(f"{owner} needs metaworld, which cannot be imported ({error}): {INSTALL}") from error


class MetaWorldML1(GymnasiumTasks):
    """Meta-World ML1: one skill (reaching, by default), each task a goal of one of ML1's two splits.

    The goal is not in the observation (39 numbers: hand, gripper, object; ML1 is partially observable),
    so a policy finds it from the rewards, in Meta-World's ``v2`` reward (0 to 10 per step).  Actions
    are 4 numbers in [-1, 1] (hand displacement, gripper).  The family draws task indices, not goals, so
    each sub-environment gets ML1's exact task through ``set_task``.  Meta-training uses the ``"train"``
    split; ML1's held-out goals are the ``"test"`` split (``--data.init_args.family.init_args.split test``
    when testing a trained run).

    Args:
        env_name: a Meta-World v3 skill (``metaworld.ML1.ENV_NAMES``); ``"reach-v3"`` is the one tested.
        split: ``"train"`` or ``"test"``: the list of goals the tasks come from.
        benchmark_seed: the seed of ``ML1(env_name, seed)``, which draws the goals of both splits.
        horizon: steps of one episode; default Meta-World's own limit (500), where it ends episodes itself.
        vectorization: ``"sync"`` or ``"async"`` (see :class:`GymnasiumTasks`).

    Example::

        family = MetaWorldML1("reach-v3", horizon=150)
        data = EnvTaskDataModule(family, rollouts=10, meta_batch_size=20)
        trainer.fit(MAMLPolicyGradient(GaussianMLPPolicy(39, 4, hidden_sizes=(100, 100))), data)
    """

    def __init__(self, env_name: str = "reach-v3", split: Split = "train", benchmark_seed: int = 0,
                 horizon: int | None = None, vectorization: Vectorization = "sync"):
        require_choice(f"{FAMILY_ARGS}split", split, Split)
        adapter = import_metaworld_env(type(self).__name__)
        names = adapter.metaworld.ML1.ENV_NAMES
        if env_name not in names:
            close = difflib.get_close_matches(str(env_name), names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigurationError(f"{FAMILY_ARGS}env_name={env_name!r} is not a Meta-World v3 skill: {hint}"
                                     "metaworld.ML1.ENV_NAMES lists them")
        self.env_name, self.split, self.benchmark_seed = env_name, split, benchmark_seed
        tasks = adapter.ml1_tasks(env_name, benchmark_seed, split)
        super().__init__(f"{adapter.__name__}:{adapter.ENV_ID}", task_attribute="task_index",
                         values=list(range(len(tasks))), horizon=horizon, vectorization=vectorization,
                         make_kwargs={"env_name": env_name, "benchmark_seed": benchmark_seed, "split": split})
