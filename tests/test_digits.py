"""``DigitsDataModule``: fixed seeded splits of scikit-learn's digits, exact label noise, seeded runs split across
processes."""

from __future__ import annotations

import sys

import pytest
import torch

from lightning_meta.data.digits import DIGITS, DigitsDataModule, RunBatch, RunStream
from lightning_meta.data.root import train_plan
from lightning_meta.errors import ConfigurationError

pytest.importorskip("sklearn")


def test_splits_have_the_requested_sizes_and_share_no_image():
    data = DigitsDataModule(train_samples=600, val_samples=400, test_samples=797, seed=3)
    data.setup("fit")
    sizes = {split: len(index) for split, index in data.indices.items()}
    assert sizes == {"train": 600, "val": 400, "test": 797}
    everything = torch.cat(list(data.indices.values()))
    assert len(set(everything.tolist())) == 600 + 400 + 797 == DIGITS  # disjoint, and here the whole set
    x, y = data.splits["val"]
    assert x.shape == (400, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.long and set(y.tolist()) <= set(range(10))
    small = DigitsDataModule(train_samples=50, val_samples=20, test_samples=30)
    small.setup("fit")
    assert [len(small.splits[s][0]) for s in ("train", "val", "test")] == [50, 20, 30]


def test_splits_and_noise_are_seeded():
    first, again, other = (DigitsDataModule(100, 50, 50, label_noise=0.3, seed=s) for s in (0, 0, 1))
    for data in (first, again, other):
        data.setup("fit")
    assert all(torch.equal(first.indices[s], again.indices[s]) for s in ("train", "val", "test"))
    assert torch.equal(first.flipped, again.flipped) and torch.equal(first.splits["train"][1], again.splits["train"][1])
    assert not torch.equal(first.indices["train"], other.indices["train"])


@pytest.mark.parametrize("noise,train", [(0.0, 600), (0.5, 600), (0.25, 100), (0.1, 33), (0.99, 200)])
def test_label_noise_flips_exactly_the_requested_fraction_to_another_class(noise, train):
    data = DigitsDataModule(train_samples=train, val_samples=10, test_samples=10, label_noise=noise, seed=5)
    data.setup("fit")
    noisy = data.splits["train"][1]
    assert int(data.flipped.sum()) == round(noise * train)
    assert torch.equal(noisy != data.clean_train_y, data.flipped)  # flipped means another class
    assert set(noisy.tolist()) <= set(range(10))
    # validation and test labels are never touched
    x, y = load_all()
    assert torch.equal(data.splits["val"][1], y[data.indices["val"]])
    assert torch.equal(data.splits["test"][1], y[data.indices["test"]])
    assert torch.equal(data.clean_train_y, y[data.indices["train"]])


def load_all():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.as_tensor(digits.data), torch.as_tensor(digits.target)


def test_runs_are_seeded_by_their_address_and_split_across_processes():
    data = DigitsDataModule(100, 50, 50, meta_batch_size=4, steps_per_epoch=3, seed=2)
    data.setup("fit")

    def seeds(plan, epoch=0):
        out = {}
        for batch in RunStream(plan, data.seed, "train", data.tensors(), epoch):
            out.update(zip(batch.index.tolist(), batch.seed.tolist()))
        return out

    one = seeds(train_plan(3, 4, 0, 1))
    halves = seeds(train_plan(3, 4, 0, 2)) | seeds(train_plan(3, 4, 1, 2))
    assert one == halves and sorted(one) == list(range(12)) and len(set(one.values())) == 12
    assert all(seeds(train_plan(3, 4, 0, 1), epoch=1)[i] != one[i] for i in one)
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, RunBatch) and batch.num_tasks == 4
    assert batch.train_x.shape == (100, 64) and batch.val_x.shape == (50, 64) and batch.test_x.shape == (50, 64)
    assert batch.scored_on.tolist() == [0] * 4 and batch.scored_set(0)[0] is batch.val_x  # validation in training
    test = list(data.test_dataloader())
    assert len(test) == 1 and test[0].scored_on.tolist() == [1] and test[0].scored_set(0)[1] is test[0].test_y
    assert torch.equal(test[0].test_y, data.splits["test"][1])
    assert next(iter(data.val_dataloader())).scored_on.tolist() == [0]  # val_runs=1
    assert [b.seed.tolist() for b in data.val_dataloader()] == [b.seed.tolist() for b in data.val_dataloader()]


def test_bad_settings_are_one_line_errors_naming_the_field():
    with pytest.raises(ConfigurationError, match=r"train_samples \+ val_samples \+ test_samples = 1000 \+ 500 \+ 300 = "
                                                 r"1800 exceeds the 1797 digits"):
        DigitsDataModule(1000, 500, 300)
    for noise in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigurationError, match=rf"data\.init_args\.label_noise={noise} is invalid.*\[0, 1\)"):
            DigitsDataModule(label_noise=noise)
    for name in ("train_samples", "val_samples", "test_samples", "meta_batch_size", "steps_per_epoch", "val_runs",
                 "test_runs"):
        with pytest.raises(ConfigurationError, match=rf"data\.init_args\.{name}=0 is invalid") as error:
            DigitsDataModule(**{name: 0})
        assert "\n" not in str(error.value)


def test_without_scikit_learn_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ConfigurationError, match=r"scikit-learn: pip install 'lightning-meta\[digits\]'") as error:
        DigitsDataModule().setup("fit")
    assert "\n" not in str(error.value)
