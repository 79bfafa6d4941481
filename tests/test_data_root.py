"""The root data module: items addressed by (seed, split, index[, epoch]), steps split across processes,
padded evaluation sets, the learner's public resume clock; and the batches of the data modules on it are
those the code before the root served."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer
from torch import Tensor, nn

from lightning_meta import MAML, ConfigurationError, NpzDataModule, SinusoidDataModule
from lightning_meta.algorithms.domain_adversarial import DomainAdversarial
from lightning_meta.data.domains import DomainPairDataModule
from lightning_meta.data.root import (
    ItemStream,
    TaskDataModule,
    item_generator,
    item_generators,
    seed_sequence_states,
)
from lightning_meta.models import MLP


def fingerprint(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:20]


def first(loader):
    return next(iter(loader))


def episodes(batch) -> str:
    return fingerprint(batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.index)


def test_batches_equal_those_of_the_code_before_the_root():
    """Fingerprints of batches served by the committed code before the root data module (e898822..1afdecf)."""
    npz = NpzDataModule(path="hanzi", ways=3, shots=1, queries=2, meta_batch_size=4, episodes_per_epoch=16,
                        val_episodes=6, test_episodes=6, seed=3)
    npz.setup("fit")
    assert episodes(first(npz.train_dataloader())) == "d68e60057c2086b2249d"
    assert episodes(first(npz.val_dataloader())) == "b296a5319b313355761d"
    assert episodes(first(npz.test_dataloader())) == "6830dc54ef2eb1517029"
    supervised = NpzDataModule(path="hanzi", train_batches="supervised", batch_size=8, meta_batch_size=2,
                               val_episodes=2, test_episodes=2, seed=1)
    supervised.setup("fit")
    assert fingerprint(*first(supervised.train_dataloader())) == "8c274187752e61c885a2"
    sine = SinusoidDataModule(meta_batch_size=4, episodes_per_epoch=16, val_episodes=6, test_episodes=6, seed=5)
    sine.setup("fit")
    assert episodes(first(sine.train_dataloader())) == "afb069f1867878207038"
    assert episodes(first(sine.val_dataloader())) == "fca8a7de82eae4241c3a"
    pairs = DomainPairDataModule("hanzi", classes=10, batch_size=8, steps_per_epoch=4, val_samples=2, test_samples=3)
    pairs.setup("fit")
    assert fingerprint(*first(pairs.train_dataloader())) == "262f8ad7db27c4e1a836"


def test_item_generators_hash_addresses_as_numpys_seed_sequence():
    """The addresses of a meta-batch are hashed together: the words numpy's SeedSequence gives each row
    (zeros, trailing zeros, the full 32-bit range), and the generators item_generator gives each item,
    also for numbers SeedSequence splits into two words."""
    words = np.random.default_rng(0).integers(0, 2 ** 32, size=(300, 4), dtype=np.uint64).astype(np.uint32)
    words[:20], words[20:40, 3] = 0, 0
    for length in (1, 3, 4):
        expected = [np.random.SeedSequence(row.tolist()).generate_state(2) for row in words[:, :length]]
        assert np.array_equal(seed_sequence_states(words[:, :length]), np.stack(expected))
    for seed, split, epoch in [(0, "train", 0), (7, "test", None), (2 ** 33, "val", 2)]:
        indices = [0, 1, 255, 2 ** 32 + 1]
        seeds = [g.initial_seed() for g in item_generators(seed, split, indices, epoch)]
        key = [seed, ("train", "val", "test").index(split)]
        state = [np.random.SeedSequence(key + [i] + ([] if epoch is None else [epoch + 1])).generate_state(2).tolist()
                 for i in indices]
        assert seeds == [first << 31 ^ second for first, second in state]
        assert seeds == [item_generator(seed, split, i, epoch).initial_seed() for i in indices]


# ---------------------------------------------------------------------- a module whose items are task seeds
class SeedBatches(ItemStream):
    """A batch of task seeds ``[B]`` and their ``index [B]``: the learner would collect the data."""

    def __init__(self, plan, seed: int, split: str, epoch=None):
        super().__init__(plan, epoch)
        self.seed, self.split = seed, split

    def batch(self, position: int) -> tuple[Tensor, Tensor]:
        index = torch.tensor(self.plan[position])
        seeds = [int(torch.randint(2 ** 31, (), generator=item_generator(self.seed, self.split, max(i, 0), self.epoch)))
                 for i in index.tolist()]
        return torch.tensor(seeds), index


class SeedTasks(TaskDataModule):
    step_field = "tasks_per_step"

    def __init__(self, tasks_per_step: int = 4, steps_per_epoch: int = 3, val_tasks: int = 5, seed: int = 0):
        super().__init__(seed=seed)
        self.tasks_per_step, self.steps_per_epoch, self.val_tasks = tasks_per_step, steps_per_epoch, val_tasks

    def train_dataloader(self):
        return self.loader(SeedBatches(self.training_plan(self.steps_per_epoch), self.seed, "train", epoch=0),
                           training=True)

    def val_dataloader(self):
        return self.loader(SeedBatches(self.evaluation_plan(self.val_tasks, self.items_per_rank()), self.seed, "val"))


def as_rank(datamodule: pl.LightningDataModule, rank: int, world_size: int) -> pl.LightningDataModule:
    """``datamodule`` seen from process ``rank`` of ``world_size`` (a stand-in Trainer, epoch 0)."""
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, current_epoch=0,
                                         strategy=SimpleNamespace(root_device=torch.device("cpu")),
                                         lightning_module=SimpleNamespace(epoch_batches_trained=0))
    return datamodule


def test_seed_items_are_addressed_split_across_processes_and_padded():
    single = list(SeedTasks().train_dataloader())
    halves = [list(as_rank(SeedTasks(), rank, 2).train_dataloader()) for rank in (0, 1)]
    for step, (seeds, index) in enumerate(single):
        assert index.tolist() == list(range(4 * step, 4 * step + 4))
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), seeds)
    # an item's seed depends on its address only, not on the items per step
    assert torch.equal(torch.cat([s for s, _ in SeedTasks(tasks_per_step=2, steps_per_epoch=6).train_dataloader()]),
                       torch.cat([s for s, _ in single]))
    # evaluation: dealt by index % 2, the second rank padded with -1; every item once, as one process sees it
    evaluation = [list(as_rank(SeedTasks(), rank, 2).val_dataloader()) for rank in (0, 1)]
    assert [[i.tolist() for _, i in batches] for batches in evaluation] == [[[0, 2], [4]], [[1, 3], [-1]]]
    seen = {int(i): int(s) for batches in evaluation for seeds, index in batches
            for s, i in zip(seeds, index) if i >= 0}
    ((seeds, index),) = list(SeedTasks(tasks_per_step=8).val_dataloader())
    assert seen == dict(zip(index.tolist(), seeds.tolist()))


def test_items_per_step_must_divide_across_processes():
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.tasks_per_step=5 does not divide across 2"):
        as_rank(SeedTasks(tasks_per_step=5), 0, 2).train_dataloader()
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.meta_batch_size=3 does not divide across 2"):
        as_rank(SinusoidDataModule(meta_batch_size=3), 1, 2).setup("fit")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.batch_size=5 does not divide across 2"):
        as_rank(DomainPairDataModule("hanzi", batch_size=5), 0, 2).setup("fit")


def test_only_meaningful_settings_and_the_seed_are_saved():
    pairs = DomainPairDataModule("hanzi", classes=10)
    assert "meta_batch_size" not in pairs.hparams and "ways" not in pairs.hparams
    assert pairs.hparams["source"] == "hanzi" and pairs.hparams["seed"] == 0 and pairs.steps_per_epoch == 200
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.seed=-1 is invalid"):
        SeedTasks(seed=-1)


# ---------------------------------------------------------------------- the resume clock
class ClockCheck(pl.Callback):
    """After every batch, the training loader's resume position is Lightning's own count (the internal
    ``batch_progress`` the data modules read before they read the learner's public count)."""

    def __init__(self) -> None:
        self.positions: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = trainer.train_dataloader.state_dict()
        lightning = (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        assert (state["epoch"], state["batches_done"]) == lightning
        self.positions.append(lightning)


def test_resume_clock_is_the_learners_count_of_batches():
    pl.seed_everything(0, verbose=False)
    check = ClockCheck()
    data = SinusoidDataModule(meta_batch_size=2, episodes_per_epoch=6, val_episodes=2)
    quiet_trainer(max_steps=7, limit_val_batches=0, callbacks=[check]).fit(MAML(MLP(1, 1, (8,)), inner_steps=1), data)
    assert check.positions == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1)]


class PlainModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch.support_x).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_model_without_the_learners_count_is_refused_before_training():
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    with pytest.raises(ConfigurationError, match="derive the model from lightning_meta.algorithms.learner.Learner"):
        trainer.fit(PlainModule(), SinusoidDataModule(meta_batch_size=2, episodes_per_epoch=4))
    assert trainer.global_step == 0


# ---------------------------------------------------------------------- domain pairs
def test_domain_pair_steps_and_held_out_pairs_split_across_processes():
    """Two ranks' halves of a training step are the single-process step; their held-out pairs (7 per
    domain, dealt with padding) give the single-process values, which are each domain's per-sample scores."""
    def data():
        return DomainPairDataModule("hanzi", classes=7, batch_size=4, steps_per_epoch=2, val_samples=1, test_samples=1,
                                    eval_batch_size=3)

    (x, y, domain), = list(data().train_dataloader())[:1]
    halves = [first(as_rank(data(), rank, 2).train_dataloader()) for rank in (0, 1)]
    source = torch.cat([x[d == 0] for x, _, d in halves])
    target = torch.cat([x[d == 1] for x, _, d in halves])
    assert torch.equal(source, x[domain == 0]) and torch.equal(target, x[domain == 1])
    assert torch.equal(torch.cat([y[d == 0] for _, y, d in halves]), y[domain == 0])

    model = DomainAdversarial(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8)), num_classes=7,
                              input_shape=(1, 28, 28)).eval()

    def values(batches) -> dict[int, dict[str, float]]:
        rows = {}
        for batch in batches:
            scores = model.evaluate_tasks(batch)
            for k, i in enumerate(batch.index.tolist()):
                if i >= 0:
                    rows[i] = {name: float(v[k]) for name, v in scores.items()}
        return rows

    with torch.no_grad():
        single = values(data().test_dataloader())
        ranks = [list(as_rank(data(), rank, 2).test_dataloader()) for rank in (0, 1)]
        assert [[b.index.tolist() for b in batches] for batches in ranks] == [[[0, 2, 4], [6]], [[1, 3, 5], [-1]]]
        both = values(ranks[0] + ranks[1])
        assert sorted(both) == sorted(single) == list(range(7))
        assert all(both[i] == pytest.approx(single[i], rel=1e-6) for i in single)
        x, y, d = data().evaluation_set("test").tensors
        logits = model(x)
        correct = (logits.argmax(1) == y).float()
    for index, name in enumerate(("source", "target")):
        assert sorted(row[f"{name}_acc"] for row in single.values()) == sorted(correct[d == index].tolist())
