"""Learning claims, against numbers: MAML beats Finn's pretrained baseline on sinusoids and the
raw-pixel nearest-prototype baseline on held-out hanzi characters (real font renders)."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from meta_helpers import pixel_prototype_accuracy, quiet_trainer

from lightning_meta import MAML, NpzDataModule, SinusoidDataModule
from lightning_meta.models import MLP, Conv4


def pretrain_on_all_tasks(net: torch.nn.Module, data: SinusoidDataModule, steps: int) -> torch.nn.Module:
    """Finn et al.'s "pretrained" baseline: one regressor trained on the pooled points of all tasks."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = iter(data.train_dataloader())
    for _ in range(steps):
        batch = next(loader)
        x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], 1).flatten(0, 1)
        optimizer.zero_grad()
        F.mse_loss(net(x), y).backward()
        optimizer.step()
    return net


@pytest.mark.slow
def test_maml_sinusoid_adapts_and_beats_the_pretrained_baseline():
    pl.seed_everything(0)
    steps = 1200
    data = SinusoidDataModule(meta_batch_size=25, episodes_per_epoch=25 * steps, val_episodes=25, test_episodes=200)
    net = MLP(1, 1, (40, 40))
    maml = MAML(copy.deepcopy(net), inner_lr=0.01, inner_steps=1, test_inner_steps=10, outer_lr=1e-3)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(maml, data)
    ours = trainer.test(maml, data, verbose=False)[0]

    data.setup("fit")
    pretrained = pretrain_on_all_tasks(copy.deepcopy(net), data, steps)
    # the same evaluation (10 SGD steps of 0.01 on the 10 support points, same 200 test tasks)
    baseline = quiet_trainer().test(MAML(pretrained, inner_lr=0.01, inner_steps=10), data, verbose=False)[0]

    assert ours["test/mse"] <= 0.5 * ours["test/mse_before"]
    assert ours["test/mse"] < baseline["test/mse"] - 3 * (ours["test/mse_ci95"] + baseline["test/mse_ci95"]) / 2


@pytest.mark.slow
def test_maml_beats_the_pixel_baseline_on_held_out_hanzi():
    pl.seed_everything(0)
    data = NpzDataModule(path="hanzi", ways=5, shots=1, queries=2, test_queries=5,
                         rotations=(0, 90, 180, 270), meta_batch_size=8, episodes_per_epoch=8 * 200,
                         val_episodes=4, test_episodes=200)
    model = MAML(Conv4(1, 5, hidden_channels=32), inner_lr=0.4, inner_steps=1, test_inner_steps=3, outer_lr=3e-3)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    ours = trainer.test(model, data, verbose=False)[0]
    pixels = pixel_prototype_accuracy(data)
    assert 0.70 < pixels.mean() < 0.90  # the reference point of the data set's README (about 81%)
    margin = 3 * ours["test/acc_ci95"]
    assert ours["test/acc"] > pixels.mean().item() + margin
