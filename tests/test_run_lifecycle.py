"""The life of a run, through ``python -m lightning_meta`` as a user types it: run folders, exact resume
with ``--ckpt_path last``, what a checkpoint and the W&B run hold, and evaluation in the run's folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import CONFIGS, HANZI, REPO, cli, ok, rows, run_folders, the_run, weights
from PIL import Image

SINE = [
    "--config", CONFIGS / "maml_sinusoid.yaml", "--trainer.accelerator", "cpu",
    "--data.init_args.meta_batch_size", "8", "--data.init_args.episodes_per_epoch", "32",   # 4 steps an epoch
    "--data.init_args.val_episodes", "8", "--data.init_args.test_episodes", "8",
    "--model.init_args.backbone.init_args.hidden", "[16, 16]", "--trainer.log_every_n_steps", "1",
    "--trainer.max_epochs", "-1",
]
TOTAL = 120
DEFECT_1 = ("no last checkpoint", "dirpath has changed")


def experiment(work: Path) -> Path:
    return work / "runs" / "maml_sinusoid"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    ok(cli("fit", *SINE, "--trainer.max_steps", TOTAL, cwd=work))
    return the_run(experiment(work))


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Weights, every logged value (timings aside) and the per-episode test results are the reference's."""
    a, b = weights(reference / "checkpoints" / "last.ckpt"), weights(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert rows(resumed / "metrics.csv") == rows(reference / "metrics.csv")
    assert rows(resumed / "test_episodes.csv") == rows(reference / "test_episodes.csv")


def stop_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


@pytest.mark.parametrize("stop,workers", [
    (["--trainer.max_steps", "4"], 0),                # an epoch's last step, then its validation (the first)
    (["--trainer.max_epochs", "2"], 0),               # training done at an epoch's end, then continued
    (["--trainer.max_steps", "6"], 2),                # mid-epoch, after a validation; 2 loader workers
    (["--trainer.max_time", "00:00:00:01"], 0),       # the default job's way of stopping
])
def test_fit_then_resume_last_equals_the_uninterrupted_run(tmp_path, uninterrupted, stop, workers):
    workers_args = ["--data.init_args.num_workers", workers]
    ok(cli("fit", *SINE, *stop, *workers_args, cwd=tmp_path))
    run = the_run(experiment(tmp_path))
    stopped = stop_step(run)
    assert 0 < stopped < TOTAL, f"the first fit should stop early, at {stopped}"
    resumed = ok(cli("fit", *SINE, "--trainer.max_steps", TOTAL, "--trainer.max_time", "null", *workers_args,
                     "--ckpt_path", "last", cwd=tmp_path))
    output = (resumed.stdout + resumed.stderr).lower()
    assert not [w for w in DEFECT_1 if w in output], output[-3000:]
    assert the_run(experiment(tmp_path)) == run, "the resumed run must write into its own folder"
    wandb_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(p.name.endswith(run.name) for p in wandb_runs), wandb_runs
    assert stop_step(run) == TOTAL
    assert_same_run(run, uninterrupted)


def test_ctrl_c_stops_after_a_step_and_resumes_exactly(tmp_path, uninterrupted):
    """A SIGINT in the middle of fit: training ends after the current step, last.ckpt holds it, no test runs;
    fit --ckpt_path last then ends where the uninterrupted run ends."""
    environment = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lightning_meta", "fit", *map(str, SINE), "--trainer.max_steps", str(TOTAL)]
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            metrics = list(experiment(tmp_path).glob("*/metrics.csv"))
            if metrics and len(metrics[0].read_text().splitlines()) > 12:   # a few steps and a validation
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()[-3000:]
    output = (tmp_path / "first.log").read_text()
    run = the_run(experiment(tmp_path))
    stopped = stop_step(run)
    assert 0 < stopped < TOTAL, f"the signal should stop training early, at {stopped}"
    assert "stopped by Ctrl-C after step" in output and not (run / "test_episodes.csv").exists()
    ok(cli("fit", *SINE, "--trainer.max_steps", TOTAL, "--ckpt_path", "last", cwd=tmp_path))
    assert_same_run(run, uninterrupted)


def test_resume_from_another_working_directory(tmp_path, uninterrupted):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    ok(cli("fit", *SINE, "--trainer.max_steps", "6", cwd=first))
    run = the_run(experiment(first))
    checkpoint = run / "checkpoints" / "last.ckpt"
    resumed = ok(cli("fit", *SINE, "--trainer.max_steps", TOTAL, "--ckpt_path", checkpoint, cwd=elsewhere))
    assert not (elsewhere / "runs").exists(), "a resumed run stays in its folder"
    assert "testing the best checkpoint " + str(run / "checkpoints" / "best.ckpt") in resumed.stdout + resumed.stderr
    assert_same_run(run, uninterrupted)


def test_a_run_whose_schedule_spans_it_resumes_exactly(tmp_path):
    """``configs/reptile_sinusoid.yaml`` anneals epsilon over the whole run and stops at its ``max_time``; the
    user's next line is ``fit --ckpt_path last``.  The resumed run ends where an uninterrupted one ends.  (It
    restarted its data at the first episode while the schedule asked ``trainer.estimated_stepping_batches``
    when the optimizers were made, before the checkpoint's loader state was restored.)"""
    total = 600
    reptile = ["--config", CONFIGS / "reptile_sinusoid.yaml", "--trainer.accelerator", "cpu",
               "--trainer.max_epochs", "1", "--data.init_args.episodes_per_epoch", total,
               "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "4",
               "--model.init_args.backbone.init_args.hidden", "[16, 16]", "--trainer.log_every_n_steps", "1"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ok(cli("fit", *reptile, "--trainer.max_time", "null", cwd=tmp_path / "a"))
    ok(cli("fit", *reptile, "--trainer.max_time", "00:00:00:01", cwd=tmp_path / "b"))
    runs = [the_run(folder / "runs" / "reptile_sinusoid") for folder in (tmp_path / "a", tmp_path / "b")]
    assert 0 < stop_step(runs[1]) < total, f"the first fit should stop early, at {stop_step(runs[1])}"
    ok(cli("fit", *reptile, "--trainer.max_time", "null", "--ckpt_path", "last", cwd=tmp_path / "b"))
    assert stop_step(runs[1]) == stop_step(runs[0]) == total
    assert_same_run(runs[1], runs[0])


def test_fit_without_a_previous_run_starts_one(tmp_path):
    ok(cli("fit", *SINE, "--trainer.max_steps", "2", "--ckpt_path", "last", cwd=tmp_path))
    assert len(run_folders(experiment(tmp_path))) == 1


# ---------------------------------------------------------------------- folders, checkpoints, W&B


def write_prediction_folders(root: Path) -> tuple[Path, Path]:
    """3 classes of hanzi glyphs as PNG files (white on black, as the array holds them)."""
    from lightning_meta.data.bundled import bundled_path

    images = np.load(bundled_path("hanzi"))["X"][-3:, :3]
    support, queries = root / "support", root / "queries"
    for c, glyphs in enumerate(images):
        (support / f"class{c}").mkdir(parents=True)
        glyph = Image.fromarray(glyphs[0])
        glyph.save(support / f"class{c}" / "0.png")
        for i in (1, 2):
            queries.mkdir(exist_ok=True)
            Image.fromarray(glyphs[i]).save(queries / f"c{c}_{i}.png")
    return support, queries


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("two_runs")
    config = work / "protonet_hanzi_tiny.yaml"
    config.write_text(HANZI)
    ok(cli("fit", "--config", config, cwd=work))
    ok(cli("fit", "--config", config, cwd=work))
    first, second = run_folders(work / "runs" / "protonet_hanzi_tiny")
    return work, config, first, second


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "wandb" not in p.parts}


def test_two_fits_leave_two_run_folders(two_runs):
    _, _, first, second = two_runs
    for run in (first, second):
        assert {"config.yaml", "metrics.csv", "test_episodes.csv"} <= {p.name for p in run.iterdir()}
        assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert list((run / "wandb").glob(f"offline-run-*-{run.name}"))
    assert rows(first / "test_episodes.csv") == rows(second / "test_episodes.csv"), "same config, same seed"


def test_test_and_predict_on_a_checkpoint_write_into_its_run_only(two_runs, tmp_path):
    work, config, first, second = two_runs
    before_first, before_second = snapshot(first), snapshot(second)
    best = first / "checkpoints" / "best.ckpt"
    tested = ok(cli("test", "--config", config, "--ckpt_path", best, cwd=work))
    assert "test/acc = " in tested.stdout + tested.stderr
    support, queries = write_prediction_folders(tmp_path)
    ok(cli("predict", "--config", config, "--ckpt_path", best, "--data.init_args.support_dir", support,
           "--data.init_args.query_dir", queries, cwd=work))
    assert snapshot(second) == before_second, "another run's folder was written"
    after = snapshot(first)
    assert {k: v for k, v in after.items() if k in before_first} == before_first, "the run's own files changed"
    test_folder, = first.glob("test-*")
    predict_folder, = first.glob("predict-*")
    assert (test_folder / "test_episodes.csv").is_file() and (test_folder / "config.yaml").is_file()
    assert rows(test_folder / "test_episodes.csv") == rows(first / "test_episodes.csv")
    predictions = rows(predict_folder / "predictions.csv")
    assert len(predictions) == 6 and {r["prediction"] for r in predictions} <= {"class0", "class1", "class2"}
    grouped = list((test_folder / "wandb").glob("offline-run-*"))
    assert grouped and not grouped[0].name.endswith(first.name), "an evaluation is its own W&B run, grouped"


def test_checkpoint_holds_the_data_arguments_and_predict_refuses_other_decoding(two_runs, tmp_path):
    work, config, first, _ = two_runs
    best = first / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    data = checkpoint["datamodule_hyper_parameters"]
    assert data["path"] == "hanzi" and data["ways"] == 5 and data["test_episodes"] == 6
    assert checkpoint["data_decoding"]["invert"] is False
    support, queries = write_prediction_folders(tmp_path)
    omniglot = cli("predict", "--config", CONFIGS / "protonet_omniglot_5w1s.yaml", "--ckpt_path", best,
                   "--data.init_args.support_dir", support, "--data.init_args.query_dir", queries,
                   "--data.init_args.root", tmp_path / "nowhere", cwd=work)
    assert omniglot.returncode == 2, omniglot.stderr[-3000:]
    message = omniglot.stderr.strip().splitlines()[-1]
    assert message.startswith("lightning-meta: configuration error: data:") and "invert" in message, message
    same = ok(cli("predict", "--config", config, "--ckpt_path", best, "--data.init_args.support_dir", support,
                  "--data.init_args.query_dir", queries, cwd=work))
    assert "predictions of 6 queries" in same.stdout + same.stderr


def test_the_wandb_run_carries_the_whole_config(tmp_path, monkeypatch):
    """In-process (wandb 0.31 has no reader for offline run files): the W&B config has every section."""
    from lightning_meta.cli import MetaCLI
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = tmp_path / "protonet_hanzi_tiny.yaml"
    config.write_text(HANZI)
    run = MetaCLI(args=["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.logger.init_args.tags",
                        "[smoke]", "--trainer.enable_progress_bar", "false"])
    logger, = [lg for lg in run.trainer.loggers if isinstance(lg, WandbLogger)]
    saved = dict(logger.experiment.config)
    assert {"model", "data", "trainer", "seed_everything", "lightning_meta"} <= set(saved)
    assert saved["data"]["init_args"]["path"] == "hanzi"
    assert saved["model"]["class_path"] == "lightning_meta.PrototypicalNetwork"
    assert saved["trainer"]["max_steps"] == 2 and saved["lightning_meta"]["version"]
    assert list(logger.experiment.tags) == ["smoke"]
    folder, = run_folders(tmp_path / "runs" / "protonet_hanzi_tiny")
    assert logger.experiment.id == folder.name
    assert yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["max_steps"] == 2
    # what to look at, in the run folder and in the W&B run: ProtoNet has a gallery and the test table
    assert list(folder.glob("gallery_val_*.png")) and list(folder.glob("gallery_test_*.png"))
    media = list((folder / "wandb").glob("offline-run-*/files/media/images/*/gallery*.png"))
    tables = list((folder / "wandb").glob("offline-run-*/files/media/table/test/episodes*.table.json"))
    assert media and tables, sorted(p.name for p in (folder / "wandb").rglob("*"))[:40]
    logger.experiment.finish()


def test_runs_folder_follows_the_loggers_save_dir(tmp_path):
    ok(cli("fit", *SINE, "--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", "elsewhere",
           "--trainer.logger.init_args.project", "my-project",
           "--trainer.callbacks+=pytorch_lightning.callbacks.RichProgressBar", cwd=tmp_path))
    run = the_run(tmp_path / "elsewhere")
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "runs").exists()
    shutil.rmtree(tmp_path / "elsewhere")
