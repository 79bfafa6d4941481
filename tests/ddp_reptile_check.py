"""Standalone DDP check for Reptile (run by tests/test_reptile.py in a subprocess; Lightning's "ddp"
re-launches argv, which under pytest would re-run the test session).

    python tests/ddp_reptile_check.py OUT.pt DEVICES BATCHING MODEL

trains 3 outer steps of Reptile on CPU with gloo (inner Adam on shuffled mini-batches, epsilon
annealed linearly) and writes rank 0's parameters and the number of gradient all-reduces (DDP
comm-hook calls) to OUT.pt.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from ddp_check import ALLREDUCES, CountAllReduces, RandomImages

from lightning_meta import SinusoidDataModule
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.models import MLP, Conv4

def main(out: str, devices: int, batching: str, model_kind: str) -> None:
    pl.seed_everything(0)
    if model_kind == "mlp":
        data = SinusoidDataModule(shots=5, queries=5, meta_batch_size=4, episodes_per_epoch=12, val_episodes=4)
        model = Reptile(MLP(1, 1, (16, 16)), inner_optimizer="adam", inner_lr=0.01, inner_steps=3,
                        inner_batch_size=4, outer_lr=0.5, outer_lr_final=0.0, batching=batching)
    else:
        data = RandomImages(ways=3, shots=1, queries=2, meta_batch_size=4, episodes_per_epoch=12, val_episodes=4)
        model = Reptile(Conv4(1, 3, hidden_channels=4, image_size=8), inner_optimizer="adam", inner_lr=0.01,
                        inner_steps=3, inner_batch_size=4, outer_lr=0.5, outer_lr_final=0.0, batching=batching)
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False,
                         callbacks=[CountAllReduces()] if devices > 1 else [])
    trainer.fit(model, data)
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "allreduces": ALLREDUCES[0], "steps": trainer.global_step,
                    "lr": trainer.optimizers[0].param_groups[0]["lr"]}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
