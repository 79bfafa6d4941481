"""NpzDataModule on the bundled hanzi_300x20.npz and on small arrays written to tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_images import make_npz
from lightning_meta.data import NpzDataModule, bundled_path
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch

HANZI = bundled_path("hanzi")
SMALL = dict(ways=5, shots=1, queries=3, meta_batch_size=4, episodes_per_epoch=8, val_episodes=4, test_episodes=4)


def make(path, **kwargs) -> NpzDataModule:
    return NpzDataModule(str(path), **{**SMALL, **kwargs})


def test_hanzi_split_is_seeded_disjoint_and_complete(hanzi):
    dm = make(HANZI)
    parts = dm.assignment()
    assert [len(parts[s]) for s in ("train", "val", "test")] == [192, 48, 60]
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(300))
    assert set(parts["train"]).isdisjoint(parts["val"]) and set(parts["val"]).isdisjoint(parts["test"])
    assert set(parts["train"]).isdisjoint(parts["test"])
    assert make(HANZI).assignment() == parts and make(HANZI, split_seed=1).assignment() != parts
    dm.setup("fit")
    train = dm.sources["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (192 * 20, 1, 28, 28)
    c = parts["train"][5]  # class 5 of the split is row c of the array
    assert torch.equal(train.images[5 * 20:6 * 20, 0], torch.from_numpy(hanzi[c]))


def test_a_bundled_name_is_the_bundled_file_and_an_existing_file_wins(tmp_path, monkeypatch):
    by_name = make("hanzi")
    assert by_name.file == HANZI and by_name.shape() == (300, 20, 28, 28)
    assert by_name.assignment() == make(HANZI).assignment()
    assert by_name.path == "hanzi"  # the config keeps the name, not this installation's location
    monkeypatch.chdir(tmp_path)
    make_npz(tmp_path / "mine.npz", classes=20).rename(tmp_path / "hanzi")  # a file named like a bundled set
    assert make("hanzi").shape() == (20, 6, 12, 12)
    with pytest.raises(ConfigurationError, match=r"path='hanzy'.*does not exist and 'hanzy' is not a bundled data set"
                                                 r" \('hanzi'\)"):
        make("hanzy").setup("fit")


def test_train_dataloader_yields_task_batches():
    dm = make(HANZI, rotations=[0, 90, 180, 270])
    dm.setup("fit")
    assert dm.sources["train"].num_classes == 4 * 192 and dm.sources["val"].num_classes == 48
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (4, 5, 1, 28, 28) and batch.query_x.shape == (4, 15, 1, 28, 28)
    val = next(iter(dm.val_dataloader()))
    assert val.support_y.tolist()[0] == [0, 1, 2, 3, 4]


def test_channels_first_colour_arrays_and_npy(tmp_path):
    path = make_npz(tmp_path / "colour.npz", classes=20, samples=5, size=10, channels=3, key="images")
    dm = make(path, key="images", rotations=[0, 180], test_ways=2)
    source = dm.load_split("train")
    assert source.image_shape == (3, 10, 10) and source.num_classes == 2 * 13
    assert dm.load_split("test").num_classes == 20 - 13 - 3
    npy = tmp_path / "grey.npy"
    np.save(npy, np.load(make_npz(tmp_path / "grey.npz", classes=20))["X"])
    assert make(npy, test_ways=2).load_split("val").image_shape == (1, 12, 12)


def test_shape_and_counts_are_checked_from_the_header_before_loading(tmp_path):
    path = make_npz(tmp_path / "x.npz", classes=20, samples=6)
    dm = make(path, shots=4, queries=3)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.shots \+ data\.init_args\.queries = 4 \+ 3 = 7 exceeds the 6"):
        dm.setup("fit")
    assert dm._array is None  # the array itself was never read
    dm = make(path, test_ways=4)  # 20 classes: 13 / 3 / 4, val too small for test_ways 4
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways=4 .* 3 of the 'val' split"):
        dm.setup("fit")
    assert dm._array is None


def test_file_and_array_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.path='.*missing\.npz'.*does not exist.*--data\.init_args\.path"):
        make(tmp_path / "missing.npz").setup("fit")
    path = make_npz(tmp_path / "x.npz", key="images")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.key='X'.*holds no array named 'X'.*\['images'\]"):
        make(path).setup("fit")
    floats = make_npz(tmp_path / "f.npz", dtype=np.float32)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.key='X'.*float32, expected uint8"):
        make(floats).setup("fit")
    np.savez(tmp_path / "flat.npz", X=np.zeros((10, 28, 28), dtype=np.uint8))
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.key='X'.*shape \[10, 28, 28\].*\[classes, samples"):
        make(tmp_path / "flat.npz").setup("fit")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.path=.*not a readable"):
        make(tmp_path / "bad.npz").setup("fit")


@pytest.mark.parametrize("train, val, field", [(0.0, 0.2, "train_fraction"), (0.7, 0.0, "val_fraction"),
                                               (0.7, 0.3, "val_fraction"), (float("nan"), 0.1, "train_fraction")])
def test_invalid_fractions(train, val, field):
    with pytest.raises(ConfigurationError, match=rf"data\.init_args\.{field}"):
        make(HANZI, train_fraction=train, val_fraction=val)


def test_invalid_rotations_and_seed():
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.rotations"):
        make(HANZI, rotations=[0, 0])
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.split_seed"):
        make(HANZI, split_seed=-1)
