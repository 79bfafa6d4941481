"""Loaders of tiered-ImageNet, CIFAR-FS, FC100 and CUB-200-2011 on tiny fixtures in their real on-disk
formats, and the shared download helper (offline: ``file://`` addresses)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import CONFIGS, cli, last_line, ok
from lightning_meta.data import cifar_fs as cifar_module
from lightning_meta.data import cub as cub_module
from lightning_meta.data import tiered_imagenet as tiered_module
from lightning_meta.data.cifar_fs import CIFARFSDataModule, cifar100_splits
from lightning_meta.data.cub import CUBDataModule, chen_split
from lightning_meta.data.download import extract, fetch
from lightning_meta.data.fc100 import FC100DataModule
from lightning_meta.data.tiered_imagenet import TieredImageNetDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch


# --------------------------------------------------------------------------- download helper
def served(tmp_path: Path, name: str, payload: bytes) -> str:
    path = tmp_path / "server" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path.as_uri()


def test_fetch_tries_mirrors_and_checks_the_checksum(tmp_path):
    payload = b"some data file" * 100
    good = served(tmp_path, "file.bin", payload)
    broken = (tmp_path / "nowhere" / "file.bin").as_uri()
    target = tmp_path / "data" / "file.bin"
    path = fetch([broken, good], target, md5=hashlib.md5(payload).hexdigest(), what="a test file")
    assert path == target and target.read_bytes() == payload
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary file left
    # an existing file is used as is: no address is contacted
    assert fetch([broken], target, what="a test file") == target
    # sha256 works too
    other = fetch(good, tmp_path / "data2" / "file.bin", sha256=hashlib.sha256(payload).hexdigest(), what="x")
    assert other.read_bytes() == payload


def test_fetch_checksum_mismatch_removes_the_file(tmp_path):
    url = served(tmp_path, "file.bin", b"changed contents")
    target = tmp_path / "data" / "file.bin"
    with pytest.raises(ConfigurationError) as error:
        fetch(url, target, md5="0" * 32, what="CIFAR-100 (Krizhevsky)")
    message = str(error.value)
    assert "\n" not in message and "md5 checksum mismatch" in message and "file.bin" in message
    assert "data.init_args.download" in message and str(target.parent.resolve()) in message
    assert "CIFAR-100 (Krizhevsky)" in message
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_fetch_without_any_working_mirror_names_the_sources(tmp_path):
    urls = [(tmp_path / "a" / "x.pkl").as_uri(), (tmp_path / "b" / "x.pkl").as_uri()]
    with pytest.raises(ConfigurationError, match=r"could not fetch x\.pkl, tiered-ImageNet .*a/x\.pkl.*b/x\.pkl"):
        fetch(urls, tmp_path / "data" / "x.pkl", what="tiered-ImageNet (learn2learn)")


def test_fetch_refuses_an_html_page(tmp_path):
    url = served(tmp_path, "page.html", b"<html>quota exceeded</html>")
    with pytest.raises(ConfigurationError, match="HTML page"):
        fetch(url, tmp_path / "data" / "big.pkl", what="x")


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".zip"])
def test_extract_unpacks_archives(tmp_path, suffix):
    members = {"top/a.txt": b"a", "top/sub/b.txt": b"bb"}
    archive = tmp_path / f"archive{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        make_tar(archive, members, "w" if suffix == ".tar" else "w:gz")
    out = extract(archive, tmp_path / "out")
    assert (out / "top" / "a.txt").read_bytes() == b"a" and (out / "top" / "sub" / "b.txt").read_bytes() == b"bb"
    assert sorted(p.name for p in out.iterdir()) == ["top"]  # no temporary folder left


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "top/../../escape.txt"])
def test_extract_refuses_paths_leaving_the_folder(tmp_path, name):
    tar = make_tar(tmp_path / "evil.tar.gz", {"top/ok.txt": b"ok", name: b"x"})
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("top/ok.txt", b"ok")
        z.writestr(name, b"x")
    for archive in (tar, tmp_path / "evil.zip"):
        out = tmp_path / f"out_{archive.name}"
        with pytest.raises(ConfigurationError, match="refusing to extract"):
            extract(archive, out)
        assert list(out.iterdir()) == []  # nothing written, not even the harmless member
    assert not (tmp_path / "escape.txt").exists()


def test_extract_refuses_a_link_pointing_out(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("top/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        t.addfile(info)
    with pytest.raises(ConfigurationError, match="refusing to extract 'top/link'"):
        extract(archive, tmp_path / "out")


def test_extract_of_a_broken_archive_is_a_configuration_error(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not a gzip file")
    with pytest.raises(ConfigurationError, match="not a readable archive"):
        extract(archive, tmp_path / "out")


# --------------------------------------------------------------------------- fixtures in the real formats
SMALL = dict(ways=3, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=4, val_episodes=2, test_episodes=2)
SPLITS = ("train", "val", "test")


def make_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as in the official archive (the dicts ``pickle.load(...,
    encoding="latin1")`` returns for them), all 100 classes, few images each: pixel channel 0 = fine label, channel 1
    = the image's number within its class (train images first)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = cifar100_splits()["fine_names"]
    seen = [0] * 100
    for file, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for _ in range(per_class) for c in range(100)]  # classes interleaved, as in the archive
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            data[i, 0], data[i, 1] = c, seen[c]
            seen[c] += 1
        with open(folder / file, "wb") as f:
            pickle.dump({"batch_label": "training batch 1 of 1", "filenames": ["x.png"] * len(labels),
                         "fine_labels": labels, "coarse_labels": [0] * len(labels),
                         "data": data.reshape(len(labels), -1)}, f, protocol=2)
    with open(folder / "meta", "wb") as f:  # byte-string keys and names: also accepted
        pickle.dump({b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": []}, f, protocol=2)
    return root


def png(array: np.ndarray) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)  # as Ren et al.'s cv2.imencode arrays


#: classes of each tiered-ImageNet fixture split (real wnids: the names of ImageNet synsets)
TIERED = {"train": ["n01530575", "n01531178", "n01532829", "n01534433"], "val": ["n02085620", "n02085782", "n02086240"],
          "test": ["n03000134", "n03000247", "n03000684"]}


def make_tiered(root: Path, per_class: int = 4, size: int = 84) -> Path:
    """learn2learn's ``root/tiered-imagenet/{split}_images_png.pkl`` (a list of PNG-encoded uint8 arrays)
    and ``{split}_labels.pkl`` (dict of ``label_specific``, ``label_general`` and their ``_str`` names),
    classes interleaved; pixel channel 0 = 10 * class + image number within the class."""
    folder = root / "tiered-imagenet"
    folder.mkdir(parents=True)
    for split, names in TIERED.items():
        labels = [c for i in range(per_class) for c in range(len(names))]
        seen = [0] * len(names)
        images = []
        for c in labels:
            array = np.full((size, size, 3), 7, dtype=np.uint8)
            array[..., 0] = 10 * c + seen[c]
            seen[c] += 1
            images.append(png(array))
        with open(folder / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(images, f)
        with open(folder / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": np.array(labels), "label_general": np.zeros(len(labels), dtype=np.int64),
                         "label_specific_str": names, "label_general_str": ["category"]}, f)
    return root


#: the first eight of CUB-200-2011's classes (classes.txt)
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani",
               "005.Crested_Auklet", "006.Least_Auklet", "007.Parakeet_Auklet", "008.Rhinoceros_Auklet"]


def make_cub(root: Path, per_class: int = 3) -> Path:
    """The official ``root/CUB_200_2011/`` tree for :data:`CUB_CLASSES`: JPEGs of varied sizes under
    ``images/<class>/`` (one greyscale per class, as a few real ones), ``images.txt``,
    ``image_class_labels.txt``, ``classes.txt``, ``bounding_boxes.txt`` (image ids interleaved across
    classes).  Pixel value of image ``j`` of class ``c``: 20 * c + 5 * j (+ 100 inside its box)."""
    from PIL import Image

    folder = root / "CUB_200_2011"
    (folder / "images").mkdir(parents=True)
    images, labels, boxes = [], [], []
    image_id = 0
    for j in range(per_class):
        for c, name in enumerate(CUB_CLASSES):
            image_id += 1
            width, height = 60 + 7 * c + 3 * j, 50 + 5 * j
            value = 20 * c + 5 * j
            array = np.full((height, width), value, dtype=np.uint8)
            x, y, w, h = 10.0, 8.0, 30.0, 20.0
            array[8:28, 10:40] = value + 100
            mode_image = Image.fromarray(array)
            if j != 1:
                mode_image = mode_image.convert("RGB")
            relative = f"{name}/{name.split('.')[1]}_{image_id:04d}_{1000 + image_id}.jpg"
            (folder / "images" / name).mkdir(exist_ok=True)
            mode_image.save(folder / "images" / relative, quality=100)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c + 1}")
            boxes.append(f"{image_id} {x} {y} {w} {h}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{i + 1} {n}" for i, n in enumerate(CUB_CLASSES)) + "\n")
    (folder / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return root


def make_metaoptnet_fc100(root: Path, per_class: int = 3) -> Path:
    """MetaOptNet's ``root/FC100_{train,val,test}.pickle``: dicts of ``data`` uint8 [N, 32, 32, 3] and
    ``labels`` (CIFAR-100 fine label ids of the split's super-classes), classes interleaved; pixel
    channel 0 = the fine label."""
    splits = cifar100_splits()
    fine = splits["fine_names"]
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        classes = sorted(fine.index(n) for n, c in splits["superclass"].items() if c in splits["fc100"][split])
        labels = [c for _ in range(per_class) for c in classes]
        data = np.zeros((len(labels), 32, 32, 3), dtype=np.uint8)
        data[..., 0] = np.asarray(labels, dtype=np.uint8)[:, None, None]
        with open(root / f"FC100_{split}.pickle", "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f, protocol=2)
    return root


def no_decoding(*args, **kwargs):
    raise AssertionError("images were decoded")


def names_by_split(dm) -> dict[str, set[str]]:
    return {split: set(dm.sources[split].names) for split in SPLITS}


def assert_disjoint(names: dict[str, set[str]]) -> None:
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


# --------------------------------------------------------------------------- shipped class splits
def test_shipped_cifar100_splits_match_the_papers():
    splits = cifar100_splits()
    fine, superclass = splits["fine_names"], splits["superclass"]
    assert len(fine) == 100 and fine == sorted(fine) and set(superclass) == set(fine)
    assert len(set(superclass.values())) == 20
    cifar_fs = {s: set(splits["cifar_fs"][s]) for s in SPLITS}
    assert [len(cifar_fs[s]) for s in SPLITS] == [64, 16, 20]
    assert_disjoint(cifar_fs)
    assert set().union(*cifar_fs.values()) == set(fine)
    fc100 = {s: set(splits["fc100"][s]) for s in SPLITS}
    assert [len(fc100[s]) for s in SPLITS] == [12, 4, 4] and set().union(*fc100.values()) == set(superclass.values())
    assert_disjoint(fc100)


def test_chen_split_of_cub_is_100_50_50():
    parts = [chen_split(i) for i in range(200)]
    assert (parts.count("train"), parts.count("val"), parts.count("test")) == (100, 50, 50)
    # write_CUB_filelist.py: 001 (index 0) base, 002 val, 004 novel
    assert parts[:4] == ["train", "val", "train", "test"]


# --------------------------------------------------------------------------- CIFAR-FS and FC100
@pytest.fixture
def cifar_root(tmp_path) -> Path:
    return make_cifar100(tmp_path / "data")


def test_cifar_fs_is_bertinetto_split_of_all_cifar100_images(cifar_root):
    dm = CIFARFSDataModule(str(cifar_root), **SMALL)
    dm.setup("fit")
    splits = cifar100_splits()
    assert [dm.sources[s].num_classes for s in SPLITS] == [64, 16, 20]
    names = names_by_split(dm)
    assert_disjoint(names)
    assert all(names[s] == set(splits["cifar_fs"][s]) for s in SPLITS)
    train = dm.sources["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (64 * 4, 3, 32, 32)
    assert train.counts.tolist() == [4] * 64  # the archive's 3 train + 1 test image of each class
    for c, name in enumerate(train.names):  # images grouped by class despite the archive's interleaving
        rows = train.images[4 * c:4 * (c + 1)]
        assert set(rows[:, 0, 0, 0].tolist()) == {splits["fine_names"].index(name)}
        assert sorted(rows[:, 1, 0, 0].tolist()) == [0, 1, 2, 3]


def test_cifar_image_size_and_normalize(cifar_root):
    dm = CIFARFSDataModule(str(cifar_root), image_size=16, normalize=True, **SMALL)
    source = dm.load_split("test")
    assert source.images.shape == (80, 3, 16, 16) and source.images.dtype == torch.uint8
    x = source.class_samples(0, torch.arange(1))
    mean, std = torch.tensor(cifar_module.CIFAR_MEAN).view(3, 1, 1), torch.tensor(cifar_module.CIFAR_STD).view(3, 1, 1)
    assert torch.allclose(x[0], (source.images[0].float() / 255 - mean) / std)


def test_fc100_from_cifar100_splits_by_superclass(cifar_root):
    dm = FC100DataModule(str(cifar_root), **SMALL)
    assert not dm.uses_metaoptnet
    dm.setup("fit")
    splits = cifar100_splits()
    assert [dm.sources[s].num_classes for s in SPLITS] == [60, 20, 20]
    names = names_by_split(dm)
    assert_disjoint(names)
    for split in SPLITS:
        assert {splits["superclass"][n] for n in names[split]} == set(splits["fc100"][split])


def test_fc100_reads_metaoptnet_pickles(tmp_path):
    root = make_metaoptnet_fc100(tmp_path / "data")
    dm = FC100DataModule(str(root), **SMALL)
    assert dm.uses_metaoptnet
    dm.setup("fit")
    splits = cifar100_splits()
    assert [dm.sources[s].num_classes for s in SPLITS] == [60, 20, 20]
    names = names_by_split(dm)
    assert_disjoint(names)
    assert {splits["superclass"][n] for n in names["test"]} == set(splits["fc100"]["test"])
    test = dm.sources["test"]
    assert test.images.shape == (60, 3, 32, 32) and test.images.dtype == torch.uint8
    for c, name in enumerate(test.names):
        assert set(test.images[3 * c:3 * (c + 1), 0, 0, 0].tolist()) == {splits["fine_names"].index(name)}
    # the same classes as FC100 built from CIFAR-100
    cifar = FC100DataModule(str(make_cifar100(tmp_path / "cifar")), **SMALL)
    assert all(set(cifar.class_names(s)) == names[s] for s in SPLITS)


def test_fc100_metaoptnet_layout_missing_file(tmp_path):
    with pytest.raises(ConfigurationError) as error:
        FC100DataModule(str(tmp_path), layout="metaoptnet", **SMALL).setup("fit")
    assert_one_line(error, "FC100_train.pickle is missing", "data.init_args.download: true", "MetaOptNet")
    with pytest.raises(ConfigurationError, match="layout='pickles' is unknown"):
        FC100DataModule(str(tmp_path), layout="pickles")


def test_cifar_missing_files_and_bad_structure(tmp_path, cifar_root):
    with pytest.raises(ConfigurationError) as error:
        CIFARFSDataModule(str(tmp_path / "nothing"), **SMALL).setup("fit")
    assert_one_line(error, "data.init_args.root=", "does not exist", "data.init_args.download: true",
                    "cifar-100-python")
    (cifar_root / "cifar-100-python" / "test").unlink()
    with pytest.raises(ConfigurationError) as error:
        CIFARFSDataModule(str(cifar_root), **SMALL).setup("fit")
    assert_one_line(error, "cifar-100-python/test is missing", "data.init_args.download: true")
    with open(cifar_root / "cifar-100-python" / "test", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ConfigurationError) as error:
        CIFARFSDataModule(str(cifar_root), **SMALL).setup("fit")
    assert_one_line(error, "not in CIFAR-100's python format")


def test_cifar_too_many_ways_fails_before_loading(cifar_root):
    with pytest.raises(ConfigurationError, match=r"data.init_args.test_ways=17 asks for more classes than the 16"):
        CIFARFSDataModule(str(cifar_root), **{**SMALL, "test_ways": 17}).setup("fit")
    with pytest.raises(ConfigurationError, match=r"shots \+ data.init_args.queries = 1 \+ 4 = 5 exceeds the 4"):
        CIFARFSDataModule(str(cifar_root), **{**SMALL, "queries": 4}).setup("fit")


def test_cifar_archive_is_extracted_and_downloaded_with_its_checksum(tmp_path, monkeypatch):
    source = make_cifar100(tmp_path / "built")
    archive = tmp_path / "server" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as t:
        t.add(source / "cifar-100-python", arcname="cifar-100-python")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar_module, "CIFAR_URLS", ((tmp_path / "gone.tgz").as_uri(), archive.as_uri()))
    monkeypatch.setattr(cifar_module, "CIFAR_MD5", "0" * 32)
    with pytest.raises(ConfigurationError) as error:  # a changed file: refused, deleted
        CIFARFSDataModule(str(tmp_path / "data"), download=True, **SMALL).prepare_data()
    assert_one_line(error, "md5 checksum mismatch", "cifar-100-python.tar.gz", "data.init_args.download")
    assert not (tmp_path / "data" / "cifar-100-python.tar.gz").exists()
    monkeypatch.setattr(cifar_module, "CIFAR_MD5", md5)
    dm = CIFARFSDataModule(str(tmp_path / "data"), download=True, **SMALL)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.sources["val"].num_classes == 16
    # an archive the user copied in is extracted without download
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / archive.name).write_bytes(archive.read_bytes())
    assert FC100DataModule(str(tmp_path / "copy"), **SMALL).split_counts("train") == (60, 4)


# --------------------------------------------------------------------------- tiered-ImageNet
@pytest.fixture
def tiered_root(tmp_path) -> Path:
    return make_tiered(tmp_path / "data")


def test_tiered_decodes_png_pickles_grouped_by_class(tiered_root):
    dm = TieredImageNetDataModule(str(tiered_root), **SMALL)
    dm.setup("fit")
    assert [dm.sources[s].num_classes for s in SPLITS] == [4, 3, 3]
    names = names_by_split(dm)
    assert_disjoint(names)
    assert all(names[s] == set(TIERED[s]) for s in SPLITS)
    train = dm.sources["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (16, 3, 84, 84)
    assert train.images[:, 0, 0, 0].tolist() == [10 * c + j for c in range(4) for j in range(4)]
    assert set(train.images[:, 1:].unique().tolist()) == {7}


def test_tiered_cache_is_reused(tiered_root, monkeypatch):
    TieredImageNetDataModule(str(tiered_root), **SMALL).setup("fit")
    caches = sorted(p.name for p in (tiered_root / "tiered-imagenet").glob(".lightning_meta_*"))
    assert caches == [".lightning_meta_test_84.pt", ".lightning_meta_train_84.pt", ".lightning_meta_val_84.pt"]
    monkeypatch.setattr(tiered_module, "decode_png_blobs", no_decoding)
    again = TieredImageNetDataModule(str(tiered_root), **SMALL)
    again.setup("fit")  # decodes nothing
    assert again.sources["train"].images[:, 0, 0, 0].tolist()[:4] == [0, 1, 2, 3]
    with pytest.raises(AssertionError, match="decoded"):  # another size: another cache
        TieredImageNetDataModule(str(tiered_root), image_size=42, **SMALL).setup("fit")
    monkeypatch.undo()
    small = TieredImageNetDataModule(str(tiered_root), image_size=42, **SMALL)
    small.setup("test")
    assert small.sources["test"].images.shape == (12, 3, 42, 42)


def test_tiered_missing_and_malformed_files(tmp_path, tiered_root):
    with pytest.raises(ConfigurationError) as error:
        TieredImageNetDataModule(str(tmp_path / "nothing"), **SMALL).setup("fit")
    assert_one_line(error, "tiered-ImageNet not found", "does not exist", "data.init_args.download: true")
    folder = tiered_root / "tiered-imagenet"
    (folder / "val_images_png.pkl").rename(folder / "val.bak")
    with pytest.raises(ConfigurationError) as error:
        TieredImageNetDataModule(str(tiered_root), **SMALL).setup("fit")
    assert_one_line(error, "val_images_png.pkl is missing", "learn2learn", "data.init_args.download: true")
    (folder / "val.bak").rename(folder / "val_images_png.pkl")
    with open(folder / "test_labels.pkl", "wb") as f:
        pickle.dump({"labels": [0, 1]}, f)
    with pytest.raises(ConfigurationError) as error:
        TieredImageNetDataModule(str(tiered_root), **SMALL).setup("test")
    assert_one_line(error, "test_labels.pkl is not in learn2learn's tiered-ImageNet format", "label_specific")
    with open(folder / "test_labels.pkl", "wb") as f:
        pickle.dump({"label_specific": np.array([0, 1, 2, 0, 1, 2])}, f)  # 6 labels, 12 images
    with pytest.raises(ConfigurationError) as error:
        TieredImageNetDataModule(str(tiered_root), **{**SMALL, "test_queries": 1}).setup("test")
    assert_one_line(error, "test_images_png.pkl is not in learn2learn's tiered-ImageNet format", "6 PNG-encoded")


def test_tiered_too_many_ways(tiered_root):
    with pytest.raises(ConfigurationError, match=r"data.init_args.ways=5 asks for more classes than the 4"):
        TieredImageNetDataModule(str(tiered_root), **{**SMALL, "ways": 5}).setup("fit")


def test_tiered_download_fetches_each_pickle(tmp_path, monkeypatch):
    built = make_tiered(tmp_path / "server") / "tiered-imagenet"
    for path in built.iterdir():  # the Zenodo record's names
        path.rename(path.with_name(f"tiered-imagenet-{path.name}"))
    monkeypatch.setattr(tiered_module, "ZENODO", built.as_uri() + "/tiered-imagenet-{name}")
    dm = TieredImageNetDataModule(str(tmp_path / "data"), download=True, **SMALL)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "data" / "tiered-imagenet").iterdir()) == sorted(
        f"{s}_{kind}.pkl" for s in SPLITS for kind in ("images_png", "labels"))
    dm.setup("fit")
    assert dm.sources["train"].num_classes == 4


# --------------------------------------------------------------------------- CUB-200-2011
@pytest.fixture
def cub_root(tmp_path) -> Path:
    return make_cub(tmp_path / "data")


def test_cub_chen_split_rgb_resized(cub_root):
    dm = CUBDataModule(str(cub_root), **{**SMALL, "ways": 2})
    dm.setup("fit")
    assert [dm.sources[s].names for s in SPLITS] == [CUB_CLASSES[0::2], [CUB_CLASSES[1], CUB_CLASSES[5]],
                                                      [CUB_CLASSES[3], CUB_CLASSES[7]]]
    assert_disjoint(names_by_split(dm))
    train = dm.sources["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (12, 3, 84, 84)
    corner = train.images[:, :, 1, 1].tolist()  # background pixel: 20 * class + 5 * image, grey -> equal RGB
    assert [pixel[0] for pixel in corner] == pytest.approx([20 * c + 5 * j for c in (0, 2, 4, 6) for j in range(3)], abs=2)
    assert all(max(p) - min(p) <= 2 for p in corner)
    assert dm.class_names("val") == [CUB_CLASSES[1], CUB_CLASSES[5]]


def test_cub_crop_to_bounding_box(cub_root):
    dm = CUBDataModule(str(cub_root), crop_to_bounding_box=True, image_size=32, **{**SMALL, "ways": 2})
    test = dm.load_split("test")
    assert test.images.shape == (6, 3, 32, 32)
    # only the box (background + 100) is left: every pixel of image j of class c is 20 c + 5 j + 100
    expected = torch.tensor([20 * c + 5 * j + 100 for c in (3, 7) for j in range(3)], dtype=torch.float32)
    assert torch.allclose(test.images.float().mean(dim=(1, 2, 3)), expected, atol=2)


def test_cub_cache_is_reused(cub_root, monkeypatch):
    for crop in (False, True):
        CUBDataModule(str(cub_root), crop_to_bounding_box=crop, **{**SMALL, "ways": 2}).setup("fit")
    folder = cub_root / "CUB_200_2011"
    assert {p.name for p in folder.glob(".lightning_meta_*")} == {".lightning_meta_84.pt", ".lightning_meta_84_bbox.pt"}
    monkeypatch.setattr(cub_module, "decode_images", no_decoding)
    monkeypatch.setattr(cub_module, "decode_cropped", no_decoding)
    for crop in (False, True):
        dm = CUBDataModule(str(cub_root), crop_to_bounding_box=crop, **{**SMALL, "ways": 2})
        dm.setup("fit")  # decodes nothing
        assert dm.sources["train"].num_classes == 4
    with pytest.raises(AssertionError, match="decoded"):
        CUBDataModule(str(cub_root), image_size=40, **{**SMALL, "ways": 2}).setup("fit")


def test_cub_missing_and_malformed_files(tmp_path, cub_root):
    with pytest.raises(ConfigurationError) as error:
        CUBDataModule(str(tmp_path / "nothing"), **SMALL).setup("fit")
    assert_one_line(error, "CUB-200-2011 not found", "does not exist", "data.init_args.download: true")
    folder = cub_root / "CUB_200_2011"
    (folder / "bounding_boxes.txt").unlink()
    CUBDataModule(str(cub_root), **{**SMALL, "ways": 2}).split_counts("train")  # not needed without cropping
    with pytest.raises(ConfigurationError) as error:
        CUBDataModule(str(cub_root), crop_to_bounding_box=True, **{**SMALL, "ways": 2}).setup("fit")
    assert_one_line(error, "bounding_boxes.txt is missing", "data.init_args.download: true")
    first = sorted((folder / "images" / CUB_CLASSES[2]).iterdir())[0]
    first.unlink()
    with pytest.raises(ConfigurationError) as error:
        CUBDataModule(str(cub_root), **{**SMALL, "ways": 2}).setup("fit")
    assert_one_line(error, f"{first.name} is listed in images.txt but missing")
    (folder / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(ConfigurationError) as error:
        CUBDataModule(str(cub_root), **{**SMALL, "ways": 2}).setup("fit")
    assert_one_line(error, "image_class_labels.txt line 2 is '2'")


def test_cub_too_many_ways(cub_root):
    with pytest.raises(ConfigurationError, match=r"data.init_args.test_ways=3 asks for more classes than the 2"):
        CUBDataModule(str(cub_root), **{**SMALL, "ways": 2, "test_ways": 3}).setup("fit")


def test_cub_downloads_and_extracts_the_archive(tmp_path, cub_root, monkeypatch):
    archive = tmp_path / "server" / "CUB_200_2011.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as t:
        t.add(cub_root / "CUB_200_2011", arcname="CUB_200_2011")
        t.add(cub_root / "CUB_200_2011" / "classes.txt", arcname="attributes.txt")
    monkeypatch.setattr(cub_module, "URLS", (archive.as_uri(),))
    monkeypatch.setattr(cub_module, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    dm = CUBDataModule(str(tmp_path / "fresh"), download=True, **{**SMALL, "ways": 2})
    dm.prepare_data()
    assert (tmp_path / "fresh" / "CUB_200_2011" / "images.txt").is_file()
    dm.setup("fit")
    assert dm.sources["test"].num_classes == 2


# --------------------------------------------------------------------------- episodes
@pytest.mark.parametrize("kind", ["cifar_fs", "fc100", "tiered", "cub"])
def test_one_training_episode(tmp_path, kind):
    if kind == "cub":
        dm, size = CUBDataModule(str(make_cub(tmp_path)), **{**SMALL, "ways": 2}), 84
    elif kind == "tiered":
        dm, size = TieredImageNetDataModule(str(make_tiered(tmp_path)), **SMALL), 84
    else:
        module = CIFARFSDataModule if kind == "cifar_fs" else FC100DataModule
        dm, size = module(str(make_cifar100(tmp_path)), **SMALL), 32
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    ways = dm.ways
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (2, ways, 3, size, size) and batch.query_x.shape == (2, 2 * ways, 3, size, size)
    assert batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    assert batch.support_y.tolist() == [list(range(ways))] * 2


# --------------------------------------------------------------------------- through the CLI
def test_cli_fit_on_a_tiny_cub_copy(tmp_path):
    root = make_cub(tmp_path / "data")
    run = ok(cli("fit", "--config", CONFIGS / "protonet_cub_5w1s.yaml", "--data.init_args.root", root,
                 "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                 "--data.init_args.image_size", "16", "--model.init_args.embedding.init_args.image_size", "16",
                 "--model.init_args.embedding.init_args.hidden_channels", "4",
                 "--data.init_args.ways", "2", "--data.init_args.test_ways", "2", "--data.init_args.queries", "1",
                 "--data.init_args.test_queries", "1", "--data.init_args.episodes_per_epoch", "2",
                 "--data.init_args.val_episodes", "2", "--data.init_args.test_episodes", "2", cwd=tmp_path))
    assert "test/acc" in run.stdout + run.stderr
    assert (root / "CUB_200_2011" / ".lightning_meta_16.pt").is_file()


def test_cli_missing_file_is_one_line(tmp_path):
    run = cli("fit", "--config", CONFIGS / "maml_tieredimagenet_5w1s.yaml", "--trainer.accelerator", "cpu",
              "--data.init_args.root", tmp_path / "nothing", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    line = last_line(run.stderr)
    assert line.removeprefix("lightning-meta: ").startswith("configuration error: data.init_args.root="), line
    assert "tiered-ImageNet not found" in line and "data.init_args.download: true" in line


def test_tiered_download_falls_back_to_the_drive_tar(tmp_path, monkeypatch):
    built = make_tiered(tmp_path / "server")
    archive = tmp_path / "server" / "tiered_imagenet.tar"
    with tarfile.open(archive, "w") as t:
        t.add(built / "tiered-imagenet", arcname="tiered-imagenet")
    data = tmp_path / "data" / "tiered-imagenet"
    data.mkdir(parents=True)
    (data / "train_labels.pkl").write_bytes((built / "tiered-imagenet" / "train_labels.pkl").read_bytes())
    monkeypatch.setattr(tiered_module, "ZENODO", (tmp_path / "gone").as_uri() + "/{name}")
    monkeypatch.setattr(tiered_module, "google_drive_url", lambda file_id: archive.as_uri())
    dm = TieredImageNetDataModule(str(tmp_path / "data"), download=True, **SMALL)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tiered-imagenet"]  # tar and temp folder gone
    dm.setup("fit")
    assert [dm.sources[s].num_classes for s in SPLITS] == [4, 3, 3]
