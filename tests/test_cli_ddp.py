"""Two DDP processes on CPU through the CLI, as a user types it: ``fit`` (with its final test), ``test``,
``validate`` and ``predict`` finish, and give what one process gives.

Every callback runs on every rank and must reach every collective (``trainer.log_dir`` is one): the
first version of this CLI hung in the test that ``fit`` runs at its end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, HANZI, cli, ok, rows, the_run, weights
from test_run_lifecycle import write_prediction_folders

SINE = [
    "--config", CONFIGS / "maml_sinusoid.yaml", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "-1",
    "--data.init_args.meta_batch_size", "8", "--data.init_args.episodes_per_epoch", "32",
    "--data.init_args.val_episodes", "8", "--data.init_args.test_episodes", "10",
    "--model.init_args.backbone.init_args.hidden", "[16, 16]", "--trainer.log_every_n_steps", "1",
    "--trainer.max_steps", "6",
]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("ddp")
    ok(cli("fit", *SINE, "--trainer.logger.init_args.save_dir", "one", cwd=work))
    ok(cli("fit", *SINE, *DDP, "--trainer.logger.init_args.save_dir", "two", cwd=work, timeout=600))
    return work, the_run(work / "one"), the_run(work / "two")


def close_rows(a: list[dict], b: list[dict]) -> None:
    assert [r.keys() for r in a] == [r.keys() for r in b]
    for x, y in zip(a, b):
        for key in x:
            if x[key] and y[key]:
                assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-5, abs=1e-6), (key, x, y)
            else:
                assert x[key] == y[key], (key, x, y)


def test_fit_on_two_processes_finishes_with_its_test_and_equals_one(runs):
    _, one, two = runs
    a, b = weights(one / "checkpoints" / "last.ckpt"), weights(two / "checkpoints" / "last.ckpt")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    close_rows(rows(two / "test_episodes.csv"), rows(one / "test_episodes.csv"))
    close_rows(rows(two / "metrics.csv"), rows(one / "metrics.csv"))


def test_test_and_validate_on_two_processes(runs):
    work, one, two = runs
    best = two / "checkpoints" / "best.ckpt"
    tested = ok(cli("test", *SINE, *DDP, "--ckpt_path", best, cwd=work, timeout=600))
    assert "test/mse = " in tested.stdout + tested.stderr
    folder, = two.glob("test-*")
    close_rows(rows(folder / "test_episodes.csv"), rows(two / "test_episodes.csv"))
    validated = ok(cli("validate", *SINE, *DDP, "--ckpt_path", best, cwd=work, timeout=600))
    output = validated.stdout + validated.stderr
    assert "val/mse = " in output and "95% CI over 8 episodes" in output


def test_predict_on_two_processes(tmp_path):
    (tmp_path / "hanzi.yaml").write_text(HANZI)
    support, queries = write_prediction_folders(tmp_path)
    ok(cli("predict", "--config", tmp_path / "hanzi.yaml", *DDP, "--data.init_args.support_dir", support,
           "--data.init_args.query_dir", queries, cwd=tmp_path, timeout=600))
    predictions, = (tmp_path / "runs" / "hanzi").rglob("predictions.csv")
    assert len(rows(predictions)) == 6
