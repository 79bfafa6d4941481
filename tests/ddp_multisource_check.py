"""Standalone DDP check of multi-source episodes (run by tests/test_multi_source.py in a subprocess).

    python tests/ddp_multisource_check.py OUT.pt DEVICES MODE

``MODE`` ``fixed``: MAML (loop) on 3-way 1-shot episodes from two sources, meta-batch 4 (2 per process
with ``DEVICES=2``), 3 outer steps.  ``variable``: ProtoNet on Meta-Dataset's variable-size episodes, one
per process and step: 2 processes (meta-batch 2) against 1 process (meta-batch 1) accumulating 2 batches
per update, which covers the same episodes ``2t, 2t + 1`` in update ``t``.  Both then validate per source.
Rank 0 writes the weights and the logged validation metrics to OUT.pt.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.protonet import PrototypicalNetwork
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.multi_source import MultiSourceDataModule
from lightning_meta.models import Conv4


class RandomImages(EpisodicDataModule):
    def __init__(self, offset: int = 0, classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.offset, self.classes = offset, classes

    def load_split(self, split):
        g = torch.Generator().manual_seed(self.offset + ["train", "val", "test"].index(split))
        return ClassImages.from_array(torch.randint(0, 256, (self.classes, 6, 8, 8), generator=g, dtype=torch.uint8))


def build(mode: str, devices: int):
    sources = [RandomImages(0, augment=["flip"]), RandomImages(10, classes=12)]
    if mode == "fixed":
        model = MAML(Conv4(1, 3, hidden_channels=4, image_size=8), inner_lr=0.4, inner_steps=2, batching="loop")
        data = MultiSourceDataModule(sources, names=["a", "b"], weights=[1.0, 2.0], ways=3, shots=1, queries=2,
                                     meta_batch_size=4, episodes_per_epoch=12, val_episodes=5)
        return model, data
    # no BatchNorm: running statistics would follow the episodes each process saw, and evaluation reads them
    embedding = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    model = PrototypicalNetwork(embedding, accumulate_grad_batches=2 // devices)
    data = MultiSourceDataModule(sources, names=["a", "b"], variable_episodes=True, max_ways=8, max_query=2,
                                 meta_batch_size=devices, episodes_per_epoch=12, val_episodes=5)
    return model, data


def main(out: str, devices: int, mode: str) -> None:
    pl.seed_everything(0)
    model, data = build(mode, devices)
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    # 3 steps of a 12- (6-) batch epoch: no validation during fit, then validate() with the same Trainer
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0)
    trainer.fit(model, data)
    metrics = trainer.validate(model, data, verbose=False)[0]
    if trainer.is_global_zero:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "metrics": {k: float(v) for k, v in metrics.items()}, "steps": trainer.global_step}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
