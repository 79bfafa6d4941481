"""Subclass MANN and swap its controller: a GRU cell instead of the paper's LSTM.

    python examples/mann_custom_controller.py             # a few minutes on 2 CPU cores
    python examples/mann_custom_controller.py --steps 20  # a quick look

Two hooks make the controller: ``build_controller(input_size, hidden_size)`` returns the module (once,
in ``__init__``) and ``controller_step(inputs, state)`` runs one step (``state`` is ``None`` at the
start of every stream).  Everything else (memory, label delay, streams, metrics) is MANN's.  From the
command line, once the class is importable: ``python -m lightning_meta fit --config
configs/mann_omniglot_5w.yaml --model.class_path mann_custom_controller.GRUMANN``.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn

from lightning_meta.algorithms.mann import MANN
from lightning_meta.data.npz import NpzDataModule
from lightning_meta.models.conv4 import Conv4

HANZI = "hanzi"  # the hanzi set shipped with the package (300 characters x 20 fonts); or any .npz path


class GRUMANN(MANN):
    """MANN whose controller is a GRU cell (its state is its output)."""

    def build_controller(self, input_size: int, hidden_size: int) -> nn.Module:
        return nn.GRUCell(input_size, hidden_size)

    def controller_step(self, inputs: Tensor, state: Any) -> tuple[Tensor, Any]:
        h = self.controller(inputs, state)
        return h, h


def main(steps: int, test_episodes: int = 200, meta_batch_size: int = 16) -> dict[str, float]:
    """Train ``steps`` meta-batches on hanzi streams of 5 classes x 4 instances; test on held-out classes."""
    pl.seed_everything(0)
    model = GRUMANN(ways=5, embedding=Conv4(1, None, hidden_channels=16, pooling="max", batch_norm_stats="running"),
                    controller_size=100, memory_slots=32, memory_width=20, read_heads=1, outer_lr=3e-3)
    data = NpzDataModule(HANZI, ways=5, shots=1, queries=3, rotations=(0, 90, 180, 270),
                         meta_batch_size=meta_batch_size, episodes_per_epoch=meta_batch_size * steps,
                         val_episodes=min(20, test_episodes), test_episodes=test_episodes)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, inference_mode=False)
    trainer.fit(model, data)
    return trainer.test(model, data)[0]   # test/acc, test/acc_inst1, test/acc_inst2, test/acc_inst3 (+ _ci95)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training meta-batches of 16 streams")
    main(parser.parse_args().steps)
