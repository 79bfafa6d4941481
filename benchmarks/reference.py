"""The learn2learn side of the comparison: its standard MAML training loop, as its examples write it.

::

    maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
    for each task:  learner = maml.clone(); learner.adapt(support loss) x steps
                    (query loss / meta_batch).backward()
    optimizer.step()

Importing this module imports learn2learn (about 9 s), with its Gym deprecation banner swallowed.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Callable

import torch
from torch import Tensor, nn

from lightning_meta.tasks import TaskBatch

LossFn = Callable[[Tensor, Tensor], Tensor]


def _import_learn2learn():
    """``learn2learn``, imported with its Gym banner swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import learn2learn
    return learn2learn


l2l = _import_learn2learn()


class L2LMAML:
    """learn2learn's ``MAML`` wrapper around a deep copy of ``backbone`` and an Adam outer optimizer."""

    def __init__(self, backbone: nn.Module, inner_lr: float, inner_steps: int, first_order: bool, outer_lr: float,
                 loss_fn: LossFn):
        self.maml = l2l.algorithms.MAML(copy.deepcopy(backbone), lr=inner_lr, first_order=first_order)
        self.optimizer = torch.optim.Adam(self.maml.parameters(), lr=outer_lr)
        self.inner_steps = inner_steps
        self.loss_fn = loss_fn

    def task_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """One task: clone, adapt on the support set, the query loss of the adapted clone."""
        learner = self.maml.clone()
        for _ in range(self.inner_steps):
            learner.adapt(self.loss_fn(learner(support_x), support_y))
        return self.loss_fn(learner(query_x), query_y)

    def backward(self, batch: TaskBatch) -> None:
        """Accumulate the mean meta-gradient of ``batch`` into ``.grad``, one task's graph at a time."""
        for task in batch:
            (self.task_loss(*task) / batch.num_tasks).backward()

    def outer_step(self, batch: TaskBatch) -> None:
        """One meta-training step: zero, backward over the tasks, Adam."""
        self.optimizer.zero_grad()
        self.backward(batch)
        self.optimizer.step()

    def gradients(self) -> dict[str, Tensor]:
        """The current meta-gradient, keyed by the backbone's parameter names."""
        return {name: p.grad.detach().clone() for name, p in self.maml.module.named_parameters() if p.grad is not None}
