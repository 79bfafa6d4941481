"""Subclass SNAIL and change what one element of the sequence is: a learned label code instead of one-hot.

    python examples/snail_learned_label_code.py             # ~4 minutes on 2 CPU cores
    python examples/snail_learned_label_code.py --steps 20  # a quick look

SNAIL reads ``[embedding, one_hot(label)]`` per support example and ``[embedding, 0]`` for the query
(:meth:`SNAIL.sequence_inputs`).  Here each label -- and "no label", the query's -- is a trained
vector of the same width, so the sequence model and everything around it (shuffled support prefix,
each query appended alone, causal blocks, metrics) stay SNAIL's.  The embedding is swapped the usual
way, through the ``embedding`` argument.  From the command line, once the class is importable:
``python -m lightning_meta fit --config configs/snail_omniglot_5w1s.yaml --model.class_path
snail_learned_label_code.LabelCodeSNAIL``.
"""

from __future__ import annotations

import argparse
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_meta import SNAIL, NpzDataModule
from lightning_meta.models import Conv4

HANZI = "hanzi"  # the hanzi set shipped with the package (300 characters x 20 fonts); or any .npz path


class LabelCodeSNAIL(SNAIL):
    """SNAIL whose label input is a learned code per class, plus one for "unlabelled" (the query)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_codes = nn.Embedding(self.ways + 1, self.ways)  # row ``ways``: no label

    def sequence_inputs(self, features: Tensor, labels: Optional[Tensor]) -> Tensor:
        features = features.flatten(1)
        if labels is None:
            labels = torch.full((features.shape[0],), self.ways, dtype=torch.long, device=features.device)
        return torch.cat([features, self.label_codes(labels).to(features.dtype)], 1)


def main(steps: int, test_episodes: int = 200, meta_batch_size: int = 16) -> dict[str, float]:
    """Train ``steps`` meta-batches of 5-way 1-shot hanzi episodes; test on held-out classes."""
    pl.seed_everything(0)
    embedding = Conv4(1, None, hidden_channels=32, pooling="max", batch_norm_stats="running")
    model = LabelCodeSNAIL(embedding, ways=5, shots=1, attention=[[32, 16], [64, 32], [128, 64]],
                           tc_filters=[64, 64], outer_lr=3e-3)
    data = NpzDataModule(HANZI, ways=5, shots=1, queries=5, rotations=(0, 90, 180, 270),
                         meta_batch_size=meta_batch_size, episodes_per_epoch=meta_batch_size * steps,
                         val_episodes=min(20, test_episodes), test_episodes=test_episodes)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, inference_mode=False)
    trainer.fit(model, data)
    return trainer.test(model, data)[0]   # test/acc, test/acc_ci95


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450, help="training meta-batches of 16 episodes")
    main(parser.parse_args().steps)
