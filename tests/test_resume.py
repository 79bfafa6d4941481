"""A run resumed from a mid-epoch checkpoint is the run that was never stopped."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_meta import MAML, RL2, EnvTaskDataModule, MAMLPolicyGradient, SinusoidDataModule
from lightning_meta.envs import BernoulliBandits, Navigation2D
from lightning_meta.models import MLP, GaussianMLPPolicy, GRUPolicy


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


def fresh_rl(kind: str):
    """A meta-RL learner on tiny tasks: 4 tasks per step, 5 steps per epoch; RL² takes 2 optimizer steps
    per batch (PPO epochs), MAML-TRPO one."""
    pl.seed_everything(0)
    if kind == "rl2":
        model = RL2(GRUPolicy(1, num_actions=3, hidden_size=8), ppo_epochs=2, ppo_minibatches=1, outer_lr=1e-2)
        family, trial = BernoulliBandits(3), 4
    else:
        model = MAMLPolicyGradient(GaussianMLPPolicy(2, 2, hidden_sizes=(8, 8)), cg_damping=0.1)
        family, trial = Navigation2D(horizon=6), 1
    data = EnvTaskDataModule(family, rollouts=2, episodes_per_trial=trial, meta_batch_size=4, episodes_per_epoch=20,
                             val_episodes=4)
    return model, data, 2 if kind == "rl2" else 1


@pytest.mark.parametrize("kind", ["maml_rl", "rl2"])
def test_meta_rl_resume_equals_uninterrupted(tmp_path, kind):
    """Stopped after 7 batches (mid-epoch) and resumed to 10: the same weights as 10 batches in one go
    (the tasks and their rollout noise come from their addresses, the optimizer state from the checkpoint)."""
    model, data, per_batch = fresh_rl(kind)
    quiet_trainer(max_steps=10 * per_batch, default_root_dir=tmp_path / "a").fit(model, data)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    model, data, _ = fresh_rl(kind)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7 * per_batch, filename="stop")
    quiet_trainer(max_steps=7 * per_batch, callbacks=[saver], enable_checkpointing=True,
                  default_root_dir=tmp_path / "b").fit(model, data)

    model, data, _ = fresh_rl(kind)
    torch.manual_seed(1234)
    resumed = quiet_trainer(max_steps=10 * per_batch, default_root_dir=tmp_path / "c")
    resumed.fit(model, data, ckpt_path=tmp_path / "ckpt" / "stop.ckpt")
    assert resumed.global_step == 10 * per_batch
    for name, value in uninterrupted.items():
        assert torch.equal(model.state_dict()[name], value), name
