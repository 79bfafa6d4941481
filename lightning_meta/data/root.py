"""``TaskDataModule``: the root of lightning-meta's data modules, whatever one item of a step is.

An *item* is what one task of a training step is made of: an episode
(:class:`~lightning_meta.data.EpisodicDataModule`), a source and a target image
(:class:`~lightning_meta.data.DomainPairDataModule`), or only a task's seed when the learner collects the
task's data in its step (environment tasks).  The root owns what every kind shares:

* **Addresses.** Item ``i`` of split ``s`` is drawn from :func:`item_generator` ``(seed, s, i)``, and a
  training item from ``(seed, "train", i, epoch)``: a pure function of its address, whatever the batch
  size, the loader workers or the number of processes.
* **Steps split across processes.** Training step ``t`` takes items ``t*B .. t*B + B - 1``, ``B`` =
  :attr:`TaskDataModule.items_per_step` summed over processes.  With ``W`` processes, rank ``r`` takes
  the ``B/W`` items from ``t*B + r*B/W`` (:func:`train_plan`), so ``W`` processes train on the batch
  one process would (Lightning's ``DistributedSampler`` would give every rank ``B`` items of its own);
  ``B`` must divide across the processes (:meth:`TaskDataModule.items_per_rank`).
* **Padded evaluation sets.** Validation and test items are a fixed set dealt to ranks by ``i % W``
  (:func:`eval_plan`); a rank short of items pads its last batch with index ``-1``, which the learner
  drops, so every rank runs the same number of batches and each item counts once.
* **Resume.** :class:`ItemLoader` is stateful (``state_dict``/``load_state_dict``, Lightning's
  protocol): a run resumed from a mid-epoch checkpoint continues with the batch after the last one
  trained.  Its clock is the learner's public count of batches
  (:meth:`TaskDataModule.training_clock`).

Batches are built whole by an :class:`ItemStream` (an ``IterableDataset`` served with
``batch_size=None``), so Lightning never swaps in a sampler of its own; loader workers take every
``num_workers``-th batch, in order.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_positive

SPLITS = ("train", "val", "test")

# Each worker takes every num_workers-th batch (ItemStream.__iter__), so the length is exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def item_generator(seed: int, split: str, index: int, epoch: Optional[int] = None) -> torch.Generator:
    """The generator of one item, a pure function of its address ``(seed, split, index[, epoch])``: seeded
    from ``numpy.random.SeedSequence`` of the address (see :func:`item_generators`)."""
    return item_generators(seed, split, [index], epoch)[0]


def item_generators(seed: int, split: str, indices: Sequence[int], epoch: Optional[int] = None) -> list[torch.Generator]:
    """:func:`item_generator` of each of ``indices``: the first two words of ``numpy.random.SeedSequence(
    [seed, split number, index(, epoch + 1)]).generate_state(2)`` seed it.

    Addresses of 32-bit numbers (all in practice) are hashed together with :func:`seed_sequence_states`,
    the same words as ``SeedSequence`` computed for all items at once (a meta-batch of hundreds of small
    episodes would spend more on the per-item ``SeedSequence`` than on drawing the episodes); larger
    numbers, which ``SeedSequence`` splits into several words, go through ``SeedSequence`` itself.
    """
    # epoch + 1: SeedSequence pads its entropy with zeros, so a trailing 0 would collide
    keys = [[int(seed), SPLITS.index(split), int(i)] + ([] if epoch is None else [int(epoch) + 1]) for i in indices]
    if all(0 <= k < 2 ** 32 for key in keys for k in key):
        states = seed_sequence_states(np.array(keys, dtype=np.uint32).reshape(len(keys), -1)).tolist()
    else:
        states = [np.random.SeedSequence(key).generate_state(2, dtype=np.uint32).tolist() for key in keys]
    generators = []
    for first, second in states:
        generator = torch.Generator()
        generator.manual_seed(first << 31 ^ second)
        generators.append(generator)
    return generators


#: numpy's SeedSequence (O'Neill's seed_seq_fe, stable by NEP 19): hash constants, multipliers, pool size
SEED_HASH = {"init_a": 0x43B0D7E5, "mult_a": 0x931E8875, "init_b": 0x8B51F9DD, "mult_b": 0x58F38DED,
             "mix_l": 0xCA01F9DD, "mix_r": 0x4973F715, "pool": 4}


def seed_sequence_states(entropy: np.ndarray) -> np.ndarray:
    """``SeedSequence(entropy[j]).generate_state(2)`` for every row of ``entropy`` ``[n, words]`` (uint32,
    at most ``pool`` = 4 words): numpy's mixing, on columns of all rows at once; returns ``[n, 2]`` uint32.

    Example::

        seed_sequence_states(np.array([[7, 0, 3]], dtype=np.uint32))[0]   # SeedSequence([7, 0, 3]).generate_state(2)
    """
    mask, shift = 0xFFFFFFFF, 16
    pool_size = SEED_HASH["pool"]
    if entropy.shape[1] > pool_size:
        raise ValueError(f"seed_sequence_states takes at most {pool_size} words per row, got {entropy.shape[1]}")
    hash_a = SEED_HASH["init_a"]

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_a
        value = value ^ np.uint32(hash_a)
        hash_a = hash_a * SEED_HASH["mult_a"] & mask
        value = value * np.uint32(hash_a)
        return value ^ (value >> np.uint32(shift))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = x * np.uint32(SEED_HASH["mix_l"]) - y * np.uint32(SEED_HASH["mix_r"])
        return result ^ (result >> np.uint32(shift))

    zeros = np.zeros(len(entropy), dtype=np.uint32)
    pool = [hashmix(entropy[:, i] if i < entropy.shape[1] else zeros) for i in range(pool_size)]
    for source in range(pool_size):
        for target in range(pool_size):
            if source != target:
                pool[target] = mix(pool[target], hashmix(pool[source]))
    hash_b, words = SEED_HASH["init_b"], []
    for value in pool[:2]:
        value = value ^ np.uint32(hash_b)
        hash_b = hash_b * SEED_HASH["mult_b"] & mask
        value = value * np.uint32(hash_b)
        words.append(value ^ (value >> np.uint32(shift)))
    return np.stack(words, 1)


def train_plan(num_batches: int, items_per_step: int, rank: int, world_size: int) -> list[list[int]]:
    """Item indices of each training batch on ``rank``: its ``items_per_step / world_size`` share of
    every step (see the module docstring)."""
    per_rank = items_per_step // world_size
    return [[t * items_per_step + rank * per_rank + j for j in range(per_rank)] for t in range(num_batches)]


def eval_plan(items: int, per_batch: int, rank: int, world_size: int) -> list[list[int]]:
    """Evaluation items of ``rank`` (those with ``i % world_size == rank``) in batches of ``per_batch``;
    padding entries are ``-1``, so that every rank has as many batches."""
    mine = list(range(rank, items, world_size))
    longest = -(-items // world_size)
    mine += [-1] * (longest - len(mine))
    return [mine[i:i + per_batch] for i in range(0, len(mine), per_batch)]


class ItemStream(IterableDataset):
    """The batches of one split on one rank: batch ``position`` holds the items ``plan[position]``
    (``-1``: padding).  Subclasses build a batch in :meth:`batch`.

    ``epoch`` is ``None`` for the fixed validation and test sets; in training, ``epoch`` and ``start``
    (batches already trained in a resumed epoch) are set by :class:`ItemLoader` before each iteration.
    """

    def __init__(self, plan: Sequence[Sequence[int]], epoch: Optional[int] = None):
        super().__init__()
        self.plan = [list(b) for b in plan]
        self.epoch = epoch
        self.start = 0

    def __len__(self) -> int:
        return len(self.plan)

    def batch(self, position: int) -> Any:
        """Batch ``position`` of the split (of the current epoch, in training)."""
        raise NotImplementedError

    def batches(self, positions: range) -> Iterator[Any]:
        """The batches at ``positions``, in order; override to share work across them (an epoch's order)."""
        return (self.batch(position) for position in positions)

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        return self.batches(range(self.start + worker_id, len(self), workers))


class ItemLoader(DataLoader):
    """A ``DataLoader`` over an :class:`ItemStream` that knows its epoch and resumes mid-epoch.

    ``clock()`` returns ``(epoch, batches already trained in it)``; without a clock the loader counts
    epochs itself.  Training streams read the epoch on every ``iter`` (and, after ``load_state_dict``,
    continue where the checkpoint stopped); evaluation streams (``epoch=None``) are fixed.
    """

    def __init__(self, stream: ItemStream, num_workers: int = 0, pin_memory: bool = False,
                 clock: Optional[Callable[[], tuple[int, int]]] = None):
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=False)
        self.stream = stream
        self.clock = clock
        self.resume_from: Optional[dict[str, int]] = None
        self.iterations = 0

    def __iter__(self):
        if self.stream.epoch is not None:
            if self.resume_from is not None:
                # The first iteration after a restore continues the checkpoint's epoch; a checkpoint
                # taken after its last batch continues with the next epoch (Lightning counts that
                # epoch as completed only after this call).
                epoch, start = self.resume_from["epoch"], self.resume_from["batches_done"]
                if start >= len(self.stream):
                    epoch, start = epoch + 1, 0
                self.resume_from = None
            else:
                epoch = self.clock()[0] if self.clock is not None else self.iterations
                start = 0
            self.stream.epoch, self.stream.start = epoch, start
        self.iterations += 1
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        done = self.clock()[1] if self.clock is not None else 0
        return {"epoch": int(self.stream.epoch or 0), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume_from = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}


class TaskDataModule(pl.LightningDataModule):
    """The root of lightning-meta's data modules (see the module docstring): a seed, addressable items,
    ``items_per_step`` split across processes, padded evaluation sets and the resume clock.

    A subclass names the argument that sets the items of a training step (:attr:`step_field`) and
    builds its loaders with :meth:`training_plan` / :meth:`evaluation_plan` and :meth:`loader`.  Every
    checkpoint carries the data module's arguments (``save_hyperparameters``).

    Args:
        seed: the seed every item is drawn from.

    Example (items that are task seeds; the learner collects each task's data in its step)::

        class SeedBatches(ItemStream):
            def __init__(self, plan, seed, split, epoch=None):
                super().__init__(plan, epoch)
                self.seed, self.split = seed, split
            def batch(self, position):
                index = torch.tensor(self.plan[position])
                seeds = [int(torch.randint(2 ** 31, (), generator=item_generator(self.seed, self.split,
                         max(i, 0), self.epoch))) for i in index.tolist()]
                return SeedBatch(torch.tensor(seeds), index)      # a dataclass with an ``index``

        class EnvTasks(TaskDataModule):
            step_field = "tasks_per_step"
            def __init__(self, tasks_per_step: int = 8, steps_per_epoch: int = 100, val_tasks: int = 64,
                         seed: int = 0):
                super().__init__(seed=seed)
                self.tasks_per_step, self.steps_per_epoch, self.val_tasks = tasks_per_step, steps_per_epoch, val_tasks
            def train_dataloader(self):
                stream = SeedBatches(self.training_plan(self.steps_per_epoch), self.seed, "train", epoch=0)
                return self.loader(stream, training=True)
            def val_dataloader(self):
                plan = self.evaluation_plan(self.val_tasks, self.items_per_rank())
                return self.loader(SeedBatches(plan, self.seed, "val"))
    """

    #: the argument that sets the items of one training step, summed over processes (named in errors); episodic
    #: modules' ``meta_batch_size``
    step_field: str = "meta_batch_size"

    def __init__(self, seed: int = 0):
        super().__init__()
        # every checkpoint carries the data arguments (logger=False: not merged into the model's)
        self.save_hyperparameters(logger=False)
        for name, value in list(self.hparams.items()):
            if isinstance(value, os.PathLike):  # checkpoints are reloaded with weights_only=True
                self.hparams[name] = os.fspath(value)
        require_positive(DATA_ARGS + "seed", seed, allow_zero=True)
        self.seed = seed

    # ----------------------------------------------------------------- steps and processes
    @property
    def items_per_step(self) -> int:
        """Items of one training step, summed over processes (the value of :attr:`step_field`)."""
        return int(getattr(self, self.step_field))

    @property
    def world(self) -> tuple[int, int]:
        """``(rank, world_size)`` of this process, from the attached Trainer."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def items_per_rank(self) -> int:
        """This process's share of a step, refusing a step that does not divide across the processes."""
        world_size = self.world[1]
        if self.items_per_step % world_size:
            raise ConfigurationError(
                f"{DATA_ARGS}{self.step_field}={self.items_per_step} does not divide across {world_size} processes"
                f" (devices x nodes): choose a multiple of {world_size}")
        return self.items_per_step // world_size

    def training_plan(self, steps: int) -> list[list[int]]:
        """Item indices of this process's batches of ``steps`` training steps (see :func:`train_plan`)."""
        self.items_per_rank()
        return train_plan(steps, self.items_per_step, *self.world)

    def evaluation_plan(self, items: int, per_batch: int) -> list[list[int]]:
        """This process's share of ``items`` evaluation items in batches of ``per_batch`` (see :func:`eval_plan`)."""
        return eval_plan(items, per_batch, *self.world)

    # ----------------------------------------------------------------- loaders and the resume clock
    def training_clock(self) -> tuple[int, int]:
        """``(epoch, batches of it trained)``: where a checkpoint's training loader resumes.

        The count is the learner's public :attr:`~lightning_meta.algorithms.learner.Learner.epoch_batches_trained`
        (restored with the Trainer's loop state), so a learner must derive from ``Learner``.
        """
        trainer = self.trainer
        learner = trainer.lightning_module
        trained = getattr(learner, "epoch_batches_trained", None)
        if trained is None:
            raise ConfigurationError(
                f"{type(self).__name__} resumes training from the learner's count of batches trained, which"
                f" {type(learner).__name__} does not keep: derive the model from lightning_meta.algorithms.learner."
                "Learner (or one of its subclasses)")
        return trainer.current_epoch, int(trained)

    def loader(self, stream: ItemStream, num_workers: int = 0, training: bool = False) -> ItemLoader:
        """An :class:`ItemLoader` of ``stream``, pinning memory for a GPU; a training loader under a Trainer
        resumes by :meth:`training_clock` (checked here, before the first batch)."""
        trainer = self.trainer
        clock = None
        if training and trainer is not None:
            self.training_clock()
            clock = self.training_clock
        pin_memory = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return ItemLoader(stream, num_workers, pin_memory, clock=clock)
