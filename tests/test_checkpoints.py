"""Checkpoints reload with no extra arguments (``weights_only=True``) and are written atomically."""

from __future__ import annotations

import pytest
import torch
from meta_helpers import quiet_trainer
from torch import nn

import lightning_fabric.utilities.cloud_io as cloud_io
from lightning_meta import ANIL, MAML, MetaSGD, SinusoidDataModule
from lightning_meta.models import MLP


def trained(model, tmp_path):
    data = SinusoidDataModule(meta_batch_size=2, episodes_per_epoch=4, val_episodes=2)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, trainer


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL])
def test_load_from_checkpoint_needs_no_arguments(tmp_path, cls):
    model = cls(MLP(1, 1, (8, 8)), inner_lr=0.02, inner_steps=2, test_inner_steps=4)
    path, _ = trained(model, tmp_path)
    checkpoint = torch.load(path, weights_only=True)  # what `test --ckpt_path` does
    assert checkpoint["hyper_parameters"]["backbone"]["class_path"] == "lightning_meta.models.mlp.MLP"
    torch.manual_seed(5)
    loaded = cls.load_from_checkpoint(path)
    after_load = torch.get_rng_state()
    torch.manual_seed(5)
    cls(MLP(1, 1, (8, 8)), inner_lr=0.02, inner_steps=2, test_inner_steps=4)
    assert torch.equal(after_load, torch.get_rng_state()), "a plain load must not restore the training RNG"
    assert type(loaded) is cls and loaded.test_inner_steps == 4 and loaded.inner_lr == 0.02
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_backbone_that_cannot_be_described_is_passed_again(tmp_path):
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    path, _ = trained(MAML(net, inner_lr=0.02), tmp_path)
    assert "backbone" not in torch.load(path, weights_only=True)["hyper_parameters"]
    loaded = MAML.load_from_checkpoint(path, backbone=nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    assert torch.equal(loaded.backbone[0].weight, loaded.state_dict()["backbone.0.weight"])


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path, trainer = trained(MAML(MLP(1, 1, (8,))), tmp_path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(cloud_io.torch, "save", crash)  # what Lightning's checkpoint writer calls
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before
