"""Standalone DDP check for domain-adversarial training (run by tests/test_domain_adversarial.py in a
subprocess; Lightning's "ddp" re-launches argv, which under pytest would re-run the test session).

    python tests/ddp_dann_check.py OUT_PREFIX LAMBDA_MAX [DEVICES [EXTRACTOR]]

trains 3 steps on DEVICES CPU processes (default 2, with gloo) and writes each rank's parameters (not
buffers: BatchNorm's running statistics are per rank), gradient all-reduce count and test metrics to
OUT_PREFIX.<rank>.pt.  EXTRACTOR is ``conv`` (Conv4 with BatchNorm, the default) or ``mlp`` (no
BatchNorm, whose training statistics would follow each rank's share of a step: with it, 2 processes
must end where 1 process does).  The test set has 5 held-out pairs, so a second rank pads its last
batch.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from ddp_check import ALLREDUCES, CountAllReduces

from lightning_meta import DomainAdversarial, DomainPairDataModule
from lightning_meta.models import Conv4

HANZI = "hanzi"  # the bundled set (lightning_meta.data.bundled)


def extractor(kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU())
    return Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running")


def main(prefix: str, lambda_max: float, devices: int = 2, kind: str = "conv") -> None:
    pl.seed_everything(0)
    data = DomainPairDataModule(HANZI, classes=5, batch_size=4, steps_per_epoch=3, val_samples=1, test_samples=1,
                                eval_batch_size=2)
    model = DomainAdversarial(extractor(kind), num_classes=5, lambda_max=lambda_max, input_shape=(1, 28, 28))
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[CountAllReduces()] if devices > 1 else [])
    trainer.fit(model, data)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    metrics = trainer.test(model, data, verbose=False)[0]
    torch.save({"params": params, "allreduces": ALLREDUCES[0], "steps": trainer.global_step, "test": metrics},
               f"{prefix}.{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *(int(a) if a.isdigit() else a for a in sys.argv[3:]))
