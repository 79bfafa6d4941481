"""Bad input through the CLI: one ``lightning-meta: configuration error: <field>: ...`` line on stderr, exit
status 2, no traceback, and nothing left behind (no run folder, no W&B run).

Most cases call the CLI's ``main`` in this process (what ``python -m lightning_meta`` runs, without
paying the start-up of a new interpreter per case); a few run as a subprocess, as typed in a shell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, HANZI, cli, last_line, ok, the_run
from fixtures_images import make_image_folder

from lightning_meta.cli import main

SINE = ["--config", str(CONFIGS / "maml_sinusoid.yaml"), "--trainer.accelerator", "cpu",
        "--data.init_args.meta_batch_size", "4", "--data.init_args.episodes_per_epoch", "8",
        "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "4"]
PREFIX = "lightning-meta: configuration error: "


def refused(args: list[str], capsys, work: Path) -> str:
    """Run the CLI in-process in ``work``; assert it ended in one configuration-error line; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = last_line(err)
    assert line.startswith(PREFIX), err[-3000:]
    assert not (work / "runs").exists(), "a refused run must leave no run folder"
    return line


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "hanzi.yaml").write_text(HANZI)
    return tmp_path


# the bad values of tests/test_errors.py, as a user gives them on the command line: data settings on
# the bundled hanzi images, learner settings on MAML's sinusoid config
@pytest.mark.parametrize("field,value,named", [
    ("data.init_args.ways", "0", "data.init_args.ways=0"),
    ("data.init_args.shots", "-1", "data.init_args.shots=-1"),
    ("data.init_args.queries", "0", "data.init_args.queries=0"),
    ("data.init_args.meta_batch_size", "0", "data.init_args.meta_batch_size=0"),
    ("data.init_args.episodes_per_epoch", "0", "data.init_args.episodes_per_epoch=0"),
    ("data.init_args.test_ways", "0", "data.init_args.test_ways=0"),
    ("data.init_args.test_episodes", "-5", "data.init_args.test_episodes=-5"),
    ("data.init_args.num_workers", "-1", "data.init_args.num_workers=-1"),
    ("data.init_args.test_ways", "61", "data.init_args.test_ways=61"),       # more than a split's classes
    ("data.init_args.shots", "abc", "data.init_args.shots: expected an integer"),      # jsonargparse
    ("data.init_args.shot", "1", "data.init_args.shot: NpzDataModule takes no argument 'shot' (did you mean shots"),
    ("data.init_args.path", "missing.npz", "data.init_args.path='missing.npz'"),
])
def test_bad_data_values_end_in_one_line(work, capsys, field, value, named):
    line = refused(["fit", "--config", str(work / "hanzi.yaml"), f"--{field}", value], capsys, work)
    assert named in line, line


@pytest.mark.parametrize("field,value,named", [
    ("model.init_args.inner_lr", "0.0", "model.init_args.inner_lr=0.0"),
    ("model.init_args.inner_lr", "-0.1", "model.init_args.inner_lr=-0.1"),
    ("model.init_args.inner_lr", "nan", "model.init_args.inner_lr: expected a number, got 'nan'"),
    ("model.init_args.outer_lr", "0", "model.init_args.outer_lr=0"),
    ("model.init_args.inner_steps", "0", "model.init_args.inner_steps=0"),
    ("model.init_args.test_inner_steps", "0", "model.init_args.test_inner_steps=0"),
    ("model.init_args.accumulate_grad_batches", "0", "model.init_args.accumulate_grad_batches=0"),
    ("model.init_args.gradient_clip_val", "-1.0", "model.init_args.gradient_clip_val=-1.0"),
    ("model.init_args.step_sizes", "per_weight", "step_sizes='per_weight' is unknown"),
    ("model.init_args.batching", "threads", "batching='threads' is unknown"),
    ("model.init_args.inner_lr", "fast", "model.init_args.inner_lr: expected a number, got 'fast'"),
    ("trainer.gradient_clip_val", "1.0", "--model.init_args.gradient_clip_val"),
    ("trainer.max_stepz", "3", "unrecognized arguments: --trainer.max_stepz"),
    ("trainer.logger.init_args.log_model", "true", "log_model=True and offline=True"),   # W&B refuses the pair
])
def test_bad_learner_values_end_in_one_line(work, capsys, field, value, named):
    offline = ["--trainer.logger.init_args.offline", "true"] if "log_model" in field else []
    line = refused(["fit", *SINE, *offline, f"--{field}", value], capsys, work)
    assert named in line, line


def test_the_shell_sees_one_line_and_status_2(tmp_path):
    for args, named in ((["--model.init_args.inner_lr", "-1"], "model.init_args.inner_lr=-1"),
                        (["--data.init_args.shots", "abc"], "data.init_args.shots")):
        run = cli("fit", *SINE, *args, cwd=tmp_path)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert last_line(run.stderr).startswith(PREFIX) and named in last_line(run.stderr), run.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


def test_an_unknown_config_name_lists_close_ones(work, capsys):
    line = refused(["fit", "--config", "maml_sinusiod"], capsys, work)
    assert "maml_sinusoid" in line


# ---------------------------------------------------------------------- data and model checks before training
def image_folder(root: Path, classes: int = 4) -> Path:
    """``root/{train,val,test}/<class>/<image>``: 10 / 4 / ``classes`` classes of 6 RGB 20x20 images."""
    for split, count in (("train", 10), ("val", 4), ("test", classes)):
        make_image_folder(root / split, classes=count, per_class=6, size=20)
        for folder in (root / split).iterdir():  # class names are disjoint across splits
            folder.rename(folder.with_name(f"{split}_{folder.name}"))
    return root


def image_args(root: Path) -> list[str]:
    return ["--config", str(CONFIGS / "maml_image_folder.yaml"), "--data.init_args.root", str(root),
            "--trainer.accelerator", "cpu", "--data.init_args.image_size", "20",
            "--model.init_args.backbone.init_args.image_size", "20",
            "--model.init_args.backbone.init_args.hidden_channels", "4",
            "--data.init_args.ways", "3", "--data.init_args.shots", "1", "--data.init_args.queries", "2",
            "--model.init_args.backbone.init_args.out_features", "3",
            "--data.init_args.meta_batch_size", "2", "--data.init_args.episodes_per_epoch", "2",
            "--data.init_args.val_episodes", "2", "--data.init_args.test_episodes", "2"]


def test_a_test_split_that_cannot_serve_test_ways_fails_before_training(work, capsys):
    root = image_folder(work / "images", classes=2)
    line = refused(["fit", *image_args(root)], capsys, work)
    assert "data.init_args.test_ways=3" in line and "'test' split" in line, line


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_an_unreadable_image_in_a_test_class_is_named_before_training(work, capsys, damage):
    root = image_folder(work / "images")
    bad = root / "test" / "test_class_01" / "img_03.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is not a png")
    line = refused(["fit", *image_args(root)], capsys, work)
    assert str(bad.resolve()) in line and "replace it" in line, line


def test_a_model_that_cannot_take_the_data_fails_before_training(work, capsys):
    root = image_folder(work / "images")
    line = refused(["fit", *image_args(root), "--model.init_args.backbone.init_args.out_features", "2"], capsys, work)
    assert "out_features to at least 3" in line


def test_a_meta_batch_that_does_not_split_across_processes(work, capsys):
    line = refused(["fit", *SINE, "--data.init_args.meta_batch_size", "5", "--data.init_args.episodes_per_epoch",
                    "10", "--trainer.devices", "2", "--trainer.strategy", "ddp"], capsys, work)
    assert "data.init_args.meta_batch_size=5 does not divide across 2 processes" in line


def test_a_truncated_checkpoint_is_named(tmp_path):
    ok(cli("fit", *SINE, "--trainer.max_steps", "2", cwd=tmp_path))
    run = the_run(tmp_path / "runs" / "maml_sinusoid")
    good = run / "checkpoints" / "last.ckpt"
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good.read_bytes()[:1000])
    tested = cli("test", *SINE, "--ckpt_path", broken, cwd=tmp_path)
    assert tested.returncode == 2 and "Traceback" not in tested.stderr, tested.stderr[-3000:]
    assert str(broken) in last_line(tested.stderr) and "cannot be read" in last_line(tested.stderr)
    assert torch.load(good, weights_only=True)["global_step"] == 2


def test_a_nan_test_metric_is_an_error_not_a_number(work, capsys):
    """A model whose predictions are NaN: test fails in one line (exit 1) instead of printing nan ± nan."""
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *SINE, "--model.init_args.inner_lr", "1e30", "--model.init_args.test_inner_steps", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err, err[-3000:]
    assert last_line(err).startswith("lightning-meta: error: ") and "not finite" in last_line(err)
