"""The visual callbacks on the meta-RL learners: the adaptation curve is the learner's own logged returns (MAML:
before and after each inner step; RL²: per episode of the trial), the 2D navigation trajectories are drawn before
and after adaptation (PNG in the run folder, image in W&B), other families are skipped without a word, and a run
with the CLI's visual callbacks trains exactly as one without them."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
import wandb
from meta_helpers import quiet_trainer
from PIL import Image, ImageChops
from test_visual_callbacks import Record, read_curve, recorded_wandb, values_of  # noqa: F401 (a fixture)

from lightning_meta import RL2, EnvTaskDataModule, MAMLPolicyGradient
from lightning_meta.callbacks import AdaptationCurve, TrajectoryPlot
from lightning_meta.callbacks.run_folder import RunFolder
from lightning_meta.cli import visual_callbacks
from lightning_meta.envs import BernoulliBandits, Navigation2D
from lightning_meta.models import GaussianMLPPolicy, GRUPolicy

PANEL = 300   # TrajectoryPlot's default panel side; grid gap 6
TITLE = 34    # line_chart's plot area starts below its title


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def maml_setup() -> tuple[MAMLPolicyGradient, EnvTaskDataModule]:
    pl.seed_everything(0)
    model = MAMLPolicyGradient(GaussianMLPPolicy(2, 2, hidden_sizes=(8, 8)), inner_lr=0.5, test_inner_steps=2,
                               outer="ppo", ppo_epochs=1)   # TRPO's steps take seconds, the visuals do not need them
    data = EnvTaskDataModule(Navigation2D(horizon=10), rollouts=4, meta_batch_size=4, episodes_per_epoch=8,
                             val_episodes=4, test_episodes=6)
    return model, data


def rl2_setup(family) -> tuple[RL2, EnvTaskDataModule]:
    pl.seed_everything(0)
    policy = (GRUPolicy(2, action_size=2, hidden_size=8) if isinstance(family, Navigation2D)
              else GRUPolicy(1, num_actions=family.num_actions, hidden_size=8))
    model = RL2(policy, ppo_epochs=1, report_episodes=(1, 2, 3))
    data = EnvTaskDataModule(family, rollouts=2, episodes_per_trial=3, meta_batch_size=4, episodes_per_epoch=4,
                             val_episodes=4, test_episodes=4)
    return model, data


def curve(rows: list[dict[str, str]], stage: str, epoch: int) -> dict[int, tuple[float, float]]:
    """``{x: (value, ci95)}`` of one evaluation's rows of the CSV."""
    return {int(r["inner_step"]): (float(r["value"]), float(r["ci95"])) for r in rows
            if r["stage"] == stage and int(r["epoch"]) == epoch}


def logged(metrics: dict, stage: str, names: dict[int, str]) -> dict[int, tuple[float, float]]:
    return {x: (float(metrics[f"{stage}/{n}"]), float(metrics[f"{stage}/{n}_ci95"])) for x, n in names.items()}


def panel(image: Image.Image, row: int, column: int) -> Image.Image:
    """One panel's plot area (below its title) of a TrajectoryPlot picture."""
    left, top = column * (PANEL + 6), row * (PANEL + 6)
    return image.crop((left, top + TITLE, left + PANEL, top + PANEL))


def test_maml_curve_is_the_logged_returns_and_paths_change(tmp_path, recorded_wandb):  # noqa: F811 (imported)
    logger, log = recorded_wandb
    run = tmp_path / "run"
    model, data = maml_setup()
    record = Record()
    trainer = quiet_trainer(max_epochs=2, logger=logger,
                            callbacks=[RunFolder(run), AdaptationCurve(), TrajectoryPlot(), record])
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)

    names = {0: "return_before", 1: "return_step1", 2: "return_step2"}
    rows = read_curve(run / "adaptation_curve.csv")
    assert {r["metric"] for r in rows} == {"return"}
    assert [r["episodes"] for r in rows] == ["4"] * 6 + ["6"] * 3   # all the val tasks, then all the test tasks
    for epoch, metrics in enumerate(record.val):
        assert curve(rows, "val", epoch) == logged(metrics, "val", names)
    assert curve(rows, "test", 2) == logged(trainer.callback_metrics, "test", names)
    with Image.open(run / "adaptation_curve.png") as image:
        assert image.size == (640, 480)
    charts = values_of(log, "val/adaptation_curve")
    assert len(charts) == 2 and len(values_of(log, "test/adaptation_curve")) == 1
    table = charts[-1].table                           # line_series: (step, lineKey, lineVal) rows
    assert [(row[0], row[2]) for row in table.data if row[1] == "epoch 1"] == \
        [(x, value) for x, (value, _) in curve(rows, "val", 1).items()]

    assert sorted(p.name for p in run.glob("trajectories_*")) == ["trajectories_val_0.png", "trajectories_val_1.png"]
    with Image.open(run / "trajectories_val_1.png") as png:
        picture = png.convert("RGB")
    assert picture.size == (4 * PANEL + 3 * 6, 2 * PANEL + 6)   # 4 tasks, before (top) and after (bottom)
    for task in range(4):
        assert ImageChops.difference(panel(picture, 0, task), panel(picture, 1, task)).getbbox() is not None, task
    images = values_of(log, "val/trajectories")
    assert len(images) == 2 and all(isinstance(entry[0], wandb.Image) for entry in images)
    assert not values_of(log, "test/trajectories"), "val only by default"
    assert not any("adaptation_curve" in k or "trajectories" in k for k in trainer.callback_metrics)


def maml_episodes(test_inner_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``adaptation_episodes`` of the first 4 val tasks, for an untrained learner with ``test_inner_steps``."""
    model, data = maml_setup()
    model.test_inner_steps = test_inner_steps
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0)
    trainer.fit(model, data)
    batch = TrajectoryPlot().fixed_tasks(trainer, "val")
    assert torch.equal(batch.index, torch.arange(4))
    with torch.enable_grad():
        return model.adaptation_episodes(batch)


def test_maml_episodes_are_those_before_and_after_the_inner_steps():
    observations, masks = maml_episodes(2)
    assert observations.shape == (2, 4, 4, 10, 2) and masks.shape == (2, 4, 4, 10)   # phase, task, episode, t
    assert torch.equal(observations[..., 0, :], torch.zeros(2, 4, 4, 2)), "Navigation2D starts at the origin"
    unadapted, unadapted_masks = maml_episodes(0)
    assert torch.equal(unadapted[0], unadapted[1]) and torch.equal(unadapted_masks[0], unadapted_masks[1])
    assert torch.equal(observations[0], unadapted[0]), "before: the meta-learned policy's episodes"
    assert not torch.equal(observations[1], observations[0])


def test_rl2_curve_is_the_return_per_episode_of_the_trial(tmp_path, recorded_wandb):  # noqa: F811 (imported)
    logger, log = recorded_wandb
    run = tmp_path / "run"
    model, data = rl2_setup(Navigation2D(horizon=6))
    record = Record()
    callbacks = [RunFolder(run), AdaptationCurve(), TrajectoryPlot(tasks=2, stages=("val", "test")), record]
    trainer = quiet_trainer(max_epochs=1, logger=logger, callbacks=callbacks)
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)

    names = {1: "return_ep1", 2: "return_ep2", 3: "return_ep3"}
    rows = read_curve(run / "adaptation_curve.csv")
    assert curve(rows, "val", 0) == logged(record.val[0], "val", names)
    assert curve(rows, "test", 1) == logged(trainer.callback_metrics, "test", names)
    table = values_of(log, "test/adaptation_curve")[0].table
    assert [row[0] for row in table.data] == [1, 2, 3]

    for name in ("trajectories_val_0.png", "trajectories_test_1.png"):
        with Image.open(run / name) as image:
            assert image.size == (2 * PANEL + 6, 2 * PANEL + 6), name
    assert len(values_of(log, "val/trajectories")) == 1 and len(values_of(log, "test/trajectories")) == 1


def test_rl2_episodes_are_the_first_and_last_of_each_trial():
    model, data = rl2_setup(Navigation2D(horizon=6))
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0)
    trainer.fit(model, data)
    batch = TrajectoryPlot(tasks=3).fixed_tasks(trainer, "val")
    observations, masks = model.adaptation_episodes(batch)
    assert batch.rollouts == 2
    trials = model.trials(batch, phase=0)
    positions = trials.inputs[..., :2].unflatten(2, (3, 6))   # [tasks, trials, episodes, horizon, 2]
    assert torch.equal(observations[0], positions[:, :, 0]) and torch.equal(observations[1], positions[:, :, 2])
    assert torch.equal(masks[1], trials.masks.unflatten(2, (3, 6))[:, :, 2])


def test_other_families_get_a_curve_and_no_trajectories_without_a_word(tmp_path, caplog):
    model, data = rl2_setup(BernoulliBandits(3))
    caplog.set_level(logging.INFO)
    plot = TrajectoryPlot()
    quiet_trainer(max_epochs=1, callbacks=[RunFolder(tmp_path), AdaptationCurve(), plot]).fit(model, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adaptation_curve.csv", "adaptation_curve.png"]
    assert plot.written == []
    assert "TrajectoryPlot" not in caplog.text and "AdaptationCurve" not in caplog.text


def test_the_cli_visual_callbacks_do_not_change_training(tmp_path):
    outcomes = []
    for callbacks in ([], [RunFolder(tmp_path), *visual_callbacks()]):
        model, data = maml_setup()
        record = Record()
        quiet_trainer(max_epochs=2, callbacks=[*callbacks, record]).fit(model, data)
        outcomes.append(({k: v.clone() for k, v in model.state_dict().items()}, record))
    (plain, plain_record), (watched, watched_record) = outcomes
    assert {"adaptation_curve.png", "trajectories_val_1.png"} <= {p.name for p in tmp_path.iterdir()}
    for name, value in plain.items():
        assert torch.equal(watched[name], value), name
    assert watched_record.random == plain_record.random and watched_record.val == plain_record.val
