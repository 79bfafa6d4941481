"""One-task, one-environment numpy versions of the batched families: the independent references.

Each is written from the family's definition, not from the torch code, in plain Python and float64,
with gymnasium's API (``reset(seed=, options=) -> (observation, info)``, ``step(action) ->
(observation, reward, terminated, truncated, info)``), so the tests compare the batched families to
them step for step and the benchmarks run them in a gymnasium ``SyncVectorEnv``.

Randomness comes as rows of ``noise_size`` uniforms in [0, 1), one row per ``reset`` and one per
``step``, as the batched families take theirs: from ``noise`` (an iterator of rows, to replay the
batched family's noise exactly) or, without it, from ``np_random``, seeded by ``reset(seed=...)``.
Stepping on after ``terminated`` goes on with the same dynamics (the batched families do too).
"""

from __future__ import annotations

import math
import statistics
import sys
from typing import Any, Iterator, Optional

import numpy as np


class ReferenceEnv:
    """The shared plumbing: the uniforms of each call, the step count, the seeding of ``reset``.

    Subclasses set ``noise_size`` and ``horizon`` and define :meth:`start` and :meth:`transition`.
    """

    noise_size: int
    horizon: int

    def __init__(self, noise: Optional[Iterator[np.ndarray]] = None):
        self.noise = noise
        self.np_random = np.random.default_rng()
        self.steps = 0

    def uniforms(self) -> np.ndarray:
        """The next row of ``noise_size`` uniforms."""
        if self.noise is not None:
            return np.asarray(next(self.noise), dtype=np.float64)
        return self.np_random.random(self.noise_size)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        self.steps = 0
        return self.start(self.uniforms()), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        observation, reward, terminated = self.transition(action, self.uniforms())
        self.steps += 1
        return observation, reward, terminated, self.steps >= self.horizon, {}

    def start(self, uniforms: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def transition(self, action: Any, uniforms: np.ndarray) -> tuple[np.ndarray, float, bool]:
        raise NotImplementedError


class NavigationEnv(ReferenceEnv):
    """:class:`~lightning_meta.envs.Navigation2D` for one goal.

    Example::

        env = NavigationEnv(goal=np.array([0.3, -0.2]))
        observation, info = env.reset()
        observation, reward, terminated, truncated, info = env.step(np.array([0.1, -0.1]))
    """

    noise_size = 0

    def __init__(self, goal: np.ndarray, horizon: int = 100, noise: Optional[Iterator[np.ndarray]] = None):
        super().__init__(noise)
        self.goal = np.asarray(goal, dtype=np.float64)
        self.horizon = horizon
        self.position = np.zeros(2)

    def start(self, uniforms: np.ndarray) -> np.ndarray:
        self.position = np.zeros(2)
        return self.position.copy()

    def transition(self, action: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, float, bool]:
        self.position = self.position + np.clip(np.asarray(action, dtype=np.float64), -0.1, 0.1)
        dx, dy = self.position - self.goal
        return self.position.copy(), -math.sqrt(dx * dx + dy * dy), bool(abs(dx) < 0.01 and abs(dy) < 0.01)


class BanditEnv(ReferenceEnv):
    """:class:`~lightning_meta.envs.BernoulliBandits` for one vector of success probabilities.

    Example::

        env = BanditEnv(p=np.array([0.2, 0.9, 0.5]))
        env.reset(seed=0)
        observation, reward, terminated, truncated, info = env.step(1)
    """

    noise_size = 1
    horizon = 1

    def __init__(self, p: np.ndarray, noise: Optional[Iterator[np.ndarray]] = None):
        super().__init__(noise)
        self.p = np.asarray(p, dtype=np.float64)

    def start(self, uniforms: np.ndarray) -> np.ndarray:
        return np.zeros(1)

    def transition(self, action: int, uniforms: np.ndarray) -> tuple[np.ndarray, float, bool]:
        return np.zeros(1), 1.0 if uniforms[0] < self.p[int(action)] else 0.0, True


class TabularMDPEnv(ReferenceEnv):
    """:class:`~lightning_meta.envs.TabularMDPs` for one transition table and table of mean rewards.

    Starts in state 0; a step's reward is ``N(reward_mean[s, a], 1)`` at the first uniform, its next
    state the first whose cumulative transition probability exceeds the second (both uniforms first
    put inside (0, 1)); never terminates, truncated at ``horizon``.

    Example::

        env = TabularMDPEnv(transitions=np.full((3, 2, 3), 1 / 3), reward_mean=np.ones((3, 2)), horizon=10)
        env.reset(seed=0)
        observation, reward, terminated, truncated, info = env.step(1)
    """

    noise_size = 2

    def __init__(self, transitions: np.ndarray, reward_mean: np.ndarray, horizon: int = 10,
                 noise: Optional[Iterator[np.ndarray]] = None):
        super().__init__(noise)
        self.transitions = np.asarray(transitions, dtype=np.float64)
        self.reward_mean = np.asarray(reward_mean, dtype=np.float64)
        self.horizon = horizon
        self.state = 0

    def observation(self) -> np.ndarray:
        one_hot = np.zeros(len(self.transitions))
        one_hot[self.state] = 1.0
        return one_hot

    def start(self, uniforms: np.ndarray) -> np.ndarray:
        self.state = 0
        return self.observation()

    def transition(self, action: int, uniforms: np.ndarray) -> tuple[np.ndarray, float, bool]:
        u_reward, u_next = (min(max(float(u), sys.float_info.min), 1.0 - sys.float_info.epsilon / 2) for u in uniforms)
        reward = float(self.reward_mean[self.state, action]) + statistics.NormalDist().inv_cdf(u_reward)
        row = self.transitions[self.state, int(action)]
        next_state, total = len(row) - 1, 0.0
        for candidate, probability in enumerate(row):
            total += float(probability)
            if u_next < total:
                next_state = candidate
                break
        self.state = next_state
        return self.observation(), reward, False
