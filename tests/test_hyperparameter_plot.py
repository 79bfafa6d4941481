"""``HyperparameterPlot``: the learned schedules and example weights as pictures in the run folder and W&B,
and the per-kind hypergradient norms of ``HyperparameterLearner``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import wandb
from meta_helpers import quiet_trainer
from PIL import Image
from test_visual_callbacks import recorded_wandb, values_of  # noqa: F401 (a fixture)

from lightning_meta import DigitsDataModule, HyperparameterLearner
from lightning_meta.callbacks import HyperparameterPlot
from lightning_meta.callbacks.drawing import GREEN, PALETTE, RED
from lightning_meta.callbacks.run_folder import RunFolder
from lightning_meta.cli import visual_callbacks
from lightning_meta.models import MLP

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def colours_of(image: Image.Image) -> set[tuple[int, int, int]]:
    return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}


class Norms(pl.Callback):
    """The logged training metrics after each step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def test_cleaning_weights_are_drawn_and_logged_as_flipped_and_clean_histograms(tmp_path, recorded_wandb):  # noqa: F811
    logger, log = recorded_wandb
    run = tmp_path / "run"
    data = DigitsDataModule(60, 40, 40, label_noise=0.5, meta_batch_size=1, steps_per_epoch=2)
    learner = HyperparameterLearner(MLP(64, 10, ()), inner_steps=5, inner_batch_size=None, inner_optimizer="sgd",
                                    inner_lr=1.0, learn_lr="scalar", learn_example_weights=True, inner_init="zeros",
                                    outer_lr=0.5)
    norms = Norms()
    plot = HyperparameterPlot(bins=10)
    trainer = quiet_trainer(max_epochs=2, logger=logger, num_sanity_val_steps=0, log_every_n_steps=1,
                            callbacks=[RunFolder(run), plot, norms])
    trainer.fit(learner, data)
    trainer.test(learner, datamodule=data, verbose=False)

    written = sorted(p.name for p in run.glob("*.png"))
    assert written == ["example_weights_test_2.png", "example_weights_val_0.png", "example_weights_val_1.png",
                       "lr_schedule_test_2.png", "lr_schedule_val_0.png", "lr_schedule_val_1.png"]
    with Image.open(run / "example_weights_test_2.png") as png:
        assert png.size == (640, 480) and {GREEN, RED} <= colours_of(png)
    assert len(values_of(log, "val/example_weights")) == 2 and len(values_of(log, "test/lr_schedule")) == 1
    assert all(isinstance(entry[0], wandb.Image) for entry in values_of(log, "val/lr_schedule"))

    # the test histograms are those of the best weights on validation, flipped apart from clean
    weights = learner.evaluated_hyper_values(testing=True)["weights"].numpy()
    flipped = data.flipped.numpy()
    assert flipped.sum() == 30
    for name, chosen in (("clean", ~flipped), ("flipped", flipped)):
        (histogram,) = values_of(log, f"test/example_weights_{name}")
        expected, edges = np.histogram(weights[chosen], bins=64)
        assert histogram.histogram == expected.tolist() and np.allclose(histogram.bins, edges)
    assert not np.allclose(weights, 0.5), "the weights moved: the pictures are not of the starting point"

    # per-kind hypergradient norms: the total is their root sum of squares
    logged = [row for row in norms.rows if "train/hypergrad_norm_weights" in row]
    assert len(logged) == 4
    for row in logged:
        assert row["train/hypergrad_norm_weights"] > 0 and row["train/hypergrad_norm_lr"] > 0
        assert row["train/hypergrad_norm"] == pytest.approx(
            math.hypot(row["train/hypergrad_norm_weights"], row["train/hypergrad_norm_lr"]), rel=1e-5)


@pytest.mark.parametrize("learn", ["scalar", "per_step", "per_layer", "per_layer_per_step"])
def test_a_schedule_has_one_line_per_parameter_tensor_where_learned_per_tensor(tmp_path, learn):
    data = DigitsDataModule(60, 40, 40, meta_batch_size=1, steps_per_epoch=1)
    learner = HyperparameterLearner(MLP(64, 10, (8,)), inner_steps=4, inner_batch_size=20,
                                    inner_optimizer="momentum", inner_lr=0.3, inner_momentum=0.5, learn_lr=learn,
                                    learn_momentum=learn, outer_lr=0.3)
    plot = HyperparameterPlot(stages=("val",))
    trainer = quiet_trainer(max_epochs=1, num_sanity_val_steps=0, callbacks=[RunFolder(tmp_path), plot])
    trainer.fit(learner, data)

    lines = 4 if learn.startswith("per_layer") else 1          # 4 tensors: 2 weights, 2 biases
    for name in ("lr_schedule", "momentum_schedule"):
        with Image.open(tmp_path / f"{name}_val_0.png") as png:
            colours = colours_of(png)
        drawn = [colour in colours for colour in PALETTE[:5]]
        assert drawn == [True] * lines + [False] * (5 - lines), (name, drawn)


def test_other_learners_get_no_picture(tmp_path):
    trainer = quiet_trainer(max_epochs=1, callbacks=[RunFolder(tmp_path)])
    plot = HyperparameterPlot()
    plot.plot(trainer, pl.LightningModule(), "val")
    assert plot.written == [] and not list(tmp_path.glob("*.png"))
    assert any(isinstance(callback, HyperparameterPlot) for callback in visual_callbacks())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bins must be >= 1"):
        HyperparameterPlot(bins=0)
    with pytest.raises(ValueError, match="unknown"):
        HyperparameterPlot(stages=("train",))


def test_scalar_values_draw_a_constant_over_the_run():
    image = HyperparameterPlot().schedule(torch.tensor(0.5), [], 10, "momentum", "title")
    assert PALETTE[0] in colours_of(image) and PALETTE[1] not in colours_of(image)
