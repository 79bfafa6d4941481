"""Classic policies on Bernoulli bandits, run on many bandits at once: the baselines of RL² (Duan et al. 2016).

A bandit is a row of success probabilities ``p`` (``[count, arms]``, as
:class:`~lightning_meta.envs.BernoulliBandits` draws them); a policy pulls ``pulls`` times, learning from
the 0/1 rewards it draws. Each function returns, per bandit, the expected total reward of the run:
the sum of ``p`` of the arms pulled (the rewards' expectations given the choices, which has less
variance than the sum of the 0/1 rewards and the same mean). Average over bandits and compare with
the paper's Table 1, e.g. for 5 arms and 10 pulls::

    rng = np.random.default_rng(0)
    p = sample_bandits(20_000, arms=5, rng=rng)
    random_policy(p, 10).mean(), thompson_sampling(p, 10, rng).mean(), ucb1(p, 10, 0.2, rng).mean()

Ties between arms are broken uniformly at random.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def sample_bandits(count: int, arms: int, rng: np.random.Generator) -> np.ndarray:
    """``[count, arms]`` success probabilities, uniform in [0, 1]."""
    return rng.random((count, arms))


def random_policy(p: np.ndarray, pulls: int) -> np.ndarray:
    """A uniformly random arm at every pull: exactly ``pulls * mean(p)`` in expectation, no simulation needed."""
    return pulls * p.mean(-1)


def thompson_sampling(p: np.ndarray, pulls: int, rng: np.random.Generator) -> np.ndarray:
    """Thompson sampling with a Beta(1, 1) prior per arm: pull the arm whose posterior draw is highest."""
    return _run(p, pulls, rng, lambda successes, failures, t: rng.beta(1 + successes, 1 + failures))


def ucb1(p: np.ndarray, pulls: int, c: float, rng: np.random.Generator) -> np.ndarray:
    """UCB1 as RL² runs it: pull the arm maximising ``(1 + s) / (2 + n) + c * sqrt(2 ln t / (2 + n))``.

    ``s`` and ``n`` are the arm's successes and pulls so far, ``t`` the number of the current pull
    (from 1). Every arm's statistics start at one success and one failure (a Beta(1, 1) prior), so
    the mean is the posterior mean and an arm never pulled is not forced first; ``c`` is tuned
    (:func:`tune_ucb1`); ``c = 0`` is the greedy policy on the posterior mean.
    """

    def score(successes: np.ndarray, failures: np.ndarray, t: int) -> np.ndarray:
        tries = 2 + successes + failures
        return (1 + successes) / tries + c * np.sqrt(2.0 * np.log(t) / tries)

    return _run(p, pulls, rng, score)


def tune_ucb1(p: np.ndarray, pulls: int, cs: Sequence[float], seed: int) -> float:
    """The ``c`` among ``cs`` with the highest mean reward of :func:`ucb1` on ``p``, each ``c`` run with the
    same random numbers (from ``seed``). Evaluate the chosen ``c`` on other bandits: on ``p`` it is biased up."""
    means = [ucb1(p, pulls, c, np.random.default_rng(seed)).mean() for c in cs]
    return float(cs[int(np.argmax(means))])


def _run(p: np.ndarray, pulls: int, rng: np.random.Generator,
         score: Callable[[np.ndarray, np.ndarray, int], np.ndarray]) -> np.ndarray:
    """``pulls`` pulls of the arm with the highest ``score(successes, failures, t)``, on every bandit at once."""
    rows = np.arange(len(p))
    successes, failures = np.zeros(p.shape), np.zeros(p.shape)
    expected = np.zeros(len(p))
    for t in range(1, pulls + 1):
        values = score(successes, failures, t)
        best = values == values.max(-1, keepdims=True)
        arm = np.argmax(best * rng.random(p.shape), -1)
        chance = p[rows, arm]
        expected += chance
        success = rng.random(len(p)) < chance
        successes[rows, arm] += success
        failures[rows, arm] += ~success
    return expected
