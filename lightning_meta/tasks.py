"""The episodic batch every meta-learner consumes.

A meta-batch of ``B`` tasks is one :class:`TaskBatch`, its tensors stacked along dim 0::

    support_x [B, N*K, ...]   support_y [B, N*K]      (classification: labels 0..N-1 per task)
    query_x   [B, N*Q, ...]   query_y   [B, N*Q]
                              support_y [B, K, D]     (regression: float targets)

``index`` holds each task's episode number, so evaluation results can be paired across
algorithms and written per episode.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_meta.envs.family import TaskFamily


class Task(NamedTuple):
    """One episode: a support set to adapt on and a query set to evaluate on."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


@dataclass
class TaskBatch:
    """``B`` tasks stacked along dim 0 (Lightning moves a dataclass of tensors to the device).

    Example::

        batch = TaskBatch.stack([task_a, task_b], index=[0, 1])
        batch.num_tasks        # 2
        batch[0]               # Task(support_x=..., ...)
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    index: Optional[Tensor] = None

    @classmethod
    def stack(cls, tasks: Sequence[Task], index: Optional[Sequence[int]] = None) -> "TaskBatch":
        columns = zip(*tasks)
        stacked = [torch.stack(column) for column in columns]
        ids = None if index is None else torch.as_tensor(list(index), dtype=torch.long)
        return cls(*stacked, index=ids)

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def is_regression(self) -> bool:
        """Float targets mean regression; integer labels mean classification."""
        return self.support_y.is_floating_point()

    @property
    def ways(self) -> int:
        """Classes per task (1 for regression)."""
        if self.is_regression:
            return 1
        return int(self.support_y.max().item()) + 1

    def __getitem__(self, i: int) -> Task:
        return Task(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i])

    def __iter__(self):
        return (self[i] for i in range(self.num_tasks))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y

    def split(self, size: int) -> list["TaskBatch"]:
        """Consecutive sub-batches of at most ``size`` tasks."""
        parts = [field_value.split(size) if field_value is not None else None
                 for field_value in (getattr(self, f.name) for f in fields(self))]
        count = len(parts[0])
        return [TaskBatch(*(p[i] if p is not None else None for p in parts)) for i in range(count)]


@dataclass
class PredictionBatch(TaskBatch):
    """A :class:`TaskBatch` of tasks to predict, with what a prediction writer needs to name its rows.

    ``query_y`` holds placeholders (zeros): the query labels are what is predicted.  Per task ``b``,
    ``class_names[b][c]`` names class ``c`` of the support set and ``query_files[b][m]`` names query
    ``m``.  ``python -m lightning_meta predict`` builds one (``B = 1``) from ``support_dir`` and
    ``query_dir``; see :mod:`lightning_meta.data.prediction`.
    """

    class_names: Optional[list[list[str]]] = None
    query_files: Optional[list[list[str]]] = None

    def split(self, size: int) -> list["TaskBatch"]:
        parts = TaskBatch(*self.tensors(), index=self.index).split(size)
        out = []
        for i, part in enumerate(parts):
            names = None if self.class_names is None else self.class_names[i * size:(i + 1) * size]
            files = None if self.query_files is None else self.query_files[i * size:(i + 1) * size]
            out.append(PredictionBatch(*part.tensors(), index=part.index, class_names=names, query_files=files))
        return out


@dataclass
class EnvTaskBatch:
    """``B`` reinforcement-learning tasks: no examples, only what the learner needs to collect its own.

    ``task`` holds the family's task parameters stacked along dim 0 (``{"goal": [B, 2]}`` for 2D
    navigation); ``key [B]`` seeds all the rollout noise of each task (actions, payoffs, transitions,
    PPO minibatches), so a task's rollouts do not depend on its batch, its process or a resume; ``index
    [B]`` is each task's number in its split (``-1``: padding of an evaluation batch).  ``family`` (the
    environment the tasks belong to), ``rollouts`` (trajectories or trials per task and inner step in
    this batch's split) and ``episodes_per_trial`` (RL²'s n) complete it, so that a learner evaluates a
    batch from the batch alone, as the supervised learners do: after ``load_from_checkpoint``, without a
    Trainer (the family is shared by the batch's tasks, not stacked; moving the batch to a device leaves
    it as it is).

    Example::

        batch = EnvTaskBatch(task={"goal": torch.zeros(2, 2)}, key=torch.tensor([7, 9]),
                             index=torch.tensor([0, 1]), family=Navigation2D(), rollouts=20)
        batch.num_tasks        # 2
    """

    task: dict[str, Tensor]
    key: Tensor
    index: Tensor
    family: TaskFamily
    rollouts: int
    episodes_per_trial: int = 1

    @property
    def num_tasks(self) -> int:
        return int(self.key.shape[0])
