"""Bad input fails fast, before training, with a message that names the field and the fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer

from lightning_meta import ANIL, MAML, ClassImages, ConfigurationError, EpisodicDataModule, SinusoidDataModule
from lightning_meta.models import MLP, Conv4


class TinyImages(EpisodicDataModule):
    """10 classes of 6 random 8x8 images per split."""

    def load_split(self, split):
        g = torch.Generator().manual_seed(len(split))
        return ClassImages.from_array(torch.randint(0, 256, (10, 6, 8, 8), generator=g, dtype=torch.uint8))


@pytest.mark.parametrize("field,value", [
    ("ways", 0), ("shots", -1), ("queries", -1), ("test_queries", -1), ("meta_batch_size", 0), ("episodes_per_epoch", 0),
    ("test_ways", 0), ("test_episodes", -5), ("num_workers", -1),
])
def test_non_positive_data_settings(field, value):
    with pytest.raises(ConfigurationError, match=f"data.init_args.{field}={value}"):
        TinyImages(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("inner_lr", 0.0), ("inner_lr", -0.1), ("inner_lr", float("nan")), ("outer_lr", 0), ("inner_steps", 0),
    ("test_inner_steps", 0), ("accumulate_grad_batches", 0), ("gradient_clip_val", -1.0),
])
def test_non_positive_model_settings(field, value):
    with pytest.raises(ConfigurationError, match=f"model.init_args.{field}="):
        MAML(MLP(), **{field: value})


@pytest.mark.parametrize("field,value", [("step_sizes", "per_weight"), ("batching", "threads")])
def test_unknown_algorithm_options(field, value):
    with pytest.raises(ConfigurationError, match=f"{field}='{value}' is unknown: choose one of"):
        MAML(MLP(), **{field: value})


def test_anil_needs_a_head():
    with pytest.raises(ConfigurationError, match="model.init_args.head"):
        ANIL(MLP(), head="classifier")


def test_zero_queries_reach_only_learners_without_a_query_set():
    data = TinyImages(ways=5, shots=1, queries=0, test_queries=0)
    data.setup("fit")
    assert data.setting("val") == (5, 1, 0)
    task = data.source("train").sample(torch.Generator().manual_seed(0), 5, 1, 0)
    assert task.support_x.shape[0] == 5 and task.query_x.shape[0] == 0
    with pytest.raises(ConfigurationError, match="data.init_args.queries=0: MAML scores a query set"):
        MAML(Conv4(1, out_features=5, hidden_channels=4, image_size=8)).check_stage(data, "fit")
    model = MAML(Conv4(1, out_features=5, hidden_channels=4, image_size=8))
    model.needs_queries = False
    model.check_stage(data, "fit")


def test_more_ways_than_classes():
    data = TinyImages(ways=12, shots=1, queries=1)
    with pytest.raises(ConfigurationError, match=r"data.init_args.ways=12 .* 10 of the 'train' split"):
        data.setup("fit")


def test_more_shots_and_queries_than_samples():
    data = TinyImages(ways=5, shots=1, queries=1, test_shots=5, test_queries=5)
    with pytest.raises(ConfigurationError, match="test_shots \\+ data.init_args.test_queries = 5 \\+ 5 = 10 exceeds the 6 samples"):
        data.setup("fit")


def test_meta_batch_must_divide_across_processes():
    data = TinyImages(meta_batch_size=8, episodes_per_epoch=16)
    data.trainer = SimpleNamespace(global_rank=0, world_size=3)
    with pytest.raises(ConfigurationError, match="meta_batch_size=8 does not divide across 3 processes"):
        data.setup("fit")


def test_episodes_per_epoch_below_one_batch():
    with pytest.raises(ConfigurationError, match="raise episodes_per_epoch"):
        TinyImages(meta_batch_size=8, episodes_per_epoch=4)


def test_model_with_fewer_outputs_than_ways_fails_before_training():
    model = MAML(Conv4(1, out_features=3, hidden_channels=4, image_size=8))
    with pytest.raises(ConfigurationError, match="out_features to at least 5"):
        quiet_trainer(max_steps=1).fit(model, TinyImages(ways=5, queries=2, meta_batch_size=2, episodes_per_epoch=2))


def test_backbone_that_cannot_take_the_images_fails_before_training():
    model = MAML(MLP(in_features=10, out_features=5))
    with pytest.raises(ConfigurationError, match=r"cannot take the 'train' inputs of shape \[1, 8, 8\]"):
        quiet_trainer(max_steps=1).fit(model, TinyImages(ways=5, queries=2, meta_batch_size=2, episodes_per_epoch=2))


def test_inference_mode_trainer_is_refused_with_the_fix():
    model = MAML(MLP(1, 1, (8,)))
    data = SinusoidDataModule(meta_batch_size=2, episodes_per_epoch=2, val_episodes=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, inference_mode=True)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        trainer.test(model, data)  # Lightning validates under no_grad inside fit, under inference mode here


def test_nan_meta_loss_stops_training_and_keeps_weights_finite():
    model = MAML(MLP(1, 1, (8,)), inner_lr=1e30, inner_steps=3)
    data = SinusoidDataModule(meta_batch_size=2, episodes_per_epoch=4, val_episodes=2)
    with pytest.raises(FloatingPointError, match="at global step 0"):
        quiet_trainer(max_steps=2, limit_val_batches=0).fit(model, data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
