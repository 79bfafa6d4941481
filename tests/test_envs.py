"""The batched task families against their one-environment numpy references, and the bandit baselines.

The references (:mod:`lightning_meta.envs.reference`) are written from the definitions, not from the
torch code, and replay the same uniforms, so every observation, reward and termination must agree
step for step in float64.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from lightning_meta import envs
from lightning_meta.envs import BernoulliBandits, Navigation2D, TabularMDPs, TaskFamily
from lightning_meta.envs import bandit_baselines as baselines
from lightning_meta.envs.reference import BanditEnv, NavigationEnv, ReferenceEnv, TabularMDPEnv
from lightning_meta.errors import ConfigurationError

TASKS, ENVS = 3, 4


def float64_tasks(family: TaskFamily, count: int = TASKS, first: int = 0) -> dict[str, torch.Tensor]:
    tasks = [family.sample_task(torch.Generator().manual_seed(first + i)) for i in range(count)]
    return {name: value.double() for name, value in family.stack(tasks).items()}


def navigation_reference(family: Navigation2D, task: dict[str, np.ndarray], noise: Iterator) -> ReferenceEnv:
    return NavigationEnv(task["goal"], family.horizon, noise=noise)


def bandit_reference(family: BernoulliBandits, task: dict[str, np.ndarray], noise: Iterator) -> ReferenceEnv:
    return BanditEnv(task["p"], noise=noise)


def mdp_reference(family: TabularMDPs, task: dict[str, np.ndarray], noise: Iterator) -> ReferenceEnv:
    return TabularMDPEnv(task["transitions"], task["reward_mean"], family.horizon, noise=noise)


def navigation_actions(task, observation, generator):
    """Envs 0 and 1 walk straight to the goal (clipped steps, so they arrive and terminate after a few
    steps), the others take Gaussian steps of scale 0.2 (half of which get clipped)."""
    towards = task["goal"].unsqueeze(-2) - observation
    wander = 0.2 * torch.randn(observation.shape, generator=generator, dtype=torch.float64)
    return torch.where(torch.arange(ENVS).view(-1, 1) < 2, towards, wander)


def uniform_arms(arms: int) -> Callable:
    return lambda task, observation, generator: torch.randint(arms, (TASKS, ENVS), generator=generator)


CASES = {
    "navigation": (lambda: Navigation2D(horizon=12), navigation_reference, navigation_actions, 2),
    "bandits": (lambda: BernoulliBandits(arms=4), bandit_reference, uniform_arms(4), 6),
    "mdp": (lambda: TabularMDPs(states=6, actions=3, horizon=8), mdp_reference, uniform_arms(3), 3),
}


@pytest.mark.parametrize("case", CASES)
def test_batched_family_equals_numpy_reference_step_for_step(case):
    make_family, make_reference, policy, episodes = CASES[case]
    family = make_family()
    task = float64_tasks(family)
    calls = episodes * (family.horizon + 1)  # one row of uniforms per reset and per step
    generator = torch.Generator().manual_seed(7)
    noise = torch.rand(TASKS, ENVS, calls, family.noise_size, generator=generator, dtype=torch.float64)
    references = [[make_reference(family, {k: v[b].numpy() for k, v in task.items()}, iter(noise[b, i].numpy()))
                   for i in range(ENVS)] for b in range(TASKS)]
    dones = []
    call = 0
    for _ in range(episodes):
        state, observation = family.reset(task, ENVS, noise[:, :, call])
        call += 1
        for b in range(TASKS):
            for i in range(ENVS):
                expected, _ = references[b][i].reset()
                np.testing.assert_array_equal(observation[b, i].numpy(), expected)
        for t in range(family.horizon):
            action = policy(task, observation, generator)
            state, observation, reward, done = family.step(task, state, action, noise[:, :, call])
            call += 1
            assert observation.dtype == reward.dtype == torch.float64 and done.dtype == torch.bool
            assert reward.shape == done.shape == (TASKS, ENVS)
            for b in range(TASKS):
                for i in range(ENVS):
                    expected, expected_reward, terminated, truncated, _ = references[b][i].step(action[b, i].numpy())
                    np.testing.assert_allclose(observation[b, i].numpy(), expected, rtol=0, atol=1e-12)
                    assert abs(float(reward[b, i]) - expected_reward) <= 1e-12
                    assert bool(done[b, i]) == terminated
                    assert truncated == (t + 1 == family.horizon)
            dones.append(done)
    dones = torch.stack(dones)
    if case == "navigation":  # both outcomes happen: the walkers terminate, the wanderers do not
        assert dones[:, :, :2].any() and not dones[:, :, 2:].all()
    if case == "bandits":
        assert dones.all()
    if case == "mdp":
        assert not dones.any()


@pytest.mark.parametrize("case", CASES)
def test_a_vmapped_step_equals_the_batched_step(case):
    make_family, _, policy, _ = CASES[case]
    family = make_family()
    task = float64_tasks(family)
    generator = torch.Generator().manual_seed(3)
    noise = torch.rand(2, TASKS, ENVS, family.noise_size, generator=generator, dtype=torch.float64)
    state, observation = family.reset(task, ENVS, noise[0])
    mapped_state, mapped_observation = torch.func.vmap(lambda t, u: family.reset(t, ENVS, u))(task, noise[0])
    torch.testing.assert_close(mapped_observation, observation, rtol=0, atol=0)
    action = policy(task, observation, generator)
    batched = family.step(task, state, action, noise[1])
    mapped = torch.func.vmap(family.step)(task, mapped_state, action, noise[1])
    for ours, theirs in zip(mapped, batched):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("case", CASES)
def test_sample_task_is_a_function_of_the_generator_alone(case):
    family = CASES[case][0]()
    torch.manual_seed(0)
    first = family.sample_task(torch.Generator().manual_seed(11))
    torch.manual_seed(1)
    again = family.sample_task(torch.Generator().manual_seed(11))
    other = family.sample_task(torch.Generator().manual_seed(12))
    with default_dtype(torch.float64):
        wide = family.sample_task(torch.Generator().manual_seed(11))
    for name in first:
        assert first[name].dtype == torch.float32 and wide[name].dtype == torch.float64
        torch.testing.assert_close(again[name], first[name], rtol=0, atol=0)
        assert not torch.equal(other[name], first[name])
        torch.testing.assert_close(wide[name].float(), first[name], rtol=0, atol=0)  # the same draw, rounded


def test_task_distributions_have_the_papers_support():
    goals = float64_tasks(Navigation2D(), 200)["goal"]
    assert goals.min() >= -0.5 and goals.max() < 0.5 and goals.std() > 0.25
    p = float64_tasks(BernoulliBandits(arms=5), 200)["p"]
    assert p.shape == (200, 5) and p.min() >= 0 and p.max() < 1
    mdp = float64_tasks(TabularMDPs(), 200)
    torch.testing.assert_close(mdp["transitions"].sum(-1), torch.ones(200, 10, 5, dtype=torch.float64))
    assert mdp["transitions"].min() >= 0
    mean = mdp["reward_mean"]
    assert abs(float(mean.mean()) - 1.0) < 0.05 and abs(float(mean.std()) - 1.0) < 0.05  # N(1, 1), 10,000 draws


def test_families_run_in_float32_and_extreme_uniforms_give_finite_rewards():
    family = TabularMDPs(states=4, actions=2)
    task = family.stack([family.sample_task(torch.Generator().manual_seed(i)) for i in range(2)])
    noise = torch.tensor([0.0, 1.0 - 2.0**-30]).repeat(2, 3, 1)  # rounds to 1.0 in float32
    state, observation = family.reset(task, 3, noise)
    state, observation, reward, done = family.step(task, state, torch.ones(2, 3, dtype=torch.long), noise)
    assert observation.dtype == reward.dtype == torch.float32
    assert torch.isfinite(reward).all() and (state == 3).all()  # u ~ 1 picks the last state
    nav = Navigation2D()
    goal = nav.stack([nav.sample_task(torch.Generator().manual_seed(0))])
    state, _ = nav.reset(goal, 5, torch.empty(1, 5, 0))
    state, _, reward, _ = nav.step(goal, state, torch.ones(1, 5, 2), torch.empty(1, 5, 0))
    assert state.dtype == reward.dtype == torch.float32 and torch.allclose(state, torch.full((1, 5, 2), 0.1))


@pytest.mark.parametrize("build, argument", [
    (lambda: Navigation2D(horizon=0), "horizon"),
    (lambda: BernoulliBandits(arms=0), "arms"),
    (lambda: BernoulliBandits(arms=2.5), "arms"),
    (lambda: TabularMDPs(states=-1), "states"),
    (lambda: TabularMDPs(actions=True), "actions"),
    (lambda: TabularMDPs(horizon="10"), "horizon"),
])
def test_bad_constructor_arguments_name_the_argument(build, argument):
    with pytest.raises(ConfigurationError, match=f"family.init_args.{argument}="):
        build()


def test_families_are_exported():
    assert {"BernoulliBandits", "Navigation2D", "TabularMDPs"} <= set(envs.__all__)


def test_bandit_baselines_random_is_half_the_pulls_and_thompson_and_ucb1_beat_it():
    """5 arms, 10 pulls (RL² Table 1: random 5.0, Thompson 5.7, UCB1 6.7), with bounds of 4 standard errors."""
    rng = np.random.default_rng(0)
    p = baselines.sample_bandits(4000, arms=5, rng=rng)
    random = baselines.random_policy(p, 10)
    assert abs(random.mean() - 5.0) < 4 * random.std() / np.sqrt(len(p))
    thompson = baselines.thompson_sampling(p, 10, rng)
    gain = thompson - random
    assert gain.mean() > 4 * gain.std() / np.sqrt(len(p))
    ucb1 = baselines.ucb1(p, 10, 0.1, rng)
    gain = ucb1 - thompson
    assert gain.mean() > 4 * gain.std() / np.sqrt(len(p))
    assert baselines.tune_ucb1(p[:1000], 10, [0.1, 1.0], seed=0) == 0.1  # c = 1 explores every arm twice: 5.0
