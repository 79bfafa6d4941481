"""The meta-RL configs through ``python -m lightning_meta`` as typed: fit then test, a checkpoint tested again,
2 DDP processes and ``--ckpt_path last`` against one uninterrupted run, and the settings refused before
anything runs (one line, the field named)."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import CONFIGS, cli, last_line, ok, the_run, weights

from lightning_meta.cli import main

TINY = {
    "maml_rl_navigation2d": ["--data.init_args.family.init_args.horizon", "10", "--data.init_args.rollouts", "4",
                             "--model.init_args.policy.init_args.hidden_sizes", "[16, 16]"],
    "rl2_bandits_k5_n10": ["--data.init_args.rollouts", "4", "--model.init_args.policy.init_args.hidden_size", "8"],
}
COMMON = ["--trainer.max_epochs", "1", "--data.init_args.meta_batch_size", "4", "--data.init_args.episodes_per_epoch",
          "8", "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "6"]
PREFIX = "lightning-meta: configuration error: "


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_config_fits_tests_and_its_checkpoint_tests_again(tmp_path, name):
    args = ["--config", str(CONFIGS / f"{name}.yaml"), *COMMON, *TINY[name]]
    run = ok(cli("fit", *args, cwd=tmp_path))
    output = run.stdout + run.stderr
    assert "95% CI over 6 episodes" in output and "test/return = " in output
    if name.startswith("maml"):
        assert "test/return_before = " in output and "test/return_step2 = " in output
    else:
        assert "test/return_ep1 = " in output and "test/return_ep10 = " in output
    folder = the_run(tmp_path / "runs" / name)
    best = next(folder.rglob("best.ckpt"))
    again = ok(cli("test", "--config", str(folder / "config.yaml"), "--ckpt_path", str(best), cwd=tmp_path))
    assert "test/return = " in again.stdout + again.stderr


def refused(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    line = last_line(err)
    assert line.startswith(PREFIX) and "Traceback" not in err, err[-3000:]
    return line


@pytest.mark.parametrize("config,extra,named", [
    ("maml_rl_navigation2d", ["--model.init_args.policy.init_args.observation_size", "3"],
     "model.init_args.policy: GaussianMLPPolicy does not take Navigation2D's inputs"),
    ("maml_rl_navigation2d", ["--model.init_args.max_kl", "0"], "model.init_args.max_kl=0"),
    ("maml_rl_navigation2d", ["--trainer.precision", "bf16-mixed"], "trainer.precision='bf16-mixed'"),
    ("maml_rl_navigation2d", ["--data.init_args.family", "lightning_meta.envs.BernoulliBandits",
                              "--model.init_args.policy.init_args.observation_size", "1"],
     "takes 5 discrete actions: use a categorical policy"),
    ("rl2_bandits_k5_n10", ["--model.init_args.policy", "lightning_meta.models.CategoricalMLPPolicy",
                            "--model.init_args.policy.init_args.observation_size", "1",
                            "--model.init_args.policy.init_args.num_actions", "5"], "RL2 keeps a hidden state"),
    ("rl2_bandits_k5_n10", ["--model.init_args.ppo_minibatches", "3"], "model.init_args.ppo_minibatches=3"),
    ("rl2_bandits_k5_n10", ["--model.init_args.gamma", "0"], "model.init_args.gamma=0"),
])
def test_bad_settings_end_in_one_line_before_training(tmp_path, monkeypatch, capsys, config, extra, named):
    monkeypatch.chdir(tmp_path)
    line = refused(["fit", "--config", str(CONFIGS / f"{config}.yaml"), *COMMON, *extra], capsys)
    assert named in line, line
    assert not (tmp_path / "runs").exists()


def test_an_unregistered_gymnasium_id_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = refused(["fit", "--config", str(CONFIGS / "maml_rl_halfcheetah_vel.yaml"),
                    "--data.init_args.family", "lightning_meta.envs.GymnasiumTasks",
                    "--data.init_args.family.init_args.env", "HalfCheeta-v5",
                    "--data.init_args.family.init_args.task_attribute", "goal",
                    "--data.init_args.family.init_args.low", "0", "--data.init_args.family.init_args.high", "1",
                    *COMMON], capsys)
    assert "data.init_args.family.init_args.env" in line and "HalfCheetah-v5" in line, line


def test_predict_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = refused(["predict", "--config", str(CONFIGS / "rl2_bandits_k5_n10.yaml"), *COMMON], capsys)
    assert "RL2 does not predict" in line, line


#: per config: optimizer steps of the first batch, extra settings, tolerance of the final weights
SPLIT_RUNS = {
    # 8 optimizer steps per batch: 4 PPO epochs x 2 minibatches
    "rl2_bandits_k5_n10": (8, [], 1e-6),
    # one TRPO step per batch; damping keeps CG's direction well conditioned, so that float32 sums added in
    # another order (the all-reduced curvature products) move it by little (tests/test_ddp.py)
    "maml_rl_navigation2d": (1, ["--model.init_args.cg_damping", "0.1"], 1e-4),
}


@pytest.mark.parametrize("name", sorted(SPLIT_RUNS))
def test_two_processes_and_a_resumed_run_equal_one_uninterrupted_run(tmp_path, name):
    """RL² and MAML-TRPO as a user runs them: ``--trainer.devices 2 --trainer.strategy ddp`` ends with its
    test and the weights of one process; a run stopped after its first batch and resumed with
    ``--ckpt_path last`` ends with them too."""
    first_batch_steps, extra, atol = SPLIT_RUNS[name]
    args = ["--config", str(CONFIGS / f"{name}.yaml"), *COMMON, *TINY[name], *extra]
    ok(cli("fit", *args, "--trainer.logger.init_args.save_dir", "one", cwd=tmp_path))
    ok(cli("fit", *args, "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.logger.init_args.save_dir", "two", cwd=tmp_path, timeout=600))
    ok(cli("fit", *args, "--trainer.max_steps", str(first_batch_steps), "--trainer.logger.init_args.save_dir",
           "three", cwd=tmp_path))
    ok(cli("fit", *args, "--ckpt_path", "last", "--trainer.logger.init_args.save_dir", "three", cwd=tmp_path))
    one = the_run(tmp_path / "one")
    expected = weights(one / "checkpoints" / "last.ckpt")
    for other in (the_run(tmp_path / "two"), the_run(tmp_path / "three")):
        assert (other / "test_episodes.csv").exists(), sorted(p.name for p in other.iterdir())
        got = weights(other / "checkpoints" / "last.ckpt")
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=atol, msg=f"{other}: {key}")
