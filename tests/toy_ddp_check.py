"""Standalone DDP check of the two-optimizer toy GAN (run by tests/test_toy_learners.py in a subprocess:
Lightning's "ddp" re-launches argv, which under pytest would re-run the test session).

    python tests/toy_ddp_check.py OUT.pt DEVICES

trains :class:`toy_learners.ToyGAN` (accumulating 2 batches, a step scheduler per optimizer) for 8
Lightning steps (4 windows x 2 optimizers) on 16 seeds, 4 per step (2 per process with
``DEVICES=2``), on CPU with gloo, and writes rank 0's weights, ``global_step``, the learner's
``optimizer_steps`` and the final learning rates to OUT.pt.  Each seed's samples depend on the seed
only, so 2 processes must end where 1 process does.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from toy_learners import SeedData, ToyGAN


def main(out: str, devices: int) -> None:
    pl.seed_everything(0)
    torch.set_num_threads(1)
    model = ToyGAN(outer_lr=0.05, accumulate_grad_batches=2)
    # each backward reaches one of the two groups: DDP must look for the parameters it did not reach
    strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=True) if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=8, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, SeedData(batch_size=4 // devices, train_seeds=16))
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "global_step": trainer.global_step, "optimizer_steps": list(model.optimizer_steps),
                    "lrs": [o.param_groups[0]["lr"] for o in trainer.optimizers]}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
