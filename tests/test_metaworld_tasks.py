"""MetaWorldML1 against Meta-World's classic API stepped by hand, and its config end to end.

metaworld pins mujoco 3.3.0, so it is not in ``make install``'s environment (MuJoCo 4): the tests that
step it skip there, saying so, and run in an environment with the extra (``pip install -e '.[metaworld]'``).
The error a user without the extra gets is tested everywhere.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from cli_helpers import CONFIGS, cli, ok

from lightning_meta.envs import MetaWorldML1, rollout_uniforms
from lightning_meta.errors import ConfigurationError

needs_metaworld = pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is None,
    reason="metaworld is not installed: it pins mujoco 3.3.0, so it lives in its own environment"
           " (pip install -e '.[metaworld]')")


def test_without_metaworld_the_error_names_the_extra_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld raises ImportError
    monkeypatch.delitem(sys.modules, "lightning_meta.envs.metaworld_env", raising=False)
    with pytest.raises(ConfigurationError, match=r"^MetaWorldML1 needs metaworld, .*: pip install "
                                                 r"'lightning-meta\[metaworld\]'$") as error:
        MetaWorldML1()
    assert "\n" not in str(error.value)


def test_an_unknown_split_is_refused_naming_the_field():
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.family\.init_args\.split='val'"):
        MetaWorldML1(split="val")


@needs_metaworld
def test_rollouts_equal_ml1_set_task_and_seed_stepped_by_hand():
    import metaworld

    family = MetaWorldML1("reach-v3")
    assert (family.observation_size, family.action_size, family.horizon) == (39, 4, 500)
    keys = torch.tensor([3, 11])
    task = family.stack([family.sample_task(torch.Generator().manual_seed(int(k))) for k in keys])
    noise = rollout_uniforms(keys, 0, (2, family.noise_size))
    actions = torch.rand(6, 2, 2, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    state, obs = family.reset(task, 2, noise)
    trace = [family.step(task, state, action, noise)[1:] for action in actions]
    ml1 = metaworld.ML1("reach-v3", seed=0)
    for b in range(2):
        for i in range(2):
            env = ml1.train_classes["reach-v3"]()
            env.set_task(ml1.train_tasks[int(task["task"][b])])
            env.seed(int(noise[b, i, 0].double() * 2**32))
            reference, _ = env.reset()
            assert torch.equal(obs[b, i], torch.tensor(reference, dtype=torch.float32))
            for (got_obs, got_reward, got_done), action in zip(trace, actions):
                reference, reward, terminated, truncated, _ = env.step(action[b, i].numpy())
                assert torch.equal(got_obs[b, i], torch.tensor(reference, dtype=torch.float32))
                assert got_reward[b, i] == torch.tensor(reward, dtype=torch.float32)
                assert not (got_done[b, i] or terminated or truncated)
    assert not torch.equal(obs[0, 0], obs[1, 0]), "two tasks, two goals: the object starts elsewhere"
    held_out = MetaWorldML1("reach-v3", split="test")
    assert not torch.equal(held_out.reset(task, 1, noise[:, :1])[1], obs[:, :1]), "the test split's goals differ"


@needs_metaworld
def test_the_config_trains_and_tests_maml_trpo_on_ml1_reach(tmp_path):
    run = ok(cli("fit", "--config", CONFIGS / "maml_rl_metaworld_reach.yaml", "--trainer.max_epochs", "1",
                 "--data.init_args.family.init_args.horizon", "10", "--data.init_args.rollouts", "2",
                 "--data.init_args.meta_batch_size", "2", "--data.init_args.episodes_per_epoch", "4",
                 "--data.init_args.val_episodes", "2", "--data.init_args.test_episodes", "2",
                 "--model.init_args.policy.init_args.hidden_sizes", "[16]", cwd=tmp_path))
    output = run.stdout + run.stderr
    assert "test/return_before = " in output and "test/return_step1 = " in output, output[-3000:]


@needs_metaworld
def test_an_unknown_skill_is_refused_naming_the_field_and_the_close_names():
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.family\.init_args\.env_name='reach-v2' is not"
                                                 r" a Meta-World v3 skill: did you mean reach-v3"):
        MetaWorldML1("reach-v2")
