"""``python -m lightning_meta`` end to end on a tiny Omniglot copy made of extracted folders only."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_images import make_omniglot

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs" / "maml_omniglot_5w1s.yaml")
SMALL = [
    "--data.init_args.download", "false",
    "--data.init_args.meta_batch_size", "4", "--data.init_args.episodes_per_epoch", "8",
    "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "8",
    "--data.init_args.test_queries", "2",
    "--model.init_args.backbone.init_args.hidden_channels", "8",
]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "lightning_meta", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    root = make_omniglot(work / "data", background=(3,) * 8, evaluation=(3, 3), drawings=5)
    run = cli("fit", "--config", CONFIG, "--data.init_args.root", str(root), "--trainer.max_epochs", "2",
              "--trainer.log_every_n_steps", "1", *SMALL,
              cwd=work)
    assert run.returncode == 0, run.stderr[-4000:]
    return work, root, run


def test_fit_tests_the_best_checkpoint_and_prints_the_ci(fitted):
    work, _, run = fitted
    output = run.stdout + run.stderr
    assert "testing the best checkpoint" in output
    assert "test/acc = " in output and "95% CI over 8 episodes" in output
    best = list((work / "runs").rglob("best.ckpt"))
    last = list((work / "runs").rglob("last.ckpt"))
    assert len(best) == 1 and len(last) == 1


def test_metrics_reach_the_csv_and_wandb_loggers(fitted):
    work, _, _ = fitted
    metrics = list((work / "runs" / "maml_omniglot_5w1s").glob("*/metrics.csv"))
    assert metrics, "the CSV logger wrote nothing"
    rows = list(csv.DictReader(metrics[0].open()))
    columns = set(rows[0])
    assert {"train/loss", "train/acc", "val/acc", "val/acc_ci95", "test/acc", "test/acc_ci95",
            "test/acc_before"} <= columns
    test_acc = [float(r["test/acc"]) for r in rows if r.get("test/acc")]
    assert len(test_acc) == 1 and 0.0 <= test_acc[0] <= 1.0
    assert list((work / "runs" / "maml_omniglot_5w1s").glob("*/wandb/offline-run-*/run-*.wandb"))
    episodes = list((work / "runs").rglob("test_episodes.csv"))
    assert episodes and len(list(csv.DictReader(episodes[0].open()))) == 8


def test_test_and_validate_from_a_checkpoint(fitted):
    work, root, _ = fitted
    best = str(next((work / "runs").rglob("best.ckpt")))
    tested = cli("test", "--config", CONFIG, "--data.init_args.root", str(root), "--ckpt_path", best, *SMALL,
                 cwd=work)
    assert tested.returncode == 0, tested.stderr[-4000:]
    assert "test/acc = " in tested.stdout + tested.stderr
    validated = cli("validate", "--config", CONFIG, "--data.init_args.root", str(root), "--ckpt_path", best,
                    *SMALL, cwd=work)
    assert validated.returncode == 0, validated.stderr[-4000:]
    assert "val/acc" in validated.stdout


def test_trainer_gradient_clipping_is_redirected_to_the_model(tmp_path):
    run = cli("fit", "--config", str(REPO / "configs" / "maml_sinusoid.yaml"), "--trainer.gradient_clip_val", "1.0",
              cwd=tmp_path)
    assert run.returncode == 2
    assert "--model.init_args.gradient_clip_val" in run.stderr


def test_impossible_ways_fail_before_training(tmp_path):
    root = make_omniglot(tmp_path / "data", background=(3,) * 8, evaluation=(3, 3), drawings=5)
    run = cli("fit", "--config", CONFIG, "--data.init_args.root", str(root), "--data.init_args.ways", "20",
              "--model.init_args.backbone.init_args.out_features", "20", *SMALL, cwd=tmp_path)
    assert run.returncode == 2
    assert "data.init_args.test_ways=20" in run.stderr or "data.init_args.ways=20" in run.stderr
    assert "Epoch 0" not in run.stdout + run.stderr


@pytest.mark.parametrize("name", ["protonet_omniglot_5w1s", "matching_omniglot_5w1s", "relation_omniglot_5w1s",
                                  "siamese_omniglot_5w1s", "snail_omniglot_5w1s"])
def test_metric_learner_configs_fit_and_test_through_the_cli(tmp_path, name):
    """Each metric learner's paper config runs as shipped (optimizer, schedule, embedding), shrunk to
    the tiny fixture: background split, 5-way, 2 queries."""
    root = make_omniglot(tmp_path / "data", background=(3,) * 8, evaluation=(3, 3), drawings=5)
    run = cli("fit", "--config", str(REPO / "configs" / f"{name}.yaml"), "--data.init_args.root", str(root),
              "--data.init_args.download", "false", "--data.init_args.split", "background",
              "--data.init_args.ways", "5", "--data.init_args.queries", "2", "--data.init_args.test_queries", "2",
              "--data.init_args.meta_batch_size", "2", "--data.init_args.episodes_per_epoch", "4",
              "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "6",
              "--trainer.max_epochs", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "test/acc = " in run.stdout + run.stderr and "95% CI over 6 episodes" in run.stdout + run.stderr
    assert list((tmp_path / "runs").rglob("best.ckpt"))
