"""Subclass Reptile and swap the inner-loop loss (label smoothing); compare the two evaluation protocols.

    python examples/reptile_label_smoothing.py              # about a minute on 2 CPU cores
    python examples/reptile_label_smoothing.py --steps 20   # a quick look

``inner_loss(predictions, targets)`` is the loss the inner loop descends (in meta-training and when
fine-tuning at evaluation); the outer update is Reptile's ``epsilon * mean(phi - theta)`` whatever it
is.  The test runs twice on the same fixed episodes: non-transductive (each query predicted with the
BatchNorm statistics of the support set and itself, the default) and transductive (all queries of an
episode in one batch); each result records which (``test/transductive``).  From the command line:
``python -m lightning_meta fit --config configs/reptile_omniglot_5w5s.yaml
--model.class_path reptile_label_smoothing.SmoothedReptile``.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor

from lightning_meta import NpzDataModule, Reptile
from lightning_meta.models import Conv4

HANZI = "hanzi"  # the hanzi set shipped with the package (300 characters x 20 fonts); or any .npz path


class SmoothedReptile(Reptile):
    """Reptile whose inner loop descends a label-smoothed cross-entropy (targets ``1 - s`` and ``s / ways``)."""

    def __init__(self, backbone, smoothing: float = 0.1, **kwargs):
        super().__init__(backbone, **kwargs)
        self.smoothing = smoothing

    def inner_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(predictions, targets, label_smoothing=self.smoothing)


def main(steps: int, test_episodes: int = 200) -> dict[str, float]:
    pl.seed_everything(0)
    model = SmoothedReptile(Conv4(1, 5, hidden_channels=32), inner_optimizer="sgd", inner_lr=0.3, inner_steps=10,
                            inner_batch_size=5, test_inner_steps=10, outer_lr=1.0, outer_lr_final=0.0)
    data = NpzDataModule(HANZI, ways=5, shots=1, queries=4, test_queries=5, rotations=(0, 90, 180, 270),
                         meta_batch_size=10, episodes_per_epoch=10 * steps, val_episodes=min(20, test_episodes),
                         test_episodes=test_episodes)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, inference_mode=False)
    trainer.fit(model, data)
    results = trainer.test(model, data)[0]
    model.transductive = True
    transductive = trainer.test(model, data)[0]
    results.update({f"{name}_transductive": value for name, value in transductive.items()})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="outer steps (meta-batches of 10 tasks)")
    main(parser.parse_args().steps)
