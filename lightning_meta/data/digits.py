"""``DigitsDataModule``: scikit-learn's 8x8 digits (1,797 images, inside the package: no download) for learning
hyper-parameters by gradient (:class:`~lightning_meta.algorithms.hyper_learner.HyperparameterLearner`).

The data are split once, by ``seed``, into fixed train / validation / test sets (disjoint; sizes are
arguments); ``label_noise`` flips that fraction of the *training* labels to another class (exactly
``round(label_noise * train_samples)`` of them, chosen by ``seed``) and the module keeps which
(:attr:`DigitsDataModule.flipped`), so data hyper-cleaning can be scored.

An item is one seeded *run*: a training run of the inner model from scratch whose initialisation and
mini-batch order come from the run's seed, drawn from the item's address
(:func:`~lightning_meta.data.root.item_generator`).  A training step holds ``meta_batch_size`` runs, split
across processes like episodes; validation and test hold a fixed set of ``val_runs`` / ``test_runs`` runs.
Every batch (:class:`RunBatch`) carries the data set and which set scores each run (validation, or the test
set at test), so a learner trains and scores a run from the batch alone.

Pixels are scaled to [0, 1] (``/ 16``) and flattened to 64 features.

Example::

    data = DigitsDataModule(train_samples=600, val_samples=400, test_samples=797, label_noise=0.5)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))   # RunBatch: seed [1], train_x [600, 64], val_x [400, 64]
    data.flipped.sum()                             # tensor(300)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_meta.data.root import ItemLoader, ItemStream, TaskDataModule, item_generator
from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_positive

#: images in scikit-learn's digits data set
DIGITS = 1797
CLASSES = 10
#: distinguishes the split permutation's and the label noise's seeds from the items' (SeedSequence tags)
_SPLIT_TAG, _NOISE_TAG = 7, 8


@dataclass
class RunBatch:
    """``B`` seeded training runs on one data set: ``seed [B]`` (int64) seeds each run's initialisation and
    mini-batch order, ``index [B]`` is each run's number in its split (``-1``: padding), ``scored_on [B]`` the
    set each run is scored on (``0``: validation, in training and validation; ``1``: test).  The data set is
    shared by the batch's runs, not stacked per run (``metadata["shared"]``; a batch's runs are picked or
    joined along the other fields): ``train_x [N, 64]``, ``train_y [N]`` (noisy labels), ``flipped [N]`` (bool:
    which labels were flipped), ``val_x``, ``val_y``, ``test_x``, ``test_y``.

    Example::

        batch.num_tasks      # B
        batch.scored_set(0)  # (val_x, val_y) or (test_x, test_y)
    """

    seed: Tensor
    index: Tensor
    scored_on: Tensor
    train_x: Tensor = field(metadata={"shared": True})
    train_y: Tensor = field(metadata={"shared": True})
    flipped: Tensor = field(metadata={"shared": True})
    val_x: Tensor = field(metadata={"shared": True})
    val_y: Tensor = field(metadata={"shared": True})
    test_x: Tensor = field(metadata={"shared": True})
    test_y: Tensor = field(metadata={"shared": True})

    def scored_set(self, run: int) -> tuple[Tensor, Tensor]:
        """The inputs and labels that score run ``run``."""
        return (self.test_x, self.test_y) if int(self.scored_on[run]) == 1 else (self.val_x, self.val_y)

    @property
    def num_tasks(self) -> int:
        return int(self.seed.shape[0])


class RunStream(ItemStream):
    """The run batches of one split (see the module docstring); padding (``-1``) draws run 0's seed."""

    def __init__(self, plan: Sequence[Sequence[int]], seed: int, split: str, tensors: dict[str, Tensor],
                 epoch: Optional[int] = None):
        super().__init__(plan, epoch)
        self.seed, self.split, self.tensors = seed, split, tensors

    def batch(self, position: int) -> RunBatch:
        index = self.plan[position]
        seeds = [int(torch.randint(2 ** 31, (), generator=item_generator(self.seed, self.split, max(i, 0),
                                                                           self.epoch))) for i in index]
        scored_on = torch.full((len(index),), int(self.split == "test"), dtype=torch.long)
        return RunBatch(torch.tensor(seeds, dtype=torch.long), torch.tensor(index, dtype=torch.long), scored_on,
                        **self.tensors)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, ``(x [1797, 64] in [0, 16], y [1797])``; a one-line error without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ConfigurationError("DigitsDataModule needs scikit-learn: pip install 'lightning-meta[digits]'"
                                 " (or pip install scikit-learn)") from error
    digits = load_digits()
    return digits.data, digits.target


def seeded(seed: int, tag: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), tag]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class DigitsDataModule(TaskDataModule):
    """scikit-learn's 8x8 digits as seeded training runs (see the module docstring).

    Args:
        train_samples / val_samples / test_samples: sizes of the disjoint splits (together at most 1,797).
        label_noise: the fraction of training labels flipped to another class, in [0, 1).
        meta_batch_size: runs per training step, summed over processes.
        steps_per_epoch: training steps (hyper-steps) per epoch.
        val_runs / test_runs: the fixed runs of validation and test.
        seed: the seed of the splits, the label noise and every run.

    Example::

        data = DigitsDataModule(600, 400, 797, label_noise=0.5, meta_batch_size=1)
        trainer.fit(HyperparameterLearner(MLP(64, 10, ()), learn_example_weights=True), data)
    """

    step_field = "meta_batch_size"

    def __init__(self, train_samples: int = 600, val_samples: int = 400, test_samples: int = 797,
                 label_noise: float = 0.0, meta_batch_size: int = 1, steps_per_epoch: int = 10, val_runs: int = 1,
                 test_runs: int = 1, seed: int = 0):
        super().__init__(seed=seed)
        for name, value in (("train_samples", train_samples), ("val_samples", val_samples),
                            ("test_samples", test_samples), ("meta_batch_size", meta_batch_size),
                            ("steps_per_epoch", steps_per_epoch), ("val_runs", val_runs), ("test_runs", test_runs)):
            require_positive(DATA_ARGS + name, value)
        total = train_samples + val_samples + test_samples
        if total > DIGITS:
            raise ConfigurationError(
                f"{DATA_ARGS}train_samples + val_samples + test_samples = {train_samples} + {val_samples} + "
                f"{test_samples} = {total} exceeds the {DIGITS} digits: lower them")
        if not (isinstance(label_noise, (int, float)) and not isinstance(label_noise, bool)
                and 0 <= label_noise < 1):
            raise ConfigurationError(f"{DATA_ARGS}label_noise={label_noise!r} is invalid: it must be a fraction in"
                                     " [0, 1)")
        self.train_samples, self.val_samples, self.test_samples = train_samples, val_samples, test_samples
        self.label_noise = float(label_noise)
        self.meta_batch_size, self.steps_per_epoch = meta_batch_size, steps_per_epoch
        self.val_runs, self.test_runs = val_runs, test_runs
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.indices: dict[str, Tensor] = {}
        self.flipped = torch.zeros(train_samples, dtype=torch.bool)
        self.clean_train_y = torch.zeros(train_samples, dtype=torch.long)

    @property
    def num_train_examples(self) -> int:
        return self.train_samples

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        x, y = load_digits_arrays()
        x = torch.as_tensor(x, dtype=torch.float32) / 16.0
        y = torch.as_tensor(y, dtype=torch.long)
        order = torch.randperm(DIGITS, generator=seeded(self.seed, _SPLIT_TAG))
        sizes = {"train": self.train_samples, "val": self.val_samples, "test": self.test_samples}
        start = 0
        for split, size in sizes.items():
            self.indices[split] = order[start:start + size]
            self.splits[split] = (x[self.indices[split]], y[self.indices[split]])
            start += size
        train_x, clean = self.splits["train"]
        noise = seeded(self.seed, _NOISE_TAG)
        count = int(round(self.label_noise * self.train_samples))
        chosen = torch.randperm(self.train_samples, generator=noise)[:count]
        noisy = clean.clone()
        noisy[chosen] = (clean[chosen] + torch.randint(1, CLASSES, (count,), generator=noise)) % CLASSES
        self.flipped = noisy != clean
        self.clean_train_y = clean
        self.splits["train"] = (train_x, noisy)

    def tensors(self) -> dict[str, Tensor]:
        """The shared data of every :class:`RunBatch`: the (noisy) training set, its flipped mask, the validation
        and test sets."""
        if not self.splits:
            self.setup()
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = (self.splits[s] for s in ("train", "val", "test"))
        return {"train_x": train_x, "train_y": train_y, "flipped": self.flipped, "val_x": val_x, "val_y": val_y,
                "test_x": test_x, "test_y": test_y}

    def train_dataloader(self) -> ItemLoader:
        stream = RunStream(self.training_plan(self.steps_per_epoch), self.seed, "train", self.tensors(),
                           epoch=0)
        return self.loader(stream, training=True)

    def val_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("val", self.val_runs)

    def test_dataloader(self) -> ItemLoader:
        return self.evaluation_loader("test", self.test_runs)

    def evaluation_loader(self, split: str, runs: int) -> ItemLoader:
        plan = self.evaluation_plan(runs, self.items_per_rank())
        return self.loader(RunStream(plan, self.seed, split, self.tensors()))
