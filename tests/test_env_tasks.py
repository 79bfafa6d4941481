"""``EnvTaskDataModule``: meta-RL tasks that are pure functions of their address, split across processes."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.data.env_tasks import EnvTaskDataModule
from lightning_meta.data.root import train_plan
from lightning_meta.envs.family import TaskFamily
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import EnvTaskBatch


class Point1D(TaskFamily):
    """A goal on a line: enough family to test the data module."""

    observation_size, action_size = 1, 1

    def __init__(self, horizon: int = 5, width: float = 1.0):
        self.horizon, self.width = horizon, width

    def sample_task(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"goal": (torch.rand(1, generator=generator, dtype=torch.float64) - 0.5) * self.width}


def tasks_of(data: EnvTaskDataModule, split: str, plan, epoch=None) -> dict[int, tuple[float, int]]:
    stream = data.stream(split, plan, epoch)
    out = {}
    for batch in stream:
        assert isinstance(batch, EnvTaskBatch) and batch.task["goal"].shape == (len(batch.index), 1)
        for i, index in enumerate(batch.index.tolist()):
            out[index] = (float(batch.task["goal"][i]), int(batch.key[i]))
    return out


def test_a_task_and_its_key_are_a_function_of_the_address_only():
    data = EnvTaskDataModule(Point1D(), meta_batch_size=4, episodes_per_epoch=16, seed=3)
    one = tasks_of(data, "train", train_plan(4, 4, 0, 1), epoch=0)
    halves = (tasks_of(data, "train", train_plan(4, 4, 0, 2), epoch=0)
              | tasks_of(data, "train", train_plan(4, 4, 1, 2), epoch=0))
    assert one == halves and sorted(one) == list(range(16))
    assert len({key for _, key in one.values()}) == 16  # every task its own noise
    other_epoch = tasks_of(data, "train", train_plan(4, 4, 0, 1), epoch=1)
    assert all(other_epoch[i] != one[i] for i in one)
    assert tasks_of(data, "val", [[0, 1]]) != tasks_of(data, "test", [[0, 1]])
    reseeded = EnvTaskDataModule(Point1D(), meta_batch_size=4, episodes_per_epoch=16, seed=4)
    assert tasks_of(reseeded, "val", [[0, 1]]) != tasks_of(data, "val", [[0, 1]])


def test_evaluation_sets_are_fixed_and_padded(tmp_path):
    data = EnvTaskDataModule(Point1D(), meta_batch_size=4, val_episodes=6, test_episodes=5)
    batches = list(data.test_dataloader())
    assert [b.index.tolist() for b in batches] == [[0, 1, 2, 3], [4]]
    assert [b.index.tolist() for b in data.val_dataloader()] == [[0, 1, 2, 3], [4, 5]]
    again = list(data.test_dataloader())
    assert all(torch.equal(a.key, b.key) and torch.equal(a.task["goal"], b.task["goal"])
               for a, b in zip(batches, again))


def test_the_checkpoint_names_the_family_with_primitives():
    data = EnvTaskDataModule(Point1D(horizon=7, width=2.0), rollouts=3)
    assert data.hparams["family"] == {"class_path": "test_env_tasks.Point1D", "init_args": {"horizon": 7, "width": 2.0}}
    assert data.rollouts_for("train") == data.rollouts_for("test") == 3
    assert EnvTaskDataModule(Point1D(), rollouts=3, test_rollouts=5).rollouts_for("test") == 5


def test_every_batch_carries_its_family_and_its_split_s_collection_sizes():
    """A learner evaluates a batch from the batch alone (no Trainer, no data module)."""
    data = EnvTaskDataModule(Point1D(), rollouts=3, test_rollouts=5, episodes_per_trial=2, meta_batch_size=2,
                             episodes_per_epoch=4, val_episodes=2, test_episodes=2)
    data.setup("fit")
    sizes = {split: {(b.family is data.family, b.rollouts, b.episodes_per_trial) for b in loader()}
             for split, loader in (("train", data.train_dataloader), ("val", data.val_dataloader),
                                   ("test", data.test_dataloader))}
    assert sizes == {"train": {(True, 3, 2)}, "val": {(True, 3, 2)}, "test": {(True, 5, 2)}}


@pytest.mark.parametrize("args,named", [
    ({"rollouts": 0}, "data.init_args.rollouts=0"),
    ({"test_rollouts": -1}, "data.init_args.test_rollouts=-1"),
    ({"episodes_per_trial": 0}, "data.init_args.episodes_per_trial=0"),
    ({"meta_batch_size": 0}, "data.init_args.meta_batch_size=0"),
    ({"meta_batch_size": 8, "episodes_per_epoch": 4}, "data.init_args.episodes_per_epoch=4"),
    ({"family": "Navigation2D"}, "data.init_args.family='Navigation2D'"),
])
def test_bad_settings_name_the_field(args, named):
    with pytest.raises(ConfigurationError, match=named.replace("[", r"\[")):
        EnvTaskDataModule(**{"family": Point1D(), **args})
