"""The visual callbacks (adaptation curve, episode gallery, regression plot, W&B episode table): what they write in
the run folder, what reaches W&B (recorded in-process: wandb has no reader for offline runs), that the curve agrees
with the learner's own metrics, and that a run with them trains exactly as a run without them."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import wandb
from meta_helpers import quiet_trainer
from PIL import Image
from pytorch_lightning.loggers import WandbLogger

from lightning_meta import MAML, ClassImages, EpisodicDataModule, PrototypicalNetwork, SinusoidDataModule
from lightning_meta.callbacks import AdaptationCurve, EpisodeGallery, EpisodeTable, RegressionPlot
from lightning_meta.callbacks.drawing import BLUE, GREEN, RED, Series, image_tile, line_chart, nice_ticks
from lightning_meta.callbacks.fixed_episodes import side_evaluation
from lightning_meta.callbacks.run_folder import RunFolder
from lightning_meta.models import MLP, Conv4


class TinyImages(EpisodicDataModule):
    """10 classes of 6 random 8x8 images per split."""

    def load_split(self, split):
        g = torch.Generator().manual_seed(len(split))
        return ClassImages.from_array(torch.randint(0, 256, (10, 6, 8, 8), generator=g, dtype=torch.uint8))


def sinusoid_setup():
    pl.seed_everything(0)
    model = MAML(MLP(1, 1, (16, 16)), inner_lr=0.05, inner_steps=1, test_inner_steps=3)   # vmap batching
    return model, SinusoidDataModule(meta_batch_size=4, episodes_per_epoch=8, val_episodes=4, test_episodes=4)


def image_setup():
    pl.seed_everything(0)
    model = MAML(Conv4(1, 3, hidden_channels=4, image_size=8), inner_lr=0.4, inner_steps=1, test_inner_steps=2)
    return model, TinyImages(ways=3, shots=1, queries=2, meta_batch_size=4, episodes_per_epoch=8, val_episodes=4,
                             test_episodes=4)


class Record(pl.Callback):
    """The learner's validation metrics after each validation epoch, and one torch random number per epoch
    (a run whose global RNG was disturbed draws different numbers)."""

    def __init__(self) -> None:
        self.val: list[dict[str, float]] = []
        self.random: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    def on_train_epoch_start(self, trainer, pl_module):
        self.random.append(torch.rand(1).item())


@pytest.fixture
def recorded_wandb(tmp_path):
    """A WandbLogger (offline) whose run records everything logged to it: ``(logger, [dict, ...])``."""
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    logged: list[dict] = []
    run = logger.experiment
    original = run.log

    def record(data, *args, **kwargs):
        logged.append(dict(data))
        return original(data, *args, **kwargs)

    run.log = record
    yield logger, logged
    wandb.finish()


def values_of(logged: list[dict], key: str) -> list:
    return [entry[key] for entry in logged if key in entry]


def read_curve(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def curve_of(rows: list[dict[str, str]], stage: str, epoch: int) -> list[float]:
    chosen = [r for r in rows if r["stage"] == stage and int(r["epoch"]) == epoch]
    assert [int(r["inner_step"]) for r in chosen] == list(range(len(chosen)))
    return [float(r["value"]) for r in chosen]


def test_sinusoid_curve_regression_plot_and_table(tmp_path, recorded_wandb):
    logger, logged = recorded_wandb
    run = tmp_path / "run"
    model, data = sinusoid_setup()
    record = Record()
    callbacks = [RunFolder(run), AdaptationCurve(episodes=4), RegressionPlot(episodes=2), EpisodeGallery(),
                 EpisodeTable(), record]
    trainer = quiet_trainer(max_epochs=2, logger=logger, callbacks=callbacks)
    trainer.fit(model, data)
    trainer.test(model, data)

    rows = read_curve(run / "adaptation_curve.csv")
    assert list(rows[0]) == ["stage", "epoch", "global_step", "inner_step", "metric", "value", "ci95", "episodes"]
    assert len(rows) == 3 * 4 and {r["metric"] for r in rows} == {"mse"} and {r["episodes"] for r in rows} == {"4"}
    for epoch, metrics in enumerate(record.val):   # the 4 fixed episodes are the whole validation set
        curve = curve_of(rows, "val", epoch)
        assert len(curve) == 4                         # test_inner_steps + 1
        assert curve[0] == pytest.approx(metrics["val/mse_before"], rel=1e-5)
        assert curve[-1] == pytest.approx(metrics["val/mse"], rel=1e-5)
    test_curve = curve_of(rows, "test", 2)
    assert test_curve[0] == pytest.approx(float(trainer.callback_metrics["test/mse_before"]), rel=1e-5)
    assert test_curve[-1] == pytest.approx(float(trainer.callback_metrics["test/mse"]), rel=1e-5)
    with Image.open(run / "adaptation_curve.png") as image:
        assert image.size == (640, 480)

    for name in ("regression_val_0.png", "regression_val_1.png", "regression_test_2.png"):
        with Image.open(run / name) as image:
            assert image.size == (2 * 420 + 6, 300), name   # two panels side by side
    assert not list(run.glob("gallery_*")), "regression episodes have no gallery"

    charts = values_of(logged, "val/adaptation_curve")
    assert len(charts) == 2 and len(values_of(logged, "test/adaptation_curve")) == 1
    table = charts[-1].table                           # line_series: (step, lineKey, lineVal) rows
    assert {row[1] for row in table.data} == {"epoch 0", "epoch 1"}
    assert [row[2] for row in table.data if row[1] == "epoch 1"] == pytest.approx(curve_of(rows, "val", 1))
    assert len(values_of(logged, "val/regression_tasks")) == 2 and len(values_of(logged, "test/regression_tasks")) == 1
    episodes = values_of(logged, "test/episodes")
    assert len(episodes) == 1
    assert episodes[0].columns == ["episode", "loss", "loss_before", "mse", "mse_before"]
    assert [row[0] for row in episodes[0].data] == [0, 1, 2, 3]
    assert not any("val/gallery" in entry for entry in logged)
    assert not any(key.startswith("val/adaptation") for key in trainer.callback_metrics), "nothing logged as a metric"


def test_image_curve_and_gallery(tmp_path, recorded_wandb):
    logger, logged = recorded_wandb
    run = tmp_path / "run"
    model, data = image_setup()
    record = Record()
    gallery = EpisodeGallery(episodes=2, tile=40)
    callbacks = [RunFolder(run), AdaptationCurve(episodes=4), gallery, RegressionPlot(), record]
    trainer = quiet_trainer(max_epochs=2, logger=logger, callbacks=callbacks)
    trainer.fit(model, data)
    last_val_rows = model.results["val"].rows()
    trainer.test(model, data)

    rows = read_curve(run / "adaptation_curve.csv")
    for epoch, metrics in enumerate(record.val):
        curve = curve_of(rows, "val", epoch)
        assert len(curve) == 3
        assert curve[0] == pytest.approx(metrics["val/acc_before"], abs=1e-6)
        assert curve[-1] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert {r["metric"] for r in rows} == {"acc"}

    assert sorted(p.name for p in run.glob("gallery_*")) == ["gallery_test_2.png", "gallery_val_0.png",
                                                            "gallery_val_1.png"]
    assert not list(run.glob("regression_*")), "image episodes have no regression plot"
    images = values_of(logged, "val/gallery")
    assert len(images) == 2 and all(len(entry) == 2 for entry in images)
    captions = [image._caption for image in images[-1]]
    # each caption counts the correct queries of its episode, as the learner's own evaluation scored it
    for caption, row in zip(captions, last_val_rows):
        assert caption.startswith(f"val episode {row['episode']}: ")
        correct, total = map(int, re.search(r"(\d+)/(\d+) correct", caption).groups())
        assert total == 6 and correct == round(row["acc"] * 6)
    with Image.open(run / "gallery_val_1.png") as png:
        picture = png.convert("RGB")
    heights = [image.image.height for image in images[-1]]
    assert picture.height == sum(heights) + 12 and picture.width == images[-1][0].image.width
    colours = set(picture.getdata())
    assert (GREEN in colours or RED in colours), "queries are framed green (right) or red (wrong)"
    assert len(values_of(logged, "test/gallery")) == 1


def test_callbacks_do_not_change_training(tmp_path):
    """Same weights and same global random numbers with and without the callbacks (vmap and loop learners)."""
    for setup in (sinusoid_setup, image_setup):
        outcomes = []
        for with_callbacks in (False, True):
            model, data = setup()
            record = Record()
            callbacks = [record]
            if with_callbacks:
                callbacks += [RunFolder(tmp_path / setup.__name__), AdaptationCurve(episodes=4),
                              EpisodeGallery(episodes=1), RegressionPlot(episodes=1)]
            quiet_trainer(max_epochs=3, callbacks=callbacks).fit(model, data)
            outcomes.append(({k: v.clone() for k, v in model.state_dict().items()}, record))
        (plain, plain_record), (watched, watched_record) = outcomes
        assert list((tmp_path / setup.__name__).glob("*.png")), "the callbacks ran"
        for name, value in plain.items():
            assert torch.equal(watched[name], value), (setup.__name__, name)
        assert watched_record.random == plain_record.random
        assert watched_record.val == plain_record.val


def test_loaders_without_datamodule_use_the_first_batches(tmp_path):
    model, data = sinusoid_setup()
    data.setup("fit")
    record = Record()
    trainer = quiet_trainer(max_epochs=1, callbacks=[RunFolder(tmp_path), AdaptationCurve(episodes=4), record])
    trainer.fit(model, train_dataloaders=data.train_dataloader(), val_dataloaders=data.val_dataloader())
    curve = curve_of(read_curve(tmp_path / "adaptation_curve.csv"), "val", 0)
    assert curve[0] == pytest.approx(record.val[0]["val/mse_before"], rel=1e-5)
    assert curve[-1] == pytest.approx(record.val[0]["val/mse"], rel=1e-5)


def test_double_precision(tmp_path):
    """Under "64-true" the fixed episodes are converted to float64 as the learner's own batches are."""
    model, data = sinusoid_setup()
    record = Record()
    callbacks = [RunFolder(tmp_path), AdaptationCurve(episodes=4), RegressionPlot(episodes=1), record]
    quiet_trainer(max_epochs=1, precision="64-true", callbacks=callbacks).fit(model, data)
    curve = curve_of(read_curve(tmp_path / "adaptation_curve.csv"), "val", 0)
    assert curve[-1] == pytest.approx(record.val[0]["val/mse"], rel=1e-6)
    assert (tmp_path / "regression_val_0.png").exists()


def test_metric_learner_gets_a_gallery_but_no_curve(tmp_path):
    pl.seed_everything(0)
    model = PrototypicalNetwork(Conv4(1, None, hidden_channels=4, image_size=8, batch_norm_stats="running"))
    data = TinyImages(ways=3, shots=1, queries=2, meta_batch_size=4, episodes_per_epoch=4, val_episodes=2)
    callbacks = [RunFolder(tmp_path), AdaptationCurve(), EpisodeGallery(episodes=1), RegressionPlot()]
    quiet_trainer(max_epochs=1, callbacks=callbacks).fit(model, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery_val_0.png"]


def test_adaptation_predictions_match_evaluate_task():
    model, data = image_setup()
    data.setup("fit")
    task = next(iter(data.val_dataloader()))[0]
    with torch.enable_grad():
        curve = model.adaptation_predictions(task.support_x, task.support_y, task.query_x)
        after, before = model.evaluate_task(*task)
        longer = model.adaptation_predictions(task.support_x, task.support_y, task.query_x, steps=4)
    assert curve.shape == (3, 6, 3) and longer.shape == (5, 6, 3)
    assert torch.equal(curve[0], before) and torch.equal(curve[-1], after)
    assert torch.equal(longer[:3], curve)


def test_side_evaluation_restores_mode_and_random_state():
    module = torch.nn.Linear(2, 2)
    pl_module = pl.LightningModule()
    pl_module.net = module
    pl_module.train()
    state = torch.get_rng_state()
    with torch.inference_mode():
        with side_evaluation(pl_module):
            assert not pl_module.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            torch.rand(10)
    assert pl_module.training
    assert torch.equal(torch.get_rng_state(), state)


def test_drawing_helpers():
    chart = line_chart([Series([0, 1, 2], [0.2, 0.5, 0.6], "a", band=[0.1, 0.1, 0.1], markers=True)],
                       title="t", x_label="inner step", y_label="accuracy", size=(320, 240), integer_x=True)
    assert chart.size == (320, 240) and chart.mode == "RGB"
    assert BLUE in set(chart.getdata())
    tile = image_tile(torch.arange(12.0).view(1, 3, 4), 40)
    assert tile.size == (40, 30) and tile.getpixel((0, 0)) == (0, 0, 0) and tile.getpixel((39, 29)) == (255,) * 3
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(-5.2, 5.3) == [-5.0, -2.5, 0.0, 2.5, 5.0]


@pytest.mark.slow
def test_two_processes(tmp_path):
    """DDP (2 CPU processes, gloo): the run finishes on both ranks, rank 0 writes the files and logs to W&B,
    and the W&B table holds the test episodes of both ranks."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "WANDB_MODE": "offline"}
    script = Path(__file__).with_name("visual_ddp_check.py")
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "2"], capture_output=True, text=True,
                            timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "done_0").exists() and (tmp_path / "done_1").exists()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"adaptation_curve.csv", "adaptation_curve.png", "gallery_val_0.png", "gallery_test_1.png"} <= names
    rows = read_curve(tmp_path / "adaptation_curve.csv")
    assert [(r["stage"], int(r["inner_step"])) for r in rows] == [("val", 0), ("val", 1), ("val", 2),
                                                                  ("test", 0), ("test", 1), ("test", 2)]
    logged = json.loads((tmp_path / "logged.json").read_text())
    for key in ("val/adaptation_curve", "val/gallery", "test/adaptation_curve", "test/gallery", "test/episodes"):
        assert key in logged["keys"], key
    assert logged["table_rows"] == [6]
