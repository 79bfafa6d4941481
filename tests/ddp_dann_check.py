"""Standalone DDP check for domain-adversarial training (run by tests/test_domain_adversarial.py in a
subprocess; Lightning's "ddp" re-launches argv, which under pytest would re-run the test session).

    python tests/ddp_dann_check.py OUT_PREFIX LAMBDA_MAX

trains 3 steps on 2 CPU processes with gloo and writes each rank's parameters (not buffers: BatchNorm's
running statistics are per rank) and gradient
all-reduce count to OUT_PREFIX.<rank>.pt.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from ddp_check import ALLREDUCES, CountAllReduces

from lightning_meta import DomainAdversarial, DomainPairDataModule
from lightning_meta.models import Conv4

HANZI = "hanzi"  # the bundled set (lightning_meta.data.bundled)


def main(prefix: str, lambda_max: float) -> None:
    pl.seed_everything(0)
    data = DomainPairDataModule(HANZI, classes=6, batch_size=4, steps_per_epoch=3, val_samples=1, test_samples=1)
    model = DomainAdversarial(Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running"),
                              num_classes=6, lambda_max=lambda_max)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                         max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[CountAllReduces()])
    trainer.fit(model, data)
    torch.save({"params": {k: v.detach().clone() for k, v in model.named_parameters()},
                "allreduces": ALLREDUCES[0], "steps": trainer.global_step}, f"{prefix}.{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
