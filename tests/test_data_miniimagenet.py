"""MiniImageNetDataModule on tiny pickles in learn2learn's format."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from fixtures_images import make_mini_imagenet
from lightning_meta.data import MiniImageNetDataModule
from lightning_meta.data import miniimagenet as mini_module
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch

SMALL = dict(ways=3, shots=2, queries=3, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4, test_episodes=4)


@pytest.fixture
def root(tmp_path) -> Path:
    # train / validation / test: 6 / 3 / 4 classes of 8 images, rows of the classes interleaved
    return make_mini_imagenet(tmp_path / "data", shuffle_rows=True)


def make(root, **kwargs) -> MiniImageNetDataModule:
    return MiniImageNetDataModule(str(root), **{**SMALL, **kwargs})


def test_loads_uint8_images_grouped_by_class(root):
    dm = make(root)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = (dm.sources[s] for s in ("train", "val", "test"))
    assert (train.num_classes, val.num_classes, test.num_classes) == (6, 3, 4)
    assert train.images.dtype == torch.uint8 and train.images.shape == (48, 3, 84, 84)
    assert train.counts.tolist() == [8] * 6
    # class n of the fixture has channel 0 = 10 * n + j: grouping by class survived the interleaved rows
    for n in range(6):
        values = train.images[8 * n:8 * (n + 1), 0, 0, 0].tolist()
        assert sorted(values) == [10 * n + j for j in range(8)]
    assert train.names == sorted(train.names)


def test_splits_are_disjoint(root):
    dm = make(root)
    names = {s: set(dm.load_split(s).names) for s in ("train", "val", "test")}
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"])


def test_image_size_and_normalize(root):
    dm = make(root, image_size=42, normalize=True)
    source = dm.load_split("test")
    assert source.images.shape == (32, 3, 42, 42) and source.images.dtype == torch.uint8
    x = source.class_samples(0, torch.arange(2))
    raw = source.images[:2].float() / 255
    expected = (raw - torch.tensor(mini_module.IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(mini_module.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x, expected)
    plain = make(root).load_split("test").class_samples(0, torch.arange(2))
    assert 0 <= plain.min() and plain.max() <= 1


def test_train_dataloader_yields_task_batches(root):
    dm = make(root)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (2, 6, 3, 84, 84) and batch.query_x.shape == (2, 9, 3, 84, 84)
    assert batch.query_y.tolist()[1] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_missing_root_names_the_field_and_download(tmp_path):
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root='.*nowhere'.*does not exist.*download: true"):
        make(tmp_path / "nowhere").setup("fit")


def test_missing_split_file_is_named(root):
    (root / "mini-imagenet-cache-validation.pkl").unlink()
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root.*mini-imagenet-cache-validation\.pkl is missing"):
        make(root).setup("fit")


def test_episode_settings_are_checked(root):
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways=5 .* 4 of the 'test' split"):
        make(root, test_ways=5).setup("test")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.shots \+ data\.init_args\.queries = 2 \+ 7 = 9 exceeds the 8"):
        make(root, queries=7, test_queries=3).setup("fit")
    dm = make(root, ways=4, test_ways=None)  # val has 3 classes: fails before train is converted
    with pytest.raises(ConfigurationError, match=r"'val' split"):
        dm.setup("fit")
    assert "train" not in dm.sources


def test_not_a_minimagenet_pickle(root):
    (root / "mini-imagenet-cache-test.pkl").write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root.*not a readable mini-ImageNet pickle"):
        make(root).setup("test")
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"images": [1, 2]}, f)
    with pytest.raises(ConfigurationError, match=r"learn2learn's mini-ImageNet format"):
        make(root).setup("test")


def fake_learn2learn(monkeypatch, download_file, from_drive=None):
    """Stand-ins for ``learn2learn.data.utils`` (no network, no import of the real package)."""
    utils = types.ModuleType("learn2learn.data.utils")
    utils.download_file = download_file
    utils.download_file_from_google_drive = from_drive or download_file
    monkeypatch.setitem(sys.modules, "learn2learn", types.ModuleType("learn2learn"))
    monkeypatch.setitem(sys.modules, "learn2learn.data", types.ModuleType("learn2learn.data"))
    monkeypatch.setitem(sys.modules, "learn2learn.data.utils", utils)


def test_download_without_network_fails_clearly(tmp_path, monkeypatch):
    def offline(source, destination, *args):
        raise ConnectionError(f"cannot reach {source}")

    fake_learn2learn(monkeypatch, offline)
    dm = make(tmp_path / "data", download=True)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.download.*mini-imagenet-cache-train\.pkl.*zenodo"):
        dm.prepare_data()
    assert not list((tmp_path / "data").iterdir())  # no partial files left behind


def test_download_rejects_an_html_page_and_tries_the_next_source(tmp_path, monkeypatch):
    source = make_mini_imagenet(tmp_path / "source", per_class=40)  # > 1 MiB per file
    tried = []

    def fetch(url, destination, *args):
        tried.append(url)
        if "zenodo" in url:
            Path(destination).write_text("<html>rate limited</html>")
        else:
            name = "mini-imagenet-cache-" + url.split("mini-imagenet-cache-")[1].split(".pkl")[0] + ".pkl"
            Path(destination).write_bytes((source / name).read_bytes())

    fake_learn2learn(monkeypatch, fetch)
    dm = make(tmp_path / "data", download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.sources["train"].num_classes == 6
    assert sum("dropbox" in url for url in tried) == 3
