"""Subclass the Meta-Learner LSTM to watch its learned update rule: the mean forget and input gates per step.

    python examples/metalstm_inspect_gates.py             # about a minute on 2 CPU cores
    python examples/metalstm_inspect_gates.py --steps 20  # a quick look

The forget gate ``f`` scales the learner's weights before each update (1: keep them) and the input gate
``i`` is the learning rate of each coordinate (``c_t = f * c_{t-1} - i * grad``).  The paper (Fig. 2)
found input gates that vary per step and coordinate and forget gates near 1.  ``on_inner_step`` is the
hook: it is called after every update with the support loss and the LSTM state (its ``forget`` and
``input`` fields hold the gate of every coordinate).  Swapping the input encoding is one more method,
e.g. ``def preprocess(self, x): return torch.stack([x.sign(), x.abs().log1p()], -1)``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_meta.algorithms.meta_lstm import MetaLearnerLSTM
from lightning_meta.data import NpzDataModule
from lightning_meta.models import Conv4
from lightning_meta.models.meta_lstm_cell import MetaLSTMState

HANZI = "hanzi"  # the hanzi set shipped with the package (300 characters x 20 fonts); or any .npz path


class GateLoggingMetaLSTM(MetaLearnerLSTM):
    """Logs ``gates/forget_step{t}``, ``gates/input_step{t}`` (means over coordinates) while training and
    keeps their per-step means over the test episodes in ``test_gates``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.test_gates: dict[int, list[tuple[float, float]]] = defaultdict(list)

    def on_inner_step(self, step: int, loss: Tensor, state: MetaLSTMState) -> None:
        forget, input_gate = state.forget.detach().mean(), state.input.detach().mean()
        if self.training and self._trainer is not None:
            self.log(f"gates/forget_step{step}", forget, on_step=True, batch_size=1)
            self.log(f"gates/input_step{step}", input_gate, on_step=True, batch_size=1)
        elif self._trainer is not None and self.trainer.testing:
            self.test_gates[step].append((forget.item(), input_gate.item()))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.test_gates.clear()


def main(steps: int, test_episodes: int = 200) -> dict[str, float]:
    pl.seed_everything(0)
    model = GateLoggingMetaLSTM(Conv4(1, 5, hidden_channels=16, pooling="max"), inner_steps=3, inner_lr=0.3,
                                outer_lr=5e-3)
    data = NpzDataModule(HANZI, ways=5, shots=1, queries=2, test_queries=5, rotations=(0, 90, 180, 270),
                         meta_batch_size=1, episodes_per_epoch=steps, val_episodes=min(20, test_episodes),
                         test_episodes=test_episodes)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, inference_mode=False)
    trainer.fit(model, data)
    results = trainer.test(model, data)[0]
    for step, values in sorted(model.test_gates.items()):
        forget = sum(v[0] for v in values) / len(values)
        input_gate = sum(v[1] for v in values) / len(values)
        print(f"test update {step}: mean forget gate {forget:.4f}, mean input gate {input_gate:.4f}")
        results[f"test/forget_step{step}"] = forget
        results[f"test/input_step{step}"] = input_gate
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training episodes")
    main(parser.parse_args().steps)
