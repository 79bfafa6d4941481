"""Subclass Baseline++ and change how each test task's head starts: imprinted from the support set.

    python examples/baseline_imprinted_head.py              # about a minute on 2 CPU cores
    python examples/baseline_imprinted_head.py --steps 20   # a quick look

Baseline++ (Chen et al. 2019) pre-trains a backbone with a cosine classifier on ordinary supervised
batches of all meta-training classes, then, per test task, trains a fresh cosine head on the frozen
support features.  ``fresh_head`` builds that head; here each class's weight starts at the mean of its
normalised support features ("weight imprinting", Qi et al. 2018), so the head is a nearest-prototype
classifier before the first fine-tuning step.  ``finetune_steps=0`` would test the imprinted head alone.
From the command line: ``python -m lightning_meta fit --config configs/baselinepp_miniimagenet_5w1s.yaml
--model.class_path baseline_imprinted_head.ImprintedBaselinePlusPlus``.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta import BaselinePlusPlus, NpzDataModule
from lightning_meta.models import Conv4

HANZI = "hanzi"  # the hanzi set shipped with the package (300 characters x 20 fonts); or any .npz path


class ImprintedBaselinePlusPlus(BaselinePlusPlus):
    """Baseline++ whose per-task head starts from the class means of the normalised support features."""

    def fresh_head(self, support: Tensor, support_y: Tensor, ways: int,
                   generator: torch.Generator) -> dict[str, Tensor]:
        features = F.normalize(support, dim=-1)                                          # [tasks, S, width]
        onehot = F.one_hot(support_y, ways).to(features)                                 # [tasks, S, ways]
        means = onehot.transpose(1, 2) @ features / onehot.sum(1).unsqueeze(-1)          # [tasks, ways, width]
        return {"weight": means.clone().requires_grad_()}


def main(steps: int, test_episodes: int = 200) -> dict[str, float]:
    pl.seed_everything(0)
    data = NpzDataModule(HANZI, train_batches="supervised", batch_size=32, ways=5, shots=1, queries=5,
                         meta_batch_size=20, val_episodes=min(20, test_episodes), test_episodes=test_episodes)
    data.setup("fit")
    model = ImprintedBaselinePlusPlus(Conv4(1, None, pooling="max", batch_norm_stats="running"),
                                      num_classes=data.num_train_classes)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False)
    trainer.fit(model, data)
    return trainer.test(model, data)[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="pre-training batches")
    main(parser.parse_args().steps)
