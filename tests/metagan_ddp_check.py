"""Standalone DDP check of MetaGAN (run by tests/test_metagan.py in a subprocess; Lightning's "ddp" re-launches argv).

    python tests/metagan_ddp_check.py OUT.pt DEVICES

trains 3 batches (3 discriminator and 3 generator steps) of MetaGAN around MAML on CPU with gloo, meta-batch 4 (2
per process with ``DEVICES=2``), plain ``DDPStrategy`` (no ``find_unused_parameters``: MetaGAN averages its
gradients itself), and writes rank 0's state and the steps per optimizer to OUT.pt.  The episodes' noise is addressed by episode, so
2 processes must end where 1 process does.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from ddp_check import conv, images
from lightning_meta import MAML
from lightning_meta.algorithms.metagan import MetaGAN
from lightning_meta.models.generator import TaskConditionedGenerator


def main(out: str, devices: int) -> None:
    pl.seed_everything(0)
    model = MetaGAN(MAML(conv(), inner_lr=0.4, inner_steps=2),
                    TaskConditionedGenerator(1, 8, noise_dim=4, hidden_channels=4, encoder_channels=4))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=6, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.fit(model, images())
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "initial": initial,
                    "steps": list(model.optimizer_steps)}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
