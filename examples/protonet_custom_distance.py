"""Subclass a Prototypical network and swap the distance: a learned diagonal Mahalanobis metric.

    python examples/protonet_custom_distance.py             # about a minute on 2 CPU cores
    python examples/protonet_custom_distance.py --steps 20  # a quick look

``distance_logits(query_features, prototypes)`` is the one hook to override (``prototypes`` changes
how a class is summarised).  From the command line, once the class is importable:
``python -m lightning_meta fit --config configs/protonet_omniglot_5w1s.yaml
--model.class_path protonet_custom_distance.MahalanobisProtoNet``.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_meta import NpzDataModule, PrototypicalNetwork
from lightning_meta.models import Conv4

HANZI = "hanzi"  # the hanzi set shipped with the package (300 characters x 20 fonts); or any .npz path


class MahalanobisProtoNet(PrototypicalNetwork):
    """ProtoNet whose squared distance weighs each embedding dimension by a learned positive scale."""

    def __init__(self, embedding: nn.Module, features: int = 64, **kwargs):
        super().__init__(embedding, **kwargs)
        self.log_scale = nn.Parameter(torch.zeros(features))

    def distance_logits(self, query_features: Tensor, prototypes: Tensor) -> Tensor:
        difference = query_features.flatten(1).unsqueeze(1) - prototypes.unsqueeze(0)
        return -(difference.pow(2) * self.log_scale.exp()).sum(-1)


def main(steps: int, test_episodes: int = 200) -> dict[str, float]:
    pl.seed_everything(0)
    model = MahalanobisProtoNet(Conv4(1, None, pooling="max", batch_norm_stats="running"))
    data = NpzDataModule(HANZI, ways=20, test_ways=5, shots=1, queries=5, rotations=(0, 90, 180, 270),
                         meta_batch_size=1, episodes_per_epoch=steps, val_episodes=min(20, test_episodes),
                         test_episodes=test_episodes)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(model, data)
    return trainer.test(model, data)[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training episodes")
    main(parser.parse_args().steps)
