"""Standalone DDP check (run by the DDP tests in a subprocess; Lightning's "ddp" re-launches argv, which
under pytest would re-run the test session).

    python tests/ddp_check.py OUT.pt DEVICES BATCHING MODEL

trains 3 outer steps of the learner ``MODEL`` (a key of :data:`BUILDERS`) on CPU with gloo, meta-batch 4
(2 per process with ``DEVICES=2``), and writes rank 0's state, the number of gradient all-reduces (DDP
comm-hook calls), the steps taken and the final learning rate to OUT.pt.  Every learner here treats
the episodes of a meta-batch independently, so 2 processes must end where 1 process does.
"""

from __future__ import annotations

import sys
from typing import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from lightning_meta import (
    MAML,
    MANN,
    RL2,
    SNAIL,
    ClassImages,
    EnvTaskDataModule,
    EpisodicDataModule,
    MAMLPolicyGradient,
    MetaLearnerLSTM,
    SinusoidDataModule,
)
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.envs import BernoulliBandits, Navigation2D
from lightning_meta.models import MLP, Conv4, GaussianMLPPolicy, GRUPolicy

ALLREDUCES = [0]


def counting_allreduce(state, bucket):
    ALLREDUCES[0] += 1
    return default_hooks.allreduce_hook(state, bucket)


class CountAllReduces(pl.Callback):
    """Lightning registers DDP comm hooks on CUDA only; register ours on the CPU DDP model."""

    def on_train_start(self, trainer, pl_module):
        trainer.strategy.model.register_comm_hook(state=None, hook=counting_allreduce)


class RandomImages(EpisodicDataModule):
    def load_split(self, split):
        g = torch.Generator().manual_seed(["train", "val", "test"].index(split))
        return ClassImages.from_array(torch.randint(0, 256, (10, 6, 8, 8), generator=g, dtype=torch.uint8))


def sines(shots: int = 10, queries: int = 10) -> SinusoidDataModule:
    return SinusoidDataModule(shots=shots, queries=queries, meta_batch_size=4, episodes_per_epoch=12, val_episodes=4)


def images() -> RandomImages:
    return RandomImages(ways=3, shots=1, queries=2, meta_batch_size=4, episodes_per_epoch=12, val_episodes=4)


def conv(ways=3, **kwargs) -> Conv4:
    return Conv4(1, ways, hidden_channels=4, image_size=8, **kwargs)


def reptile(network, batching: str) -> Reptile:
    """Inner Adam on shuffled mini-batches, epsilon annealed linearly to 0."""
    return Reptile(network, inner_optimizer="adam", inner_lr=0.01, inner_steps=3, inner_batch_size=4,
                   outer_lr=0.5, outer_lr_final=0.0, batching=batching)


def navigation() -> EnvTaskDataModule:
    return EnvTaskDataModule(Navigation2D(horizon=8), rollouts=4, meta_batch_size=4, episodes_per_epoch=12,
                             val_episodes=4)


def maml_rl(outer: str, batching: str) -> MAMLPolicyGradient:
    """cg_damping 0.1: conjugate gradient on the nearly singular Fisher of a tiny policy (damping 1e-5)
    turns the last-bit difference between summing 4 tasks and averaging 2 + 2 into a 1e-3 different step
    (measured in float64: equal gradients and products to 1e-16, steps 4e-4 apart)."""
    return MAMLPolicyGradient(GaussianMLPPolicy(2, 2, hidden_sizes=(8, 8)), outer=outer, ppo_epochs=2,
                              batching=batching, cg_damping=0.1)


BUILDERS: dict[str, Callable[[str], tuple[pl.LightningModule, pl.LightningDataModule]]] = {
    "mlp": lambda b: (MAML(MLP(1, 1, (16, 16)), inner_lr=0.05, inner_steps=2, batching=b), sines()),
    "conv": lambda b: (MAML(conv(), inner_lr=0.4, inner_steps=2, batching=b), images()),
    "reptile-mlp": lambda b: (reptile(MLP(1, 1, (16, 16)), b), sines(5, 5)),
    "reptile-conv": lambda b: (reptile(conv(), b), images()),
    # the black-box learners (batching is theirs: loop); their embeddings' BatchNorm normalises per episode
    "snail": lambda b: (SNAIL(conv(None, batch_norm_stats="running"), ways=3, shots=1,
                              attention=[[4, 4], [8, 4]], tc_filters=[4]), images()),
    "mann": lambda b: (MANN(3, conv(None, batch_norm_stats="running"), controller_size=8, memory_slots=6,
                            memory_width=4, read_heads=2), images()),
    "metalstm": lambda b: (MetaLearnerLSTM(conv(), inner_steps=2), images()),
    # meta-RL: gradients from torch.autograd.grad, reduced by the learner (no DDP all-reduce hook)
    "maml_rl_trpo": lambda b: (maml_rl("trpo", b), navigation()),
    "maml_rl_ppo": lambda b: (maml_rl("ppo", b), navigation()),
    "rl2": lambda b: (RL2(GRUPolicy(1, num_actions=3, hidden_size=8), ppo_epochs=2, ppo_minibatches=2),
                      EnvTaskDataModule(BernoulliBandits(3), episodes_per_trial=5, rollouts=4, meta_batch_size=4,
                                        episodes_per_epoch=12, val_episodes=4)),
}


def main(out: str, devices: int, batching: str, model_kind: str) -> None:
    pl.seed_everything(0)
    model, data = BUILDERS[model_kind](batching)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False,
                         callbacks=[CountAllReduces()] if devices > 1 else [])
    trainer.fit(model, data)
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "initial": initial,
                    "allreduces": ALLREDUCES[0], "steps": trainer.global_step,
                    "lr": trainer.optimizers[0].param_groups[0]["lr"]}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
