"""A run resumed from a mid-epoch checkpoint is the run that was never stopped."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_meta import MAML, SinusoidDataModule
from lightning_meta.models import MLP


def fresh(num_workers: int = 0):
    pl.seed_everything(0)
    model = MAML(MLP(1, 1, (16, 16)), inner_lr=0.05, inner_steps=2, outer_lr=3e-3)
    data = SinusoidDataModule(meta_batch_size=4, episodes_per_epoch=20, val_episodes=8, num_workers=num_workers)
    return model, data


@pytest.mark.parametrize("stop_at,num_workers", [(7, 0), (7, 2), (5, 0)])
def test_resume_equals_uninterrupted(tmp_path, stop_at, num_workers):
    """An epoch is 5 steps: stopping at 7 is mid-epoch, at 5 on the boundary."""
    total = 2 * stop_at
    model, data = fresh(num_workers)
    quiet_trainer(max_steps=total, default_root_dir=tmp_path / "a").fit(model, data)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    model, data = fresh(num_workers)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=stop_at, save_top_k=-1,
                            filename="{step}")
    trainer = quiet_trainer(max_steps=stop_at, callbacks=[saver], enable_checkpointing=True,
                            default_root_dir=tmp_path / "b")
    trainer.fit(model, data)
    checkpoint = tmp_path / "ckpt" / f"step={stop_at}.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())

    model, data = fresh(num_workers)
    torch.manual_seed(1234)  # the checkpoint's RNG state must win over whatever state we are in
    resumed_trainer = quiet_trainer(max_steps=total, default_root_dir=tmp_path / "c")
    resumed_trainer.fit(model, data, ckpt_path=checkpoint)
    assert resumed_trainer.global_step == total
    for name, value in uninterrupted.items():
        assert torch.equal(model.state_dict()[name], value), name


def test_checkpoint_resume_sees_unseen_episodes(tmp_path):
    """The stateful loader really skips the batches trained before the checkpoint."""
    model, data = fresh()
    data.setup("fit")
    loader = data.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches_done": 2})
    resumed = [b.index.tolist() for b in loader]
    assert resumed == [[8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
