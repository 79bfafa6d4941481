"""RL² on k=5, n=10 Bernoulli bandits learns what Duan et al. (2016) report (slow): at least 6.4 over 1,000
test bandits (random 5.0, Thompson sampling 5.85, tuned UCB1 6.67: ``lightning_meta.envs.bandit_baselines``;
paper: UCB1 and RL² 6.7)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from meta_helpers import quiet_trainer

from lightning_meta import RL2, EnvTaskDataModule
from lightning_meta.envs import BernoulliBandits
from lightning_meta.models import GRUPolicy


@pytest.mark.slow
def test_rl2_beats_thompson_sampling_on_bandits():
    pl.seed_everything(0)
    model = RL2(GRUPolicy(1, num_actions=5, hidden_size=64), outer_lr=3e-3, ppo_epochs=8, ppo_minibatches=2,
                entropy_coef=0.0, gae_lambda=0.3, report_episodes=[1, 2, 10])
    data = EnvTaskDataModule(BernoulliBandits(5), rollouts=8, episodes_per_trial=10, meta_batch_size=64,
                             episodes_per_epoch=64 * 300, val_episodes=4, test_episodes=1000)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    results = trainer.test(model, data, verbose=False)[0]
    assert results["test/return"] >= 6.4, results
    assert results["test/return_ep10"] > results["test/return_ep1"] + 2 * results["test/return_ep1_ci95"], results
