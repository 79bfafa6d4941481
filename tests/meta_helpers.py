"""Helpers for tests that run the real Lightning training step and read the meta-gradient."""

from __future__ import annotations

from typing import Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.plugins import Precision
import torch
from torch.utils.data import DataLoader

from lightning_meta import metrics
from lightning_meta.tasks import TaskBatch


class GradientRecorder(pl.Callback):
    """Copies every parameter's ``.grad`` just before the first optimizer step (after unscaling)."""

    def __init__(self) -> None:
        self.grads: Optional[dict[str, torch.Tensor]] = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def quiet_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    inference_mode=False, accelerator="cpu", devices=1)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def meta_gradient(model: pl.LightningModule, batch: TaskBatch, precision: Union[str, Precision] = "64-true"
                  ) -> dict[str, torch.Tensor]:
    """The meta-gradient of one real ``training_step`` on ``batch`` (float64 by default).

    ``precision`` is a Trainer precision string or a precision plugin (e.g. fp16 on CPU, which must
    be passed explicitly: Lightning turns "16-mixed" into bf16 on CPU).
    """
    recorder = GradientRecorder()
    setting = {"plugins": [precision]} if isinstance(precision, Precision) else {"precision": precision}
    trainer = quiet_trainer(max_steps=1, callbacks=[recorder], limit_val_batches=0, **setting)
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    assert recorder.grads is not None
    return recorder.grads


def relative_difference(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert set(ours) == set(reference), (sorted(ours), sorted(reference))
    a = torch.cat([ours[k].double().flatten() for k in sorted(ours)])
    b = torch.cat([reference[k].double().flatten() for k in sorted(ours)])
    return ((a - b).norm() / b.norm()).item()


def random_classification_batch(tasks: int, ways: int, shots: int, queries: int, shape: tuple[int, ...],
                                seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return TaskBatch(
        support_x=torch.randn(tasks, ways * shots, *shape, generator=g),
        support_y=labels.repeat_interleave(shots).repeat(tasks, 1),
        query_x=torch.randn(tasks, ways * queries, *shape, generator=g),
        query_y=labels.repeat_interleave(queries).repeat(tasks, 1),
        index=torch.arange(tasks),
    )


def pixel_prototype_accuracy(data: pl.LightningDataModule) -> torch.Tensor:
    """Per-episode accuracy of nearest class mean on raw pixels, on the data module's fixed test episodes."""
    return metrics.pixel_prototype_accuracy(data.test_dataloader())


def episode_alone_and_among_others(model: pl.LightningModule, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation predictions ``[B, M, C]`` of two 4-episode batches whose episode 2 is the same and
    whose other episodes differ (5-way 1-shot, 3 queries)."""
    first = random_classification_batch(4, 5, 1, 3, shape, seed=1)
    mixed = random_classification_batch(4, 5, 1, 3, shape, seed=2)
    for field in ("support_x", "support_y", "query_x", "query_y"):
        getattr(mixed, field)[2] = getattr(first, field)[2]
    return model.evaluate_batch(first)[0], model.evaluate_batch(mixed)[0]
