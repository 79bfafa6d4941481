"""``GymnasiumTasks``: any gymnasium environment whose task is one attribute, as a batched task family.

The ``B x n`` environments of a call are the sub-environments of one gymnasium vector environment
(same-step autoreset), built once per ``B * n`` and reused, since building MuJoCo models is slow.  A task
is a value of one attribute of the unwrapped environment (``goal``, ``goal_velocity``), drawn uniformly
from ``[low, high]`` or from a finite set of ``values``, and set on every sub-environment at reset.  The
only noise the family consumes is one uniform per environment at reset, mapped to that sub-environment's
reset seed, so a rollout is a function of the task, the actions and ``(key, phase)`` like every family.

gymnasium (and MuJoCo for the presets of :mod:`lightning_meta.envs.mujoco_presets`) is the ``rl``
extra, imported when a family is built: ``pip install 'lightning-meta[rl]'``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import sys
import warnings
from typing import Any, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from lightning_meta.envs.family import FAMILY_ARGS, Task, TaskFamily
from lightning_meta.errors import ConfigurationError, require_choice, require_positive

Vectorization = Literal["sync", "async"]
Bound = Union[float, Sequence[float]]
INSTALL = "pip install 'lightning-meta[rl]'"


def import_gymnasium(owner: str) -> Any:
    """The gymnasium module, or a one-line error naming the extra that installs it."""
    try:
        import gymnasium
    except ImportError as error:
        raise ConfigurationError(f"{owner} needs gymnasium, which is not installed: {INSTALL}") from error
    return gymnasium


@contextlib.contextmanager
def mujoco_warnings_collected(messages: list[str], entry_point: Any) -> Iterator[None]:
    """Collect MuJoCo's C-level warnings into ``messages`` while a model compiles.

    Without a handler MuJoCo prints them to stderr and appends them to ``MUJOCO_LOG.TXT`` in the working
    directory, once per sub-environment; collected, they become one Python warning each (filterable).
    """
    mujoco = None
    if "mujoco" in sys.modules or "mujoco" in str(entry_point).lower():
        with contextlib.suppress(ImportError):
            import mujoco
    if mujoco is None:
        yield
        return
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def make_env(env: str, make_kwargs: dict[str, Any]) -> Any:
    """One sub-environment, without the registered time limit (the family's ``horizon`` ends episodes).

    A module-level function, so that ``AsyncVectorEnv`` can send it to its worker processes.
    """
    import gymnasium

    module, _, name = env.rpartition(":")  # "my_package:MyEnv-v0" registers its envs on import
    if module:
        importlib.import_module(module)
    messages: list[str] = []
    with mujoco_warnings_collected(messages, gymnasium.spec(name).entry_point):
        made = gymnasium.make(env, **{"max_episode_steps": -1, **make_kwargs})
    for message in dict.fromkeys(messages):
        warnings.warn(f"{message} (MuJoCo, building {env})", UserWarning)
    return made


def step_info(infos: dict[str, Any], num_envs: int) -> dict[str, np.ndarray]:
    """The numeric entries of each sub-environment's own step info ``{name: [num_envs, ...]}``.

    With same-step autoreset, a sub-environment that ended this step was reset at once: its step info
    is in ``infos["final_info"]`` and ``infos`` holds its reset info instead.
    """
    ended = infos.get("_final_info", np.zeros(num_envs, dtype=bool))
    final = infos.get("final_info", {})
    merged = {}
    for name in dict.fromkeys([*infos, *final]):
        if name.startswith("_") or name in ("final_obs", "final_info"):
            continue
        sources = [(infos, ~ended), (final, ended)]
        parts = [(source[name], source[f"_{name}"] & rows) for source, rows in sources if name in source]
        if not all(isinstance(values, np.ndarray) and values.dtype != object for values, _ in parts):
            continue
        values = np.zeros_like(parts[0][0], dtype=np.result_type(*(values for values, _ in parts)))
        for part, rows in parts:
            values[rows] = part[rows]
        merged[name] = values
    return merged


class GymnasiumTasks(TaskFamily):
    """A gymnasium environment as a batched task family: the task is one attribute of the environment.

    Each of the ``B x n`` environments of :meth:`reset` is a sub-environment of a gymnasium vector
    environment; the task of its row is set with ``set_attr(task_attribute, ...)`` and it is reset with a
    seed drawn from the noise, so rollouts are reproducible from the tasks' keys.  Observations
    (``Box`` flattened, ``Discrete`` one-hot) and rewards come back as tensors on the task's device and
    dtype; actions (``Box`` ``[B, n, action_size]`` float, ``Discrete`` ``[B, n]`` long) go to the
    environments as numpy arrays.  The registered time limit is removed: the caller stops episodes at
    ``horizon``; ``done`` is the environment's termination (or its own truncation, if it has one).

    Args:
        env: a registered gymnasium id, e.g. ``"HalfCheetah-v5"``.
        task_attribute: the attribute of ``env.unwrapped`` that holds the task; ``None`` when the
            environment does not see the task and a subclass computes the task's reward
            (:meth:`task_reward`, as the MuJoCo presets do).
        low / high: the task is uniform in ``[low, high]`` (scalars, or lists for a vector task).
        values: instead of ``low``/``high``, a finite set of tasks chosen uniformly (e.g. ``[-1, 1]``).
        make_kwargs: keyword arguments of ``gymnasium.make``.
        horizon: steps of one episode; default the environment's registered ``max_episode_steps``.
        vectorization: ``"sync"`` (one process) or ``"async"`` (one worker process per sub-environment,
            ``B * n`` of them: for a few slow environments).

    Example (cart-poles under gravities drawn from U[5, 15])::

        family = GymnasiumTasks("CartPole-v1", task_attribute="gravity", low=5.0, high=15.0)
        task = family.stack([family.sample_task(torch.Generator().manual_seed(i)) for i in range(4)])
        noise = rollout_uniforms(torch.arange(4), phase=0, shape=(10, family.horizon + 1, family.noise_size))
        state, obs = family.reset(task, 10, noise[:, :, 0])             # obs [4, 10, 4]
        push_left = torch.zeros(4, 10, dtype=torch.long)
        state, obs, reward, done = family.step(task, state, push_left, noise[:, :, 1])
    """

    noise_size = 1

    def __init__(self, env: str, task_attribute: Optional[str] = None, low: Optional[Bound] = None,
                 high: Optional[Bound] = None, values: Optional[Sequence[Bound]] = None,
                 make_kwargs: Optional[dict[str, Any]] = None, horizon: Optional[int] = None,
                 vectorization: Vectorization = "sync"):
        gymnasium = import_gymnasium(type(self).__name__)
        require_choice(f"{FAMILY_ARGS}vectorization", vectorization, Vectorization)
        if make_kwargs is not None and not isinstance(make_kwargs, dict):
            raise ConfigurationError(f"{FAMILY_ARGS}make_kwargs={make_kwargs!r} is invalid: give a dict of keyword"
                                     " arguments of gymnasium.make, e.g. {ctrl_cost_weight: 0.05}")
        self.env, self.task_attribute, self.low, self.high, self.values = env, task_attribute, low, high, values
        self.make_kwargs, self.vectorization = dict(make_kwargs or {}), vectorization
        self._choices, self._low, self._high = self._task_distribution()
        registered_id = self._check_registered(gymnasium)
        probe = self._probe(gymnasium)
        try:
            self._check_task_attribute(probe)
            self.observation_space, self.action_space = probe.observation_space, probe.action_space
        finally:
            probe.close()
        spaces = gymnasium.spaces
        for name, space in (("observation", self.observation_space), ("action", self.action_space)):
            if not isinstance(space, (spaces.Box, spaces.Discrete)):
                raise ConfigurationError(
                    f"{FAMILY_ARGS}env={env!r} has a {type(space).__name__} {name} space: only Box and Discrete"
                    f" spaces are supported; flatten it (gymnasium.wrappers.Flatten{name.capitalize()}) in an env"
                    " you register")
        self._one_hot = isinstance(self.observation_space, spaces.Discrete)
        if self._one_hot:
            self.observation_size = int(self.observation_space.n)
        else:
            self.observation_size = int(np.prod(self.observation_space.shape))
        if isinstance(self.action_space, spaces.Discrete):
            self.num_actions = int(self.action_space.n)
        else:
            self.action_size = int(np.prod(self.action_space.shape))
        registered = gymnasium.spec(registered_id).max_episode_steps
        if horizon is None and registered is None:
            raise ConfigurationError(f"{FAMILY_ARGS}horizon is needed: {env!r} registers no max_episode_steps")
        self.horizon = registered if horizon is None else horizon
        require_positive(f"{FAMILY_ARGS}horizon", self.horizon)
        self._vectors: dict[int, Any] = {}
        self._episodes: dict[int, int] = {}

    def _task_distribution(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(choices [K, ...], None, None)`` for ``values``, ``(None, low, high)`` for a uniform task."""
        uniform = self.low is not None or self.high is not None
        if (self.values is not None) == uniform or (uniform and (self.low is None or self.high is None)):
            raise ConfigurationError(
                f"{FAMILY_ARGS}low/high/values: give either low and high (a uniform task) or values (a finite"
                f" set), got low={self.low!r}, high={self.high!r}, values={self.values!r}")
        if self.values is not None:
            try:
                choices = torch.tensor(self.values, dtype=torch.float64)
            except (TypeError, ValueError) as error:
                raise ConfigurationError(f"{FAMILY_ARGS}values={self.values!r} is invalid ({error}): give a list of"
                                         " numbers, or of lists of one length") from error
            if choices.dim() == 0 or len(choices) == 0:
                raise ConfigurationError(f"{FAMILY_ARGS}values={self.values!r} is invalid: give a non-empty list"
                                         " of tasks")
            return choices, None, None
        low, high = (torch.tensor(bound, dtype=torch.float64) for bound in (self.low, self.high))
        if low.shape != high.shape or not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ConfigurationError(f"{FAMILY_ARGS}low={self.low!r} and high={self.high!r} are invalid: give finite"
                                     " bounds of one shape (two numbers, or two lists of one length)")
        if (low > high).any():
            raise ConfigurationError(f"{FAMILY_ARGS}low={self.low!r} is above high={self.high!r}: give low <= high")
        return None, low, high

    def _check_registered(self, gymnasium: Any) -> str:
        """The registered id of ``env`` (``"module:id"``: the module imported first, as ``gymnasium.make`` does)."""
        module, _, name = str(self.env).rpartition(":")
        if module:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ConfigurationError(f"{FAMILY_ARGS}env={self.env!r}: module {module!r}, which should register"
                                         f" {name!r}, cannot be imported ({error})") from error
        if not isinstance(self.env, str) or name not in gymnasium.registry:
            close = difflib.get_close_matches(name, list(gymnasium.registry), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigurationError(f"{FAMILY_ARGS}env={self.env!r} is not a registered gymnasium id: {hint}"
                                     "gymnasium.pprint_registry() lists them")
        return name

    def _probe(self, gymnasium: Any) -> Any:
        """One environment, to read the spaces and check the task attribute."""
        try:
            return make_env(self.env, self.make_kwargs)
        except gymnasium.error.DependencyNotInstalled as error:
            raise ConfigurationError(f"{FAMILY_ARGS}env={self.env!r} needs a package that is not installed"
                                     f" ({error}): {INSTALL}") from error
        except TypeError as error:
            raise ConfigurationError(f"{FAMILY_ARGS}make_kwargs={self.make_kwargs!r} is not accepted by"
                                     f" {self.env!r}: {error}") from error

    def _check_task_attribute(self, probe: Any) -> None:
        unwrapped = probe.unwrapped
        if self.task_attribute is not None and not hasattr(unwrapped, self.task_attribute):
            close = difflib.get_close_matches(self.task_attribute, list(vars(unwrapped)), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigurationError(
                f"{FAMILY_ARGS}task_attribute={self.task_attribute!r} is not an attribute of"
                f" {type(unwrapped).__name__}{hint}: name the attribute of env.unwrapped that holds the task")

    def sample_task(self, generator: torch.Generator) -> Task:
        """``{"task": value}``: uniform in ``[low, high]``, or one of ``values``."""
        if self._choices is not None:
            value = self._choices[int(torch.randint(len(self._choices), (), generator=generator))]
        else:
            value = self._low + (self._high - self._low) * torch.rand(self._low.shape, generator=generator,
                                                                        dtype=torch.float64)
        return {"task": value.to(torch.get_default_dtype())}

    def reset(self, task: Task, n: int, noise: Tensor) -> tuple[tuple[int, int], Tensor]:
        """Set each row's task on its ``n`` sub-environments and reset them, seeded from ``noise [B, n, 1]``.

        The state names the vector environment and this reset: stepping it after a later reset of the
        same ``B * n`` raises, since the environments have moved on.
        """
        value = task["task"]
        num_envs = value.shape[0] * n
        vector = self._vector(num_envs)
        if self.task_attribute is not None:
            per_env = value.detach().to("cpu", torch.float64).repeat_interleave(n, dim=0).numpy()
            vector.set_attr(self.task_attribute, [float(v) if v.ndim == 0 else v for v in per_env])
        seeds = (noise[..., 0].detach().to("cpu", torch.float64) * 2**32).long().flatten().tolist()
        observation, _ = vector.reset(seed=seeds)
        self._episodes[num_envs] = self._episodes.get(num_envs, 0) + 1
        return (num_envs, self._episodes[num_envs]), self._observations(observation, value)

    def step(self, task: Task, state: tuple[int, int], action: Tensor,
             noise: Tensor) -> tuple[tuple[int, int], Tensor, Tensor, Tensor]:
        """One step of every sub-environment (``noise`` is not used: the reset seeds drive the environments)."""
        num_envs, episode = state
        if self._episodes.get(num_envs) != episode:
            raise RuntimeError(f"{type(self).__name__}.step got the state of an earlier reset: its {num_envs}"
                               " environments were reset since; finish one batch of rollouts before the next")
        value = task["task"]
        shape = (num_envs,) if self.discrete else (num_envs, *self.action_space.shape)
        actions = action.detach().to("cpu").reshape(shape).numpy().astype(self.action_space.dtype)
        if self.discrete:
            actions = actions + self.action_space.start
        observation, reward, terminated, truncated, infos = self._vectors[num_envs].step(actions)
        done = terminated | truncated
        if done.any():  # the observation an episode ended on, not the one its autoreset began with
            observation = observation.copy()
            for i in np.flatnonzero(done):
                observation[i] = infos["final_obs"][i]
        batch = (value.shape[0], num_envs // value.shape[0])
        info = {name: torch.as_tensor(values).to(value.device, value.dtype).reshape(*batch, *values.shape[1:])
                for name, values in step_info(infos, num_envs).items()}
        reward = torch.as_tensor(reward).to(value.device, value.dtype).reshape(batch)
        reward = self.task_reward(task, action, reward, info)
        done = torch.as_tensor(done).to(value.device).reshape(batch)
        return state, self._observations(observation, value), reward, done

    def task_reward(self, task: Task, action: Tensor, reward: Tensor, info: dict[str, Tensor]) -> Tensor:
        """The reward ``[B, n]`` of the step: by default the environment's own ``reward``.

        Override it to compute a task's reward from the step's ``info`` (``{name: [B, n, ...]}``, the
        numeric entries of each environment's info) when the environment does not know the task.
        """
        return reward

    def _observations(self, observation: np.ndarray, value: Tensor) -> Tensor:
        """``[B, n, observation_size]`` on the task's device and dtype (``Discrete``: one-hot)."""
        observation = torch.as_tensor(observation)
        if self._one_hot:
            observation = torch.nn.functional.one_hot(observation.long() - int(self.observation_space.start),
                                                      self.observation_size)
        return observation.to(value.device, value.dtype).reshape(value.shape[0], -1, self.observation_size)

    def _vector(self, num_envs: int) -> Any:
        """The vector environment of ``num_envs`` sub-environments, built on first use."""
        if num_envs not in self._vectors:
            import gymnasium

            vector = gymnasium.vector
            kind = vector.SyncVectorEnv if self.vectorization == "sync" else vector.AsyncVectorEnv
            make = functools.partial(make_env, self.env, self.make_kwargs)
            self._vectors[num_envs] = kind([make] * num_envs, autoreset_mode=vector.AutoresetMode.SAME_STEP)
        return self._vectors[num_envs]

    def close(self) -> None:
        """Close the vector environments (and, for ``"async"``, end their worker processes)."""
        for vector in self._vectors.values():
            vector.close()
        self._vectors.clear()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its environments (data-loader workers only sample tasks); rebuilt on use."""
        state = self.__dict__.copy()
        state["_vectors"], state["_episodes"] = {}, {}
        return state
