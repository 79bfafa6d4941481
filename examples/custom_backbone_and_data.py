"""Plug your own backbone and your own classes into ANIL (or any meta-learner).

    python examples/custom_backbone_and_data.py             # a couple of minutes on 2 CPU cores
    python examples/custom_backbone_and_data.py --steps 20  # a quick look

* the backbone: any ``lightning_meta.models.Backbone`` (``features`` then ``head``); ANIL adapts the
  head only, on features computed once per task;
* the data: an ``EpisodicDataModule`` whose ``load_split`` returns a ``ClassImages`` built from your
  own uint8 arrays (here the hanzi characters shipped for the tests, 300 classes x 20 fonts).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_meta import ANIL, ClassImages, EpisodicDataModule
from lightning_meta.data import bundled_path
from lightning_meta.models import Backbone

HANZI = bundled_path("hanzi")  # the hanzi set shipped with the package: 300 characters x 20 fonts


class SmallConvNet(Backbone):
    """Three conv blocks with max-pooling, then a linear head."""

    def __init__(self, ways: int = 5, width: int = 32):
        super().__init__()
        blocks = []
        for i in range(3):
            blocks += [nn.Conv2d(1 if i == 0 else width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Linear(width * 3 * 3, ways)


class MyCharacters(EpisodicDataModule):
    """Classes 0-199 for meta-training, 200-239 for validation, 240-299 for test."""

    def __init__(self, path: str = str(HANZI), **kwargs):
        super().__init__(**kwargs)
        self.path = path

    def load_split(self, split: str) -> ClassImages:
        classes = {"train": slice(0, 200), "val": slice(200, 240), "test": slice(240, 300)}[split]
        return ClassImages.from_array(torch.from_numpy(np.load(self.path)["X"][classes]))


def main(steps: int, test_episodes: int = 200) -> dict[str, float]:
    pl.seed_everything(0)
    model = ANIL(SmallConvNet(ways=5), inner_lr=0.5, inner_steps=5, outer_lr=2e-3)
    data = MyCharacters(ways=5, shots=1, queries=5, meta_batch_size=8, episodes_per_epoch=8 * steps,
                        val_episodes=min(40, test_episodes), test_episodes=test_episodes)
    trainer = pl.Trainer(max_epochs=1, inference_mode=False, logger=False, enable_checkpointing=False)
    trainer.fit(model, data)
    return trainer.test(model, data)[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="outer steps")
    main(parser.parse_args().steps)
