"""Write the small checkpoints of tests/test_learner_contract.py (a checkpoint from before the root class loads).

Run once with the code of commit e898822 (before the ``Learner`` root class, issue 15), which is how
``tests/data/pre_change_*.ckpt`` were made::

    git worktree add /tmp/pre e898822
    PYTHONPATH=/tmp/pre .venv/bin/python tests/data/make_pre_change_checkpoints.py tests/data

For each learner it trains 3 outer steps, saves the checkpoint and, beside it (``*.expected.pt``), a
fixed task and the predictions the learner made for it then: MAML (MLP on sinusoids) the adapted
query outputs of ``evaluate_task``, ProtoNet (a 4-channel Conv4 on the bundled hanzi set) the class
probabilities of ``predict_task``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

import lightning_meta
from lightning_meta import MAML, NpzDataModule, PrototypicalNetwork, SinusoidDataModule
from lightning_meta.models import MLP, Conv4


def sinusoids() -> SinusoidDataModule:
    return SinusoidDataModule(shots=5, queries=5, meta_batch_size=2, episodes_per_epoch=8, val_episodes=2,
                              test_episodes=2)


def hanzi() -> NpzDataModule:
    return NpzDataModule(path="hanzi", ways=3, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=8,
                         val_episodes=2, test_episodes=2)


def maml() -> MAML:
    return MAML(MLP(1, 1, (8, 8)), inner_lr=0.05, inner_steps=1, test_inner_steps=3, outer_lr=0.01)


def protonet() -> PrototypicalNetwork:
    return PrototypicalNetwork(Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running"),
                               outer_lr=0.01)


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                      limit_val_batches=0, **kwargs)


def make(name: str, model: pl.LightningModule, data: pl.LightningDataModule, folder: Path) -> None:
    pl.seed_everything(0)
    fit = trainer(max_steps=3)
    fit.fit(model, data)
    fit.save_checkpoint(folder / f"pre_change_{name}.ckpt")
    data.setup("test")
    task = next(iter(data.test_dataloader()))[0]
    model.eval()
    if name == "maml":
        with torch.enable_grad():
            predictions = model.evaluate_task(task.support_x, task.support_y, task.query_x, task.query_y)[0]
    else:
        predictions = model.predict_task(task.support_x, task.support_y, task.query_x)
    torch.save({"support_x": task.support_x, "support_y": task.support_y, "query_x": task.query_x,
                "query_y": task.query_y, "predictions": predictions.detach(), "global_step": fit.global_step},
               folder / f"pre_change_{name}.expected.pt")


def main(folder: str) -> None:
    print("lightning_meta from", lightning_meta.__file__)
    torch.set_num_threads(1)
    make("maml", maml(), sinusoids(), Path(folder))
    make("protonet", protonet(), hanzi(), Path(folder))


if __name__ == "__main__":
    main(sys.argv[1])
