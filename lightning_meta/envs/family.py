"""The interface of a batched task family: many tasks, many environments per task, one tensor call per step.

A family simulates ``B`` tasks x ``n`` environments at once, on the device of its task tensors, with no
Python loop over tasks or environments, so a meta-batch of rollouts is one loop over time::

    task   = family.stack([family.sample_task(generator) for generator in generators])  # {name: [B, ...]}
    state, obs = family.reset(task, n, noise[..., 0, :])        # obs    [B, n, observation_size]
    state, obs, reward, done = family.step(task, state, action, noise[..., t, :])
                                                                # reward [B, n] float, done [B, n] bool

All randomness of the environment comes in as ``noise``: uniform variates in [0, 1), ``noise_size`` of them
per environment per step (``[B, n, noise_size]``), so a rollout is a pure function of the task, the
actions and the noise. The caller draws the noise from each task's key (:func:`rollout_uniforms`), which
makes a loop over tasks, a vmapped batch and a split over processes give the same numbers.

Continuous families take actions ``[B, n, action_size]`` (float); discrete ones ``[B, n]`` (long) in
``0..num_actions-1``. ``done`` is the environment's own termination; the caller also stops every episode
at ``horizon`` and masks the steps after ``done``.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import Tensor

from lightning_meta.errors import DATA_ARGS

Task = dict[str, Tensor]

#: the prefix of a family's constructor arguments in error messages, as a config sets them
#: (``data.init_args.family.init_args.arms``)
FAMILY_ARGS = DATA_ARGS + "family.init_args."


class TaskFamily:
    """Base class of batched task families (see the module docstring).

    Subclasses set the class or instance attributes below and implement :meth:`sample_task`,
    :meth:`reset` and :meth:`step`.  Each constructor argument is kept as an attribute of the same name,
    so :meth:`spec` can describe the family in a checkpoint.
    """

    #: size of one observation vector
    observation_size: int
    #: size of a continuous action vector; 0 for a discrete family
    action_size: int = 0
    #: number of discrete actions; 0 for a continuous family
    num_actions: int = 0
    #: the steps of one episode
    horizon: int
    #: uniform variates one environment consumes per step (reset included); 0 for deterministic families
    noise_size: int = 0

    @property
    def discrete(self) -> bool:
        return self.num_actions > 0

    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` of this family: how checkpoints and configs name it."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "args", "kwargs")]
        args = {name: getattr(self, name) for name in names}
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}

    def sample_task(self, generator: torch.Generator) -> Task:
        """One task's parameters, unbatched (e.g. ``{"goal": [2]}``), drawn from ``generator`` alone."""
        raise NotImplementedError

    def stack(self, tasks: Sequence[Task]) -> Task:
        """Tasks from :meth:`sample_task` stacked along a new dim 0."""
        return {name: torch.stack([task[name] for task in tasks]) for name in tasks[0]}

    def reset(self, task: Task, n: int, noise: Tensor) -> tuple[Any, Tensor]:
        """``n`` fresh environments per task: ``(state, observation [B, n, observation_size])``."""
        raise NotImplementedError

    def step(self, task: Task, state: Any, action: Tensor, noise: Tensor) -> tuple[Any, Tensor, Tensor, Tensor]:
        """One step of every environment: ``(state, observation, reward [B, n], done [B, n])``."""
        raise NotImplementedError


def rollout_uniforms(keys: Tensor, phase: int, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """Uniform variates ``[B, *shape]`` in [0, 1): row ``b`` a pure function of ``(keys[b], phase)``.

    ``phase`` tells apart the draws of one task (inner step, post-adaptation rollouts, PPO minibatches,
    action noise vs environment noise), so no two uses of a task's key share numbers.

    Example::

        noise = rollout_uniforms(batch.key, phase=1, shape=(20, 100, family.noise_size))
    """
    rows = []
    for key in keys.tolist():
        generator = torch.Generator()
        generator.manual_seed((int(key) * 1_000_003 + int(phase)) % (2**63 - 1))
        rows.append(torch.rand(tuple(shape), generator=generator, dtype=torch.float64))
    return torch.stack(rows).to(dtype=dtype, device=device)
