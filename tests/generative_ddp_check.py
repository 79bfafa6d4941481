"""Standalone DDP check of the generative learners (run by tests/test_metagan.py and tests/test_figr.py in
subprocesses; Lightning's "ddp" re-launches argv).

    python tests/generative_ddp_check.py KIND OUT.pt DEVICES

``KIND`` ``metagan``: 3 batches (3 discriminator and 3 generator steps) of MetaGAN around MAML, meta-batch 4 (2 per
process with ``DEVICES=2``), plain ``DDPStrategy`` (no ``find_unused_parameters``: MetaGAN averages its gradients
itself).  ``figr``: 3 Reptile steps of FIGR's two networks over 4 one-class tasks per batch (DDP's reducer averages
the surrogate's gradients).  CPU and gloo; rank 0 writes its state and the steps per optimizer to OUT.pt.  The noise
of both is addressed by episode, so 2 processes must end where 1 process does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from ddp_check import conv, images
from lightning_meta import FIGR, MAML
from lightning_meta.algorithms.metagan import MetaGAN
from lightning_meta.models.figr_nets import DCGANDiscriminator, DCGANGenerator
from lightning_meta.models.generator import TaskConditionedGenerator
from toy_learners import RandomImages

REPO = Path(__file__).resolve().parent.parent


def build(kind: str) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    if kind == "metagan":
        model = MetaGAN(MAML(conv(), inner_lr=0.4, inner_steps=2),
                        TaskConditionedGenerator(1, 8, noise_dim=4, hidden_channels=4, encoder_channels=4))
        return model, images()
    model = FIGR(DCGANGenerator(4, 1, 8, 2, 1), DCGANDiscriminator(1, 8, 2, 1), inner_steps=3, inner_lr=0.05)
    return model, RandomImages(ways=1, shots=4, queries=0, test_ways=2, test_shots=2, test_queries=2,
                               meta_batch_size=4, episodes_per_epoch=12, val_episodes=4)


def main(kind: str, out: str, devices: int) -> None:
    pl.seed_everything(0)
    model, data = build(kind)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=6, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.fit(model, data)
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "initial": initial,
                    "steps": list(model.optimizer_steps)}, out)


def one_and_two_processes(kind: str, folder: Path) -> tuple[dict, dict]:
    """What ``main`` writes with 1 and with 2 processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = []
    for devices in (1, 2):
        out = folder / f"{kind}_{devices}.pt"
        run = subprocess.run([sys.executable, __file__, kind, str(out), str(devices)], capture_output=True, text=True,
                             timeout=240, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        results.append(torch.load(out))
    return results[0], results[1]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
