"""OmniglotDataModule on a tiny copy of torchvision's extracted layout (PNG folders, no zip files)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_images import glyph, make_omniglot
from lightning_meta.data import omniglot as omniglot_module
from lightning_meta.data import OmniglotDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch

SMALL = dict(ways=3, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4, test_episodes=4)


@pytest.fixture
def root(tmp_path) -> Path:
    # 4 background alphabets x 3 characters, 2 evaluation alphabets x 3 characters, 5 drawings each
    return make_omniglot(tmp_path / "data")


def no_decoding(*args, **kwargs):
    raise AssertionError("images were decoded")


def make(root, **kwargs) -> OmniglotDataModule:
    return OmniglotDataModule(str(root), **{"val_alphabets": 1, **SMALL, **kwargs})


def test_loads_extracted_folders_without_zips(root):
    assert not list(root.rglob("*.zip"))
    dm = make(root)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = dm.sources["train"], dm.sources["val"], dm.sources["test"]
    assert (train.base_classes, val.base_classes, test.base_classes) == (9, 3, 6)
    assert train.images.shape == (45, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (30, 1, 28, 28)
    assert train.counts.tolist() == [5] * 9
    assert all(name.startswith("Omega_") for name in test.names)


def test_root_may_be_the_omniglot_py_folder_itself(root):
    dm = make(root / "omniglot-py")
    dm.setup("test")
    assert dm.sources["test"].base_classes == 6


@pytest.mark.parametrize("split", ["background", "vinyals"])
def test_splits_are_disjoint_deterministic_and_cover_every_character(root, split):
    kwargs = dict(split=split, train_characters=12, val_characters=3)
    dm = make(root, **kwargs)
    names = {s: dm.class_names(s) for s in ("train", "val", "test")}
    assert set(names["train"]).isdisjoint(names["val"])
    assert set(names["train"]).isdisjoint(names["test"])
    assert set(names["val"]).isdisjoint(names["test"])
    assert sorted(sum(names.values(), [])) == sorted(dm.catalog()[0].names)
    assert names == {s: make(root, **kwargs).class_names(s) for s in names}  # deterministic
    if split == "vinyals":
        assert [len(names[s]) for s in ("train", "val", "test")] == [9, 3, 6]
        other = make(root, split_seed=1, **kwargs)
        assert other.class_names("test") != names["test"]
    else:
        assert {n.split("/")[0] for n in names["val"]} == {"Alpha_2"}  # one whole background alphabet
        assert all(n.startswith("Omega_") for n in names["test"])


def test_val_alphabets_by_name(root):
    dm = make(root, val_alphabets=["Alpha_0", "Alpha_3"])
    assert {n.split("/")[0] for n in dm.class_names("val")} == {"Alpha_0", "Alpha_3"}
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.val_alphabets.*Alpha_9"):
        make(root, val_alphabets=["Alpha_9"]).assignment()
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.val_alphabets"):
        make(root, val_alphabets=4).assignment()  # all four background alphabets


def test_rotations_are_new_classes_on_meta_train_only(root):
    dm = make(root)
    dm.setup("fit")
    dm.setup("test")
    train = dm.sources["train"]
    assert train.num_classes == 4 * train.base_classes
    assert dm.sources["val"].num_classes == dm.sources["val"].base_classes
    assert dm.sources["test"].num_classes == dm.sources["test"].base_classes
    picks = torch.arange(5)
    for k in (1, 2, 3):
        rotated = train.class_samples(2 + k * train.base_classes, picks)
        assert torch.equal(rotated, torch.rot90(train.class_samples(2, picks), k, dims=(-2, -1)))
    assert make(root, rotations=[0]).load_split("train").num_classes == 9


def test_images_are_resized_with_lanczos_and_inverted(root):
    dm = make(root)
    listing, _ = dm.catalog()
    first = listing.files[0][0]
    with Image.open(first) as image:
        raw = np.asarray(image.convert("L"))
        expected = 255 - np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    images = dm.decoded()
    assert torch.equal(images[0, 0], torch.from_numpy(expected))
    assert raw.mean() > 128 and images.float().mean() < 128  # black strokes on white -> bright strokes on black
    full = make(root, image_size=105, cache=False).decoded()
    assert torch.equal(full[0, 0], torch.from_numpy(255 - raw))


def test_second_load_reads_the_cache_and_a_changed_folder_rebuilds_it(root, monkeypatch):
    make(root).setup("fit")
    cache = root / "omniglot-py" / ".lightning_meta_28.pt"
    assert cache.is_file() and not list(cache.parent.glob("*.tmp*"))
    monkeypatch.setattr(omniglot_module, "decode_images", no_decoding)
    again = make(root)
    again.setup("fit")
    assert again.sources["train"].images.shape == (45, 1, 28, 28)
    with pytest.raises(AssertionError, match="decoded"):  # another image size: another cache
        make(root, image_size=20).setup("fit")
    folder = root / "omniglot-py" / "images_background" / "Alpha_0" / "character01"
    glyph(99, 9).save(folder / "0000_06.png")
    with pytest.raises(AssertionError, match="decoded"):
        make(root).setup("fit")


def test_unwritable_or_corrupt_cache_is_not_fatal(root, monkeypatch):
    from lightning_meta.data import image_files

    def read_only(obj, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(image_files.torch, "save", read_only)
    with pytest.warns(UserWarning, match=r"could not write the decoded-image cache"):
        make(root).setup("fit")
    monkeypatch.undo()
    cache = root / "omniglot-py" / ".lightning_meta_28.pt"
    assert not cache.exists() and not list(cache.parent.glob("*.tmp*"))
    cache.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=r"ignoring the unreadable cache"):
        make(root).setup("fit")
    assert torch.load(cache, weights_only=True)["images"].shape == (90, 1, 28, 28)  # rewritten


def test_settings_are_checked_before_decoding(root, monkeypatch):
    monkeypatch.setattr(omniglot_module, "decode_images", no_decoding)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways=7.*6 of the 'test' split"):
        make(root, test_ways=7).setup("test")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.shots \+ data\.init_args\.queries = 3 \+ 3 = 6 exceeds the 5"):
        make(root, shots=3, queries=3).setup("fit")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways=4 .* 3 of the 'val' split"):
        make(root, ways=4, test_ways=None).setup("fit")


def test_invalid_arguments_name_their_field(root):
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.split='omniglot'.*background.*vinyals"):
        make(root, split="omniglot")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.rotations"):
        make(root, rotations=[0, 45])
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.image_size"):
        make(root, image_size=0)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.val_characters"):
        make(root, split="vinyals", train_characters=100, val_characters=100)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.train_characters=1200.*18 characters"):
        make(root, split="vinyals").assignment()


def test_missing_folder_names_root_and_download(tmp_path):
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root='.*nowhere'.*omniglot-py.*download: true"):
        make(tmp_path / "nowhere").setup("fit")
    (tmp_path / "half" / "omniglot-py" / "images_background").mkdir(parents=True)
    with pytest.raises(ConfigurationError, match=r"images_evaluation"):
        make(tmp_path / "half").setup("fit")


def test_empty_character_folder_is_reported(root):
    (root / "omniglot-py" / "images_background" / "Alpha_0" / "character09").mkdir()
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.root.*character09 holds no images"):
        make(root).setup("fit")


def test_download_without_network_fails_clearly(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    dm = make(tmp_path / "data", download=True)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.download.*images_background\.zip.*URLError"):
        dm.prepare_data()


def test_download_fetches_only_missing_folders(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    source = make_omniglot(tmp_path / "source")
    fetched = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        name = filename[:-4]
        assert url.endswith(f"/python/{filename}") and md5 == omniglot_module.ZIPS_MD5[name]
        fetched.append(name)
        import shutil
        shutil.copytree(source / "omniglot-py" / name, Path(download_root) / name)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    root = tmp_path / "data"
    dm = make(root, download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert fetched == ["images_background", "images_evaluation"]
    make(root, download=True).prepare_data()  # both folders present: nothing fetched
    assert len(fetched) == 2


def test_train_dataloader_yields_task_batches(root):
    dm = make(root, meta_batch_size=2, ways=3, shots=2, queries=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (2, 6, 1, 28, 28) and batch.query_x.shape == (2, 9, 1, 28, 28)
    assert batch.support_y.tolist()[0] == [0, 0, 1, 1, 2, 2]
    assert batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert val.support_x.shape == (2, 6, 1, 28, 28)
