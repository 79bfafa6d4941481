"""GymnasiumTasks against single gymnasium environments stepped by hand, and the MuJoCo presets' rewards."""

from __future__ import annotations

import importlib
import pickle
import sys

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from lightning_meta.envs.family import rollout_uniforms
from lightning_meta.envs.gymnasium_tasks import GymnasiumTasks, make_env
from lightning_meta.envs.mujoco_presets import AntDir, AntVel, HalfCheetahDir, HalfCheetahVel
from lightning_meta.errors import ConfigurationError


class PointGoal(gymnasium.Env):
    """A point on a line that moves by ``0.2 * clip(a)`` plus seeded noise; reward ``-|x - goal|``, done near it."""

    def __init__(self):
        self.goal = 0.0
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.0, 1.0)
        return self.observation(), {}

    def step(self, action):
        self.x += 0.2 * float(np.clip(action[0], -1.0, 1.0)) + 0.02 * self.np_random.normal()
        distance = abs(self.x - self.goal)
        return self.observation(), -distance, distance < 0.1, False, {"distance": distance}

    def observation(self):
        return np.array([self.x, self.np_random.uniform()])


class DictPoint(PointGoal):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Dict({"x": spaces.Box(-np.inf, np.inf, (1,))})


gymnasium.register("PointGoal-v0", entry_point=PointGoal, max_episode_steps=50)
gymnasium.register("DictPoint-v0", entry_point=DictPoint, max_episode_steps=50)


class PointDistance(GymnasiumTasks):
    """PointGoal's reward from its info: a sub-environment that ended a step has the reset's info, so the
    step's comes from ``final_info``."""

    def task_reward(self, task, action, reward, info):
        return -info["distance"]


def point_family(**kwargs) -> GymnasiumTasks:
    return PointDistance("PointGoal-v0", task_attribute="goal", **{"low": -0.5, "high": 0.5, **kwargs})


def rollout(family, keys, n, steps, phase=0):
    """Observations, rewards, dones of ``steps`` steps toward each goal, and the actions and noise used."""
    task = family.stack([family.sample_task(torch.Generator().manual_seed(int(k))) for k in keys])
    noise = rollout_uniforms(keys, phase, (n, steps + 1, family.noise_size))
    action = torch.rand(len(keys), n, steps, family.action_size, generator=torch.Generator().manual_seed(phase))
    state, obs = family.reset(task, n, noise[:, :, 0])
    trace = [(obs, None, None)]
    for t in range(steps):
        toward = torch.sign(task["task"][:, None, None] - obs[..., :1])  # PointGoal: reach the goal now and then
        state, obs, reward, done = family.step(task, state, toward * action[:, :, t], noise[:, :, t + 1])
        trace.append((obs, reward, done))
    return task, noise, action, trace


def test_matches_single_environments_step_for_step():
    family = point_family()
    task, noise, action, trace = rollout(family, torch.tensor([3, 8]), n=3, steps=25)
    ended = 0
    for b in range(2):
        for i in range(3):
            env = gymnasium.make("PointGoal-v0", max_episode_steps=-1)
            env.unwrapped.goal = float(task["task"][b])
            obs, _ = env.reset(seed=int(noise[b, i, 0, 0].double() * 2**32))
            assert torch.equal(trace[0][0][b, i], torch.tensor(obs, dtype=torch.float32))
            for t in range(25):
                toward = np.sign(float(task["task"][b]) - obs[0])
                obs, reward, terminated, _, _ = env.step((toward * action[b, i, t]).numpy())
                got_obs, got_reward, got_done = trace[t + 1]
                assert torch.equal(got_obs[b, i], torch.tensor(obs, dtype=torch.float32)), (b, i, t)
                assert got_reward[b, i] == torch.tensor(reward, dtype=torch.float32)
                assert bool(got_done[b, i]) == terminated
                if terminated:  # the caller masks the steps after done
                    ended += 1
                    break
    assert ended >= 2, "the rollout should end some episodes, to check the observation they end on"


def test_rollouts_are_reproducible_from_the_noise_and_async_matches_sync():
    keys = torch.tensor([5])
    first = rollout(point_family(), keys, n=2, steps=10)[3]
    again = rollout(point_family(), keys, n=2, steps=10)[3]
    other = rollout(point_family(), keys, n=2, steps=10, phase=1)[3]
    parallel = point_family(vectorization="async")
    try:
        in_workers = rollout(parallel, keys, n=2, steps=10)[3]
    finally:
        parallel.close()
    for got in (again, in_workers):
        assert all(torch.equal(a, b) for x, y in zip(first[1:], got[1:]) for a, b in zip(x, y))
    assert not torch.equal(first[0][0], other[0][0])


def test_a_state_from_an_earlier_reset_is_refused_and_the_family_pickles_and_rebuilds_from_its_spec():
    family = point_family(horizon=30)
    task = family.stack([family.sample_task(torch.Generator().manual_seed(0))])
    noise = torch.rand(1, 2, 1)
    old, _ = family.reset(task, 2, noise)
    family.reset(task, 2, noise)
    with pytest.raises(RuntimeError, match="earlier reset"):
        family.step(task, old, torch.zeros(1, 2, 1), noise)
    spec = family.spec()
    module, _, name = spec["class_path"].rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**spec["init_args"])
    assert (rebuilt.horizon, rebuilt.low, rebuilt.task_attribute) == (30, -0.5, "goal")
    assert pickle.loads(pickle.dumps(family)).observation_size == 2


def test_discrete_spaces_give_one_hot_observations_and_take_long_actions_and_module_ids_are_imported():
    family = GymnasiumTasks("gymnasium.envs.toy_text:FrozenLake-v1", values=[0.0], make_kwargs={"is_slippery": False})
    assert (family.observation_size, family.num_actions, family.horizon) == (16, 4, 100)
    task = family.stack([family.sample_task(torch.Generator())] * 2)
    state, obs = family.reset(task, 3, torch.rand(2, 3, 1))
    assert torch.equal(obs[..., 0], torch.ones(2, 3))  # the start cell
    state, obs, reward, done = family.step(task, state, torch.full((2, 3), 2), torch.rand(2, 3, 1))  # right
    assert torch.equal(obs[..., 1], torch.ones(2, 3)) and obs.sum() == 6 and not done.any()


def mujoco_reference(family, env, task, noise, actions):
    """The family's rewards and dones, and each single environment's info, stepped by hand (built by
    ``make_env``: ``gymnasium.make`` with MuJoCo's compiler warnings kept out of ``MUJOCO_LOG.TXT``)."""
    batch, n = noise.shape[:2]
    state, obs = family.reset(task, n, noise)
    singles = [[make_env(env, {}) for _ in range(n)] for _ in range(batch)]
    for b in range(batch):
        for i in range(n):
            reference, _ = singles[b][i].reset(seed=int(noise[b, i, 0].double() * 2**32))
            assert torch.equal(obs[b, i], torch.tensor(reference, dtype=torch.float32))
    results = []
    for action in actions:
        state, obs, reward, done = family.step(task, state, action, noise)
        infos = [[singles[b][i].step(action[b, i].numpy())[4] for i in range(n)] for b in range(batch)]
        results.append((reward, done, infos))
    return results


def test_half_cheetah_vel_pays_the_distance_to_the_goal_velocity_and_the_control_cost():
    family = HalfCheetahVel()
    assert (family.observation_size, family.action_size, family.horizon) == (17, 6, 200)
    task = family.stack([family.sample_task(torch.Generator().manual_seed(k)) for k in (1, 2)])
    assert ((task["task"] >= 0) & (task["task"] <= 2)).all()
    actions = torch.rand(8, 2, 2, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for (reward, done, infos), action in zip(mujoco_reference(family, "HalfCheetah-v5", task, torch.rand(2, 2, 1),
                                                              actions), actions):
        velocity = torch.tensor([[info["x_velocity"] for info in row] for row in infos], dtype=torch.float64)
        expected = -(velocity - task["task"][:, None].double()).abs() - 0.05 * action.double().square().sum(-1)
        assert torch.allclose(reward.double(), expected, atol=1e-5) and not done.any()
    directions = {float(HalfCheetahDir().sample_task(torch.Generator().manual_seed(k))["task"]) for k in range(20)}
    assert directions == {-1.0, 1.0}


def test_ant_builds_steps_and_pays_maml_s_ant_reward():
    family = AntVel()
    assert (family.observation_size, family.action_size) == (105, 8)
    task = family.stack([family.sample_task(torch.Generator().manual_seed(3))])
    actions = torch.rand(5, 1, 2, 8, generator=torch.Generator().manual_seed(1)) * 0.6 - 0.3
    for (reward, done, infos), action in zip(mujoco_reference(family, "Ant-v5", task, torch.rand(1, 2, 1), actions),
                                             actions):
        info = {name: torch.tensor([[row_info[name] for row_info in row] for row in infos], dtype=torch.float64)
                for name in ("x_velocity", "reward_contact")}
        expected = (-(info["x_velocity"] - task["task"].double()).abs() + 1.0 + 0.05
                    - 0.005 * action.double().square().sum(-1) + info["reward_contact"])
        assert torch.allclose(reward.double(), expected, atol=1e-5) and not done.any()
    backward = AntDir()
    state, obs = backward.reset({"task": torch.tensor([-1.0])}, 1, torch.rand(1, 1, 1))
    state, obs, reward, done = backward.step({"task": torch.tensor([-1.0])}, state, torch.zeros(1, 1, 8),
                                             torch.rand(1, 1, 1))
    assert obs.shape == (1, 1, 105) and torch.isfinite(reward).all()


POINT = {"env": "PointGoal-v0", "task_attribute": "goal"}


@pytest.mark.parametrize("kwargs, message", [
    ({**POINT, "env": "PointGol-v0", "values": [0.0]}, "env='PointGol-v0' is not a registered .* PointGoal-v0"),
    ({**POINT, "env": "no_such_module:PointGoal-v0", "values": [0.0]}, "env='no_such_module:PointGoal-v0': module"),
    ({**POINT, "task_attribute": "gaol", "values": [0.0]}, "task_attribute='gaol' is not an .* goal"),
    ({"env": "DictPoint-v0", "values": [0.0]}, "env='DictPoint-v0' has a Dict observation space"),
    ({**POINT, "values": [0.0], "make_kwargs": {"speed": 2}}, "make_kwargs={'speed': 2} is not accepted"),
    ({**POINT, "low": 1.0, "high": 0.0}, "low=1.0 is above high=0.0"),
    ({**POINT, "low": 0.0}, "low/high/values: give either low and high"),
    ({**POINT, "low": 0.0, "high": 1.0, "values": [0.0]}, "low/high/values: give either"),
    ({**POINT, "values": [0.0], "vectorization": "threads"}, "vectorization='threads' is unknown"),
    ({**POINT, "values": [0.0], "horizon": 0}, "horizon=0 is invalid"),
])
def test_bad_settings_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.family\.init_args\." + message):
        GymnasiumTasks(**kwargs)


def test_without_gymnasium_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'lightning-meta\[rl\]'"):
        HalfCheetahVel()
