"""``EnvTaskDataModule``: meta-RL tasks drawn from a batched task family, the learner collecting their data.

An item is one task: its parameters (``family.sample_task``) and a ``key`` that seeds all its rollout
noise, both drawn from the item's address (:func:`~lightning_meta.data.root.item_generator`), so a task
is the same whatever the batch, the number of processes or a resume.  What is collected per task (the
rollouts of an inner step, of a test, the episodes of an RL² trial) are settings of the data, carried
by every batch with the family, so a learner evaluates a batch from the batch alone.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import torch
from pytorch_lightning.cli import instantiate_class

from lightning_meta.data.root import ItemLoader, ItemStream, TaskDataModule, item_generator
from lightning_meta.envs.family import TaskFamily
from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_positive
from lightning_meta.tasks import EnvTaskBatch

#: keys are drawn below this bound (int64, and ``key * 1_000_003 + phase`` stays exact)
KEY_BOUND = 2**40


class EnvTaskStream(ItemStream):
    """The task batches of one split: each task from its own address (padding ``-1`` draws task 0), with
    the family and the split's collection sizes (:class:`~lightning_meta.tasks.EnvTaskBatch`)."""

    def __init__(self, family: TaskFamily, plan: Sequence[Sequence[int]], seed: int, split: str,
                 epoch: int | None = None, rollouts: int = 20, episodes_per_trial: int = 1):
        super().__init__(plan, epoch)
        self.family, self.seed, self.split = family, seed, split
        self.rollouts, self.episodes_per_trial = rollouts, episodes_per_trial

    def batch(self, position: int) -> EnvTaskBatch:
        index = self.plan[position]
        tasks, keys = [], []
        for i in index:
            generator = item_generator(self.seed, self.split, max(i, 0), self.epoch)
            tasks.append(self.family.sample_task(generator))
            keys.append(int(torch.randint(KEY_BOUND, (), generator=generator)))
        return EnvTaskBatch(self.family.stack(tasks), torch.tensor(keys), torch.tensor(index, dtype=torch.long),
                            self.family, self.rollouts, self.episodes_per_trial)


class EnvTaskDataModule(TaskDataModule):
    """Tasks of a batched family for the meta-RL learners (:class:`~lightning_meta.MAMLPolicyGradient`,
    :class:`~lightning_meta.RL2`).

    Args:
        family: the task family, e.g. ``Navigation2D()`` (a ``{"class_path", "init_args"}`` in a config or a
            checkpoint).
        rollouts: trajectories per task and inner step in training and validation (20 in the MAML paper).
        test_rollouts: trajectories per task and inner step at test (40 in the paper); default ``rollouts``.
        episodes_per_trial: episodes of one RL² trial (the hidden state lives across them); 1 for MAML.
        meta_batch_size: tasks per training step, summed over processes.
        episodes_per_epoch: training tasks per epoch (``episodes_per_epoch / meta_batch_size`` steps).
        val_episodes / test_episodes: the fixed validation and test tasks.
        seed: the seed every task and key is drawn from.

    Example::

        data = EnvTaskDataModule(Navigation2D(), rollouts=20, meta_batch_size=20, episodes_per_epoch=400)
        trainer.fit(MAMLPolicyGradient(), data)
    """

    def __init__(self, family: Union[TaskFamily, Mapping[str, Any]], rollouts: int = 20,
                 test_rollouts: int | None = None, episodes_per_trial: int = 1, meta_batch_size: int = 20,
                 episodes_per_epoch: int = 400, val_episodes: int = 40, test_episodes: int = 40, seed: int = 0):
        super().__init__(seed=seed)
        if isinstance(family, Mapping) and "class_path" in family:  # as a checkpoint names it (TaskFamily.spec)
            family = instantiate_class((), dict(family))
        if not isinstance(family, TaskFamily):
            raise ConfigurationError(
                f"{DATA_ARGS}family={family!r} is not a task family: give one of lightning_meta.envs (e.g."
                " {class_path: lightning_meta.envs.Navigation2D}) or a TaskFamily subclass")
        self.hparams["family"] = family.spec()  # checkpoints hold primitives only
        test_rollouts = rollouts if test_rollouts is None else test_rollouts
        for name, value in (("rollouts", rollouts), ("test_rollouts", test_rollouts),
                            ("episodes_per_trial", episodes_per_trial), ("meta_batch_size", meta_batch_size),
                            ("episodes_per_epoch", episodes_per_epoch), ("val_episodes", val_episodes),
                            ("test_episodes", test_episodes)):
            require_positive(DATA_ARGS + name, value)
        if episodes_per_epoch < meta_batch_size:
            raise ConfigurationError(
                f"{DATA_ARGS}episodes_per_epoch={episodes_per_epoch} is smaller than {DATA_ARGS}meta_batch_size="
                f"{meta_batch_size}: an epoch would hold no training step; raise episodes_per_epoch")
        self.family = family
        self.rollouts, self.test_rollouts, self.episodes_per_trial = rollouts, test_rollouts, episodes_per_trial
        self.meta_batch_size, self.episodes_per_epoch = meta_batch_size, episodes_per_epoch
        self.val_episodes, self.test_episodes = val_episodes, test_episodes

    @property
    def steps_per_epoch(self) -> int:
        return self.episodes_per_epoch // self.meta_batch_size

    def rollouts_for(self, stage: str) -> int:
        """Trajectories per task and inner step in ``stage`` (``"train"``, ``"val"`` or ``"test"``)."""
        return self.test_rollouts if stage == "test" else self.rollouts

    def stream(self, split: str, plan: Sequence[Sequence[int]], epoch: int | None = None) -> EnvTaskStream:
        """The batches of ``split`` (``"train"``, ``"val"`` or ``"test"``) that ``plan`` lists."""
        return EnvTaskStream(self.family, plan, self.seed, split, epoch, self.rollouts_for(split),
                             self.episodes_per_trial)

    def train_dataloader(self) -> ItemLoader:
        return self.loader(self.stream("train", self.training_plan(self.steps_per_epoch), epoch=0), training=True)

    def val_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("val", self.val_episodes)

    def test_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("test", self.test_episodes)

    def evaluation_loader(self, split: str, tasks: int) -> ItemLoader:
        plan = self.evaluation_plan(tasks, self.items_per_rank())
        return self.loader(self.stream(split, plan))
