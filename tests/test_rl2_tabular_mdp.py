"""RL² on random tabular MDPs (Duan et al. 2016, Sec. 3.2) learns to exploit what it saw (slow): 10 states,
5 actions, episodes of 10 steps, n = 10 episodes per trial; the mean total reward of a trial on 1,000
test MDPs is at least 20 above the uniformly random policy's expected return on the same MDPs (about 100;
paper RL² 156.2).

Measured (100 PPO iterations of 64 MDPs x 8 trials, GRU-64, discount 0.5): test return 124.2 ± 1.3 against
100.2 for the random policy (+24.0; init seeds 1 and 2: 125.7, 125.7), episode 1 of the trial 10.7 ± 0.2,
episode 10 13.0 ± 0.2; 106 s of CPU on one thread (125-205 s wall on a loaded 2-core machine).  With the
discount 0.99 or 0.9 over the 100-step trial nothing was learned in 300-500 iterations (100-101, ep1 =
ep10): the advantages' noise from later rewards hid the immediate ones; 0.5 and 0.3 learn.
"""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer

from lightning_meta import RL2, EnvTaskDataModule
from lightning_meta.envs import TabularMDPs
from lightning_meta.models import GRUPolicy

ITERATIONS = 100    # PPO iterations of 64 MDPs x 8 trials


def random_policy_return(transitions: torch.Tensor, reward_mean: torch.Tensor, horizon: int, episodes: int
                         ) -> torch.Tensor:
    """The exact expected total reward of a trial of the uniformly random policy, per MDP ``[B]``: each episode
    starts in state 0 (as :class:`~lightning_meta.envs.TabularMDPs`) and the state distribution is propagated
    through the action-averaged transitions."""
    step_reward, moves = reward_mean.double().mean(-1), transitions.double().mean(-2)  # [B, S], [B, S, S]
    occupancy = torch.zeros_like(step_reward)
    occupancy[:, 0] = 1
    total = torch.zeros(step_reward.shape[0], dtype=torch.float64)
    for _ in range(horizon):
        total += (occupancy * step_reward).sum(-1)
        occupancy = (occupancy.unsqueeze(-2) @ moves).squeeze(-2)
    return episodes * total


def test_random_policy_return_matches_simulation():
    family = TabularMDPs(states=3, actions=2, horizon=4)
    generator = torch.Generator().manual_seed(0)
    task = family.stack([family.sample_task(generator) for _ in range(2)])
    expected = random_policy_return(task["transitions"], task["reward_mean"], horizon=4, episodes=1)
    n = 200_000
    state, _ = family.reset(task, n, torch.rand(2, n, 2, generator=generator))
    total = torch.zeros(2, n, dtype=torch.float64)
    for _ in range(4):
        action = torch.randint(2, (2, n), generator=generator)
        state, _, reward, _ = family.step(task, state, action, torch.rand(2, n, 2, generator=generator))
        total += reward.double()
    assert torch.allclose(total.mean(-1), expected, atol=0.03), (total.mean(-1), expected)


@pytest.mark.slow
def test_rl2_beats_the_random_policy_on_tabular_mdps():
    pl.seed_everything(0)
    model = RL2(GRUPolicy(10, num_actions=5, hidden_size=64), outer_lr=1e-2, ppo_epochs=4, ppo_minibatches=2,
                value_coef=0.05, entropy_coef=0.01, gamma=0.5, gae_lambda=0.95, report_episodes=[1, 2, 10])
    data = EnvTaskDataModule(TabularMDPs(states=10, actions=5, horizon=10), rollouts=8, episodes_per_trial=10,
                             meta_batch_size=64, episodes_per_epoch=64 * ITERATIONS, val_episodes=4,
                             test_episodes=1000)
    start, cpu = time.perf_counter(), time.process_time()
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    trained = time.perf_counter() - start
    results = trainer.test(model, data, verbose=False)[0]
    data.setup("test")
    random = []
    for batch in data.test_dataloader():
        keep = batch.index >= 0
        random.append(random_policy_return(batch.task["transitions"][keep], batch.task["reward_mean"][keep],
                                           horizon=10, episodes=10))
    random = torch.cat(random)
    numbers = {k: round(v, 2) for k, v in results.items()} | {
        "random": round(float(random.mean()), 2), "test_mdps": random.numel(), "train_s": round(trained),
        "total_s": round(time.perf_counter() - start),
        "cpu_s": round(time.process_time() - cpu)}
    print(numbers)
    assert random.numel() == 1000, numbers
    assert results["test/return"] >= float(random.mean()) + 20, numbers
    assert results["test/return_ep10"] > results["test/return_ep1"] + 2 * results["test/return_ep1_ci95"], numbers
