"""ImageFolderDataModule on tiny folders of class sub-folders of PNG images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fixtures_images import make_image_folder
from lightning_meta.data import ImageFolderDataModule
from lightning_meta.data import image_folder as folder_module
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch

SMALL = dict(ways=2, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4, test_episodes=4)


def make(root, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), **{"train_fraction": 0.6, "val_fraction": 0.2, **SMALL, **kwargs})


def no_decoding(*args, **kwargs):
    raise AssertionError("images were decoded")


@pytest.fixture
def root(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", classes=10, per_class=4, size=20)


def test_seeded_split_is_disjoint_and_loads_uint8(root):
    dm = make(root)
    dm.setup("fit")
    dm.setup("test")
    names = {s: dm.sources[s].names for s in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert set(names["train"]).isdisjoint(names["val"]) and set(names["train"]).isdisjoint(names["test"])
    assert set(names["val"]).isdisjoint(names["test"])
    assert sorted(sum(names.values(), [])) == [f"class_{c:02d}" for c in range(10)]
    train = dm.sources["train"]
    assert train.images.shape == (24, 3, 20, 20) and train.images.dtype == torch.uint8
    c = int(train.names[0][-2:])  # fixture: class c, image i has red = (20 c + 3 i) % 256
    assert train.images[:4, 0, 0, 0].tolist() == [(20 * c + 3 * i) % 256 for i in range(4)]
    assert {s: make(root).layout()[s].names for s in names} == names  # deterministic
    assert make(root, split_seed=1).layout()["test"].names != names["test"]


def test_predefined_train_val_test_folders(tmp_path):
    root = tmp_path / "split"
    make_image_folder(root / "train", classes=4, per_class=3, size=16)
    make_image_folder(root / "validation", classes=2, per_class=3, size=16)
    make_image_folder(root / "test", classes=3, per_class=3, size=16)
    for split, count in (("validation", 2), ("test", 3)):  # distinct class names per split
        for c in range(count):
            (root / split / f"class_{c:02d}").rename(root / split / f"{split}_{c}")
    dm = make(root, train_fraction=0.1, val_fraction=0.1)  # fractions are ignored
    layout = dm.layout()
    assert [len(layout[s]) for s in ("train", "val", "test")] == [4, 2, 3]
    assert layout["val"].names == ["validation_0", "validation_1"]
    dm.setup("fit")
    assert dm.sources["train"].images.shape == (12, 3, 16, 16)


def test_predefined_split_errors(tmp_path):
    root = tmp_path / "split"
    make_image_folder(root / "train", classes=3, per_class=3)
    make_image_folder(root / "test", classes=2, per_class=3)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root.*val.* does not exist"):
        make(root).layout()
    make_image_folder(root / "dev", classes=2, per_class=3)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root.*\['dev'\].*not split names"):
        make(root).layout()
    (root / "dev").rename(root / "val")
    with pytest.raises(ConfigurationError, match=r"class 'class_00' is in both .*disjoint"):
        make(root).layout()


def test_mixed_sizes_need_image_size_and_are_found_before_decoding(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "mixed", classes=10, per_class=4,
                             size_of=lambda c, i: (20, 20) if (c, i) != (3, 1) else (24, 18))
    monkeypatch.setattr(folder_module, "decode_images", no_decoding)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.image_size is not set.*2 different sizes.*24x18"):
        make(root).setup("fit")
    monkeypatch.undo()
    dm = make(root, image_size=12)
    dm.setup("fit")
    assert dm.sources["train"].images.shape == (24, 3, 12, 12)


def test_channels_are_inferred_converted_and_mixed_with_a_warning(tmp_path):
    grey = make_image_folder(tmp_path / "grey", classes=10, per_class=3, mode="L")
    assert make(grey).load_split("train").image_shape == (1, 20, 20)
    colour = make_image_folder(tmp_path / "colour", classes=10, per_class=3, mode="RGB")
    assert make(colour).load_split("train").image_shape == (3, 20, 20)
    assert make(colour, channels=1).load_split("train").image_shape == (1, 20, 20)
    mixed = make_image_folder(tmp_path / "mixed", classes=10, per_class=3, mode_of=lambda c, i: "L" if c % 2 else "RGB")
    with pytest.warns(UserWarning, match=r"data\.init_args\.channels is not set.*greyscale and .*colour.*RGB"):
        source = make(mixed).load_split("test")
    assert source.image_shape == (3, 20, 20)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.channels=2"):
        make(mixed, channels=2)


def test_rotations_apply_to_meta_train_only(root):
    dm = make(root, rotations=[0, 90, 180, 270])
    assert dm.load_split("train").num_classes == 24
    assert dm.load_split("val").num_classes == 2 and dm.load_split("test").num_classes == 2


def test_second_load_reads_the_cache(root, monkeypatch):
    make(root).setup("fit")
    assert (root / ".lightning_meta_train.pt").is_file() and (root / ".lightning_meta_val.pt").is_file()
    monkeypatch.setattr(folder_module, "decode_images", no_decoding)
    again = make(root)
    again.setup("fit")
    assert again.sources["train"].images.shape == (24, 3, 20, 20)
    with pytest.raises(AssertionError, match="decoded"):
        make(root, image_size=10).setup("fit")  # other settings: decoded again
    with pytest.raises(AssertionError, match="decoded"):
        make(root, cache=False).setup("fit")


def test_folder_errors_name_the_root_field(tmp_path):
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root='.*nowhere'.*does not exist.*--data\.init_args\.root"):
        make(tmp_path / "nowhere").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root=.*holds no class folders"):
        make(tmp_path / "empty").setup("fit")
    root = make_image_folder(tmp_path / "one_empty", classes=5, per_class=3)
    shutil.rmtree(root / "class_02")
    (root / "class_02").mkdir()
    (root / "class_02" / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root=.*class_02 holds no images"):
        make(root).setup("fit")


@pytest.mark.parametrize("train, val, field", [(0.0, 0.2, "train_fraction"), (0.6, -0.1, "val_fraction"),
                                               (1.2, 0.1, "train_fraction"), (0.8, 0.2, "val_fraction")])
def test_invalid_fractions(root, train, val, field):
    with pytest.raises(ConfigurationError, match=rf"data\.init_args\.{field}"):
        make(root, train_fraction=train, val_fraction=val)


def test_episode_settings_are_checked_before_decoding(root, monkeypatch):
    monkeypatch.setattr(folder_module, "decode_images", no_decoding)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.ways=7 .* 6 of the 'train' split"):
        make(root, ways=7, test_ways=2).setup("fit")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways=3 .* 2 of the 'val' split"):
        make(root, test_ways=3).setup("fit")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_shots \+ data\.init_args\.test_queries = 2 \+ 3 = 5 exceeds the 4"):
        make(root, test_shots=2, test_queries=3).setup("test")


def test_train_dataloader_yields_task_batches(root):
    dm = make(root, channels=1, image_size=8, shots=2, queries=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (2, 4, 1, 8, 8) and batch.query_x.shape == (2, 4, 1, 8, 8)
    assert batch.support_y.tolist()[0] == [0, 0, 1, 1]
