"""The Meta-Dataset source loaders (FGVC-Aircraft, VGG Flowers, DTD, Quickdraw, Fungi) on tiny copies of
their official archives' layouts (real file names and annotation formats), built in ``tmp_path``.

Tiny fixtures hold a few classes named after real classes of Meta-Dataset's split and pass their own
split with ``split_file`` (Meta-Dataset's JSON format); the shipped splits themselves are checked on
fixtures that hold every class (listings only, nothing decoded) and against Meta-Dataset's own split
generator.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import CONFIGS, cli, last_line, ok
from lightning_meta.data.aircraft import AircraftDataModule
from lightning_meta.data.dtd import DTDDataModule
from lightning_meta.data.fungi import FungiDataModule
from lightning_meta.data.meta_dataset_sources import SPLITS_FOLDER, Archive, MetaDatasetSource
from lightning_meta.data.quickdraw import QuickdrawDataModule
from lightning_meta.data.vgg_flowers import VGGFlowersDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch

SMALL = dict(ways=2, shots=1, queries=1, meta_batch_size=2, episodes_per_epoch=2, val_episodes=2, test_episodes=2,
             image_size=16)
#: Meta-Dataset's class counts of each split (Triantafillou et al. 2020, Table 1 / its split files)
COUNTS = {"aircraft": (70, 15, 15), "vgg_flower": (71, 15, 16), "dtd": (33, 7, 7), "quickdraw": (241, 52, 52),
          "fungi": (994, 200, 200)}


def official(source: str) -> dict[str, list]:
    return json.loads((SPLITS_FOLDER / f"meta_dataset_{source}.json").read_text())


def write_split(path: Path, train: list, valid: list, test: list) -> str:
    path.write_text(json.dumps({"train": train, "valid": valid, "test": test}))
    return str(path)


def photo(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A small RGB "photograph": one colour per ``seed`` plus noise (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, size=3)
    pixels = np.clip(colour + rng.normal(0, 8, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def no_decoding(*args, **kwargs):
    raise AssertionError("images were decoded")


# --------------------------------------------------------------------------- fixtures in the real layouts
def make_dtd(root: Path, classes: list[str], images: int = 3) -> Path:
    """``root/dtd/images/<class>/<class>_NNNN.jpg`` (the archive's layout)."""
    for c, name in enumerate(classes):
        folder = root / "dtd" / "images" / name
        folder.mkdir(parents=True)
        for i in range(images):
            photo(100 * c + i).save(folder / f"{name}_{i + 1:04d}.jpg")
    return root


def make_aircraft(root: Path, variants: list[str], images: int = 3, listed: list[str] = (),
                  decodable: bool = True) -> Path:
    """``root/fgvc-aircraft-2013b/data/``: images/<id>.jpg, images_variant_{trainval,test}.txt,
    variants.txt (all 100 names of ``listed`` + ``variants``), images_box.txt."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    trainval, test, boxes = [], [], []
    for c, variant in enumerate(variants):
        for i in range(images):
            image = f"{1000000 + 100 * c + i:07d}"
            (trainval if i % 2 == 0 else test).append(f"{image} {variant}")
            boxes.append(f"{image} 2 3 21 17")
            if decodable:
                photo(100 * c + i, (24, 40)).save(data / "images" / f"{image}.jpg")
            else:
                (data / "images" / f"{image}.jpg").touch()
    (data / "images_variant_trainval.txt").write_text("\n".join(trainval) + "\n")
    (data / "images_variant_test.txt").write_text("\n".join(test) + "\n")
    (data / "variants.txt").write_text("\n".join(sorted(set(variants) | set(listed))) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root


def make_flowers(root: Path, labels: list[int], images: int = 3, decodable: bool = True) -> Path:
    """``root/jpg/image_NNNNN.jpg`` and ``root/imagelabels.mat`` (``labels`` ``[1, N]``, 1-based)."""
    from scipy.io import savemat

    (root / "jpg").mkdir(parents=True)
    per_image = [label for label in labels for _ in range(images)]
    for i, label in enumerate(per_image):
        path = root / "jpg" / f"image_{i + 1:05d}.jpg"
        if decodable:
            photo(1000 * label + i).save(path)
        else:
            path.touch()
    savemat(str(root / "imagelabels.mat"), {"labels": np.array([per_image], dtype=np.uint8)})
    return root


def make_fungi(root: Path, categories: dict[int, str], images: int = 3, decodable: bool = True) -> Path:
    """``root/train.json`` and ``root/val.json`` (COCO-style) and ``root/images/<class>/*.JPG``; the two
    files share the categories, the images alternate between them."""
    files = {"train.json": {"images": [], "annotations": []}, "val.json": {"images": [], "annotations": []}}
    image_id = 0
    for category, name in categories.items():
        folder = root / "images" / f"{10000 + category}_{name.replace(' ', '_')}"
        folder.mkdir(parents=True)
        for i in range(images):
            path = folder / f"DSC_{image_id:05d}.JPG"
            if decodable:
                photo(image_id).save(path, format="JPEG")
            else:
                path.touch()
            part = files["train.json" if i % 2 == 0 else "val.json"]
            part["images"].append({"id": image_id, "file_name": str(path.relative_to(root)), "width": 24})
            part["annotations"].append({"id": image_id, "image_id": image_id, "category_id": category})
            image_id += 1
    all_categories = [{"id": c, "name": n, "supercategory": "Fungi"} for c, n in sorted(categories.items())]
    for name, part in files.items():
        (root / name).write_text(json.dumps({**part, "categories": all_categories}))
    return root


def make_quickdraw(root: Path, classes: list[str], drawings: int = 5) -> Path:
    """``root/<class>.npy``: uint8 ``[drawings, 784]``, drawing ``i`` of class ``c`` all ``c * 16 + i``
    except a bright square (bright strokes on black, as Google's bitmaps)."""
    root.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        x = np.full((drawings, 28, 28), 0, dtype=np.uint8)
        for i in range(drawings):
            x[i] = c * 16 + i
            x[i, 10:18, 10:18] = 255
        np.save(root / f"{name}.npy", x.reshape(drawings, 784))
    return root


# --------------------------------------------------------------------------- the shipped splits
def gen_rand_split_inds(train: int, valid: int, test: int) -> tuple[list[int], list[int], list[int]]:
    """Meta-Dataset's split generator (dataset_to_records.py) with its RandomState(22)."""
    rng = np.random.RandomState(22)
    total = train + valid + test
    trainval = rng.choice(total, train + valid, replace=False)
    test_inds = np.setdiff1d(np.arange(total), trainval)
    train_inds = rng.choice(trainval, train, replace=False)
    return train_inds.tolist(), np.setdiff1d(trainval, train_inds).tolist(), test_inds.tolist()


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_shipped_splits_have_meta_datasets_counts_and_are_disjoint(source):
    split = official(source)
    assert tuple(len(split[k]) for k in ("train", "valid", "test")) == COUNTS[source]
    everything = split["train"] + split["valid"] + split["test"]
    assert len(set(everything)) == len(everything)
    if source == "fungi":
        assert sorted(everything) == list(range(1394))  # category ids 0 .. 1393
    if source == "vgg_flower":
        assert sorted(everything) == list(range(1, 103))


@pytest.mark.parametrize("source", ["aircraft", "dtd", "quickdraw", "vgg_flower"])
def test_shipped_splits_are_meta_datasets_generator_output(source):
    """Meta-Dataset derives these splits with gen_rand_split_inds on the sorted classes: the shipped lists
    are exactly its output (order included), so no class was mistyped."""
    split = official(source)
    classes = sorted(split["train"] + split["valid"] + split["test"])
    if source == "vgg_flower":
        classes = [c for c in range(1, 103)]
    derived = gen_rand_split_inds(*COUNTS[source])
    assert [[classes[i] for i in part] for part in derived] == [split["train"], split["valid"], split["test"]]


# --------------------------------------------------------------------------- every class: the shipped split applies
def full_module(source: str, tmp_path: Path, monkeypatch) -> MetaDatasetSource:
    """A data module over a fixture holding every class of Meta-Dataset's split (listings only)."""
    split = official(source)
    everything = split["train"] + split["valid"] + split["test"]
    root = tmp_path / source
    if source == "dtd":
        make_dtd(root, everything, images=2)
        dm = DTDDataModule(str(root), **SMALL)
    elif source == "aircraft":
        make_aircraft(root, everything, images=2, decodable=False)
        dm = AircraftDataModule(str(root), **SMALL)
    elif source == "vgg_flower":
        make_flowers(root, sorted(everything), images=2, decodable=False)
        dm = VGGFlowersDataModule(str(root), **SMALL)
    elif source == "fungi":
        make_fungi(root, {c: f"Species {c}" for c in everything}, images=2, decodable=False)
        dm = FungiDataModule(str(root), **SMALL)
    else:
        root.mkdir()
        for name in everything:
            np.save(root / f"{name}.npy", np.zeros((2, 784), dtype=np.uint8))
        dm = QuickdrawDataModule(str(root), **SMALL)
    monkeypatch.setattr(type(dm), "decode", no_decoding)
    return dm


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_official_split_from_the_listing(source, tmp_path, monkeypatch):
    dm = full_module(source, tmp_path, monkeypatch)
    assert [dm.split_counts(s) for s in ("train", "val", "test")] == [(n, 2) for n in COUNTS[source]]
    names = {s: dm.class_names(s) for s in ("train", "val", "test")}
    assert not (set(names["train"]) & set(names["val"])) and not (set(names["train"]) & set(names["test"]))
    assert not (set(names["val"]) & set(names["test"]))
    split = official(source)
    if source == "fungi":
        assert names["test"][0] == f"{split['test'][0]:04d}.Species {split['test'][0]}"
    elif source == "vgg_flower":
        assert names["val"] == [f"{label:03d}" for label in split["valid"]]
    else:
        assert names["train"] == split["train"] and names["test"] == split["test"]
    # impossible settings fail from the listing, before anything is decoded
    dm.test_ways = COUNTS[source][2] + 1
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways"):
        dm.setup("test")


# --------------------------------------------------------------------------- tiny fixtures, one per source
def tiny(source: str, tmp_path: Path, **kwargs) -> MetaDatasetSource:
    """A data module over 2 + 2 + 2 classes (named after real classes of Meta-Dataset's split, with the
    fixture's own split_file), 3 images each."""
    split = official(source)
    train, valid, test = split["train"][:2], split["valid"][:2], split["test"][:2]
    root = tmp_path / source
    root.mkdir(parents=True, exist_ok=True)
    split_file = write_split(tmp_path / f"{source}_split.json", train, valid, test)
    args = {**SMALL, "split_file": split_file, **kwargs}
    if source == "dtd":
        return DTDDataModule(str(make_dtd(root, train + valid + test)), **args)
    if source == "aircraft":
        return AircraftDataModule(str(make_aircraft(root, train + valid + test, listed=split["train"])), **args)
    if source == "vgg_flower":
        return VGGFlowersDataModule(str(make_flowers(root, train + valid + test)), **args)
    if source == "fungi":
        return FungiDataModule(str(make_fungi(root, {c: f"Species {c}" for c in train + valid + test})), **args)
    return QuickdrawDataModule(str(make_quickdraw(root, train + valid + test)), **args)


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_tiny_copy_serves_episodes_from_disjoint_classes(source, tmp_path):
    dm = tiny(source, tmp_path)
    dm.setup("fit")
    names = {s: dm.sources[s].names for s in ("train", "val", "test")}
    assert all(len(n) == 2 for n in names.values())
    assert len(set(names["train"]) | set(names["val"]) | set(names["test"])) == 6
    for split in ("train", "val", "test"):
        pool = dm.sources[split]
        assert pool.images.dtype == torch.uint8 and pool.image_shape == (3, 16, 16)
        assert pool.counts.tolist() == ([5, 5] if source == "quickdraw" else [3, 3])
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (2, 2, 3, 16, 16) and batch.query_x.shape == (2, 2, 3, 16, 16)
    assert batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch.query_x.shape == (2, 2, 3, 16, 16)


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_decoded_once_then_read_from_the_cache(source, tmp_path, monkeypatch):
    dm = tiny(source, tmp_path)
    dm.setup("test")
    first = dm.sources["test"].images
    cache = dm.cache_path("test")
    assert cache.is_file() and cache.parent == dm.folder
    again = type(dm)(dm.root, **{**SMALL, "split_file": dm.split_file})
    monkeypatch.setattr(type(dm), "decode", no_decoding)
    again.setup("test")
    assert torch.equal(again.sources["test"].images, first)
    # another image size is another cache: decoded again
    other = type(dm)(dm.root, **{**SMALL, "image_size": 8, "split_file": dm.split_file})
    with pytest.raises(AssertionError, match="decoded"):
        other.setup("test")


def test_dtd_images_are_the_files_resized(tmp_path):
    dm = tiny("dtd", tmp_path, image_size=24)
    dm.setup("test")
    name = dm.class_names("test")[0]
    first = sorted((dm.folder / "images" / name).iterdir())[0]
    expected = np.array(Image.open(first).convert("RGB").resize((24, 24), Image.Resampling.LANCZOS))
    assert torch.equal(dm.sources["test"].images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_aircraft_crops(tmp_path):
    data = make_aircraft(tmp_path / "a", ["707-320", "A318"], images=1) / "fgvc-aircraft-2013b" / "data"
    # image 1000000: blue above, a red 20-pixel banner at the bottom, a green box at (2, 3)-(21, 17)
    pixels = np.zeros((40, 24, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[20:] = (255, 0, 0)
    pixels[3:17, 2:21] = (0, 255, 0)
    Image.fromarray(pixels).save(data / "images" / "1000000.png")
    (data / "images" / "1000000.png").rename(data / "images" / "1000000.jpg")
    split = write_split(tmp_path / "s.json", ["707-320"], ["A318"], ["A318"])
    with pytest.raises(ConfigurationError, match="both"):  # one class in two splits
        AircraftDataModule(str(tmp_path / "a"), split_file=split, **SMALL).class_names("train")
    split = write_split(tmp_path / "s.json", ["707-320"], [], [])

    def first_image(crop: str) -> np.ndarray:
        dm = AircraftDataModule(str(tmp_path / "a"), crop=crop, split_file=split, cache=False, **SMALL)
        return dm.load_split("train").images[0].permute(1, 2, 0).numpy().astype(int)

    box = first_image("box")
    assert (abs(box - [0, 255, 0]).max(-1) < 40).mean() > 0.9          # the green box alone
    banner = first_image("banner")
    assert (abs(banner - [255, 0, 0]).max(-1) < 60).mean() < 0.05       # the red banner is gone
    whole = first_image("none")
    assert (abs(whole - [255, 0, 0]).max(-1) < 60).mean() > 0.3         # ... but not without cropping


def test_flowers_labels_come_from_imagelabels_mat(tmp_path):
    dm = tiny("vgg_flower", tmp_path)
    split = official("vgg_flower")
    assert dm.class_names("train") == [f"{label:03d}" for label in split["train"][:2]]
    # labels were written class by class, 3 images each: class i holds images 3i+1 .. 3i+3
    assert [p.name for p in dm.split_files("train").files[0]] == ["image_00001.jpg", "image_00002.jpg",
                                                                  "image_00003.jpg"]


def test_flowers_without_scipy_is_a_clear_error(tmp_path, monkeypatch):
    dm = tiny("vgg_flower", tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ConfigurationError, match="needs scipy.*pip install scipy"):
        dm.setup("test")


def test_fungi_reads_both_annotation_files(tmp_path):
    dm = tiny("fungi", tmp_path)
    category = official("fungi")["train"][0]
    assert dm.class_names("train")[0] == f"{category:04d}.Species {category}"
    files = dm.split_files("train").files[0]
    assert len(files) == 3 and {p.parent.name for p in files} == {f"{10000 + category}_Species_{category}"}
    assert (dm.folder / "train.json").is_file() and (dm.folder / "val.json").is_file()


def test_quickdraw_caps_drawings_and_keeps_pixels(tmp_path):
    dm = tiny("quickdraw", tmp_path, samples_per_class=3, image_size=28, channels=1)
    dm.setup("test")
    pool = dm.sources["test"]
    assert pool.counts.tolist() == [3, 3] and pool.image_shape == (1, 28, 28)
    stored = np.load(dm.folder / f"{dm.class_names('test')[1]}.npy")
    assert torch.equal(pool.images[3:6, 0], torch.from_numpy(stored[:3].reshape(3, 28, 28)))
    assert "_c1_n3" in dm.cache_path("test").name


@pytest.mark.parametrize("kwargs, field", [
    (dict(crop="middle"), "crop"), (dict(image_size=0), "image_size")])
def test_aircraft_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(ConfigurationError, match=rf"data\.init_args\.{field}"):
        AircraftDataModule(str(tmp_path), **{**SMALL, **kwargs})


@pytest.mark.parametrize("kwargs, field", [(dict(samples_per_class=0), "samples_per_class"),
                                           (dict(channels=2), "channels")])
def test_quickdraw_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(ConfigurationError, match=rf"data\.init_args\.{field}"):
        QuickdrawDataModule(str(tmp_path), **{**SMALL, **kwargs})


def test_a_split_naming_absent_classes_and_bad_split_files(tmp_path):
    make_dtd(tmp_path / "d", ["banded", "bumpy"])
    with pytest.raises(ConfigurationError, match=r"lacks 33 class\(es\) of the 'train' split.*split_file"):
        DTDDataModule(str(tmp_path / "d"), **SMALL).setup("fit")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.split_file=.*not a split file"):
        DTDDataModule(str(tmp_path / "d"), split_file=str(tmp_path / "bad.json"), **SMALL).setup("fit")
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.split_file=.*cannot be read"):
        DTDDataModule(str(tmp_path / "d"), split_file=str(tmp_path / "none.json"), **SMALL).setup("fit")


@pytest.mark.parametrize("source, missing, origin", [
    ("dtd", "dtd/images", "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/"),
    ("aircraft", "fgvc-aircraft-2013b/data/images_variant_trainval.txt", "fgvc-aircraft-2013b.tar.gz"),
    ("vgg_flower", "imagelabels.mat", "102flowers.tgz"),
    ("fungi", "train.json", "fungi_train_val.tgz"),
    ("quickdraw", "hedgehog.npy", "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/hedgehog.npy"),
])
def test_missing_files_name_the_file_its_origin_and_the_download_flag(source, missing, origin, tmp_path):
    module = {"dtd": DTDDataModule, "aircraft": AircraftDataModule, "vgg_flower": VGGFlowersDataModule,
              "fungi": FungiDataModule, "quickdraw": QuickdrawDataModule}[source]
    with pytest.raises(ConfigurationError) as error:
        module(str(tmp_path / "empty"), **SMALL).setup("fit")
    message = str(error.value)
    assert "\n" not in message and str((tmp_path / "empty" / missing).resolve()) in message
    assert origin in message and "data.init_args.download: true" in message


def test_a_missing_image_named_in_the_annotations_is_named(tmp_path):
    dm = tiny("fungi", tmp_path)
    root = Path(dm.root)
    victim = sorted((root / "images").rglob("*.JPG"))[0]
    victim.unlink()
    fresh = FungiDataModule(dm.root, **{**SMALL, "split_file": dm.split_file})
    with pytest.raises(ConfigurationError, match=str(victim.resolve()).replace(".", r"\.")):
        fresh.setup("fit")


def test_a_missing_aircraft_image_is_named(tmp_path):
    dm = tiny("aircraft", tmp_path)
    victim = dm.split_files("val").files[1][0]
    victim.unlink()
    fresh = AircraftDataModule(dm.root, **{**SMALL, "split_file": dm.split_file})
    with pytest.raises(ConfigurationError, match=rf"{victim.name} is missing.*fgvc-aircraft-2013b\.tar\.gz"):
        fresh.setup("validate")


def test_download_fetches_checks_and_extracts_the_archive(tmp_path, monkeypatch):
    """``download: true`` with the archive at a file:// address (no network): fetched with its md5,
    extracted, read; a wrong md5 is one error line naming the file and the flag."""
    source = make_dtd(tmp_path / "src", official("dtd")["train"][:2] + ["gauzy", "grid", "banded", "bumpy"])
    archive = tmp_path / "dtd-r1.0.1.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "dtd", arcname="dtd")
    archive.write_bytes(buffer.getvalue())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    split = write_split(tmp_path / "s.json", official("dtd")["train"][:2], ["gauzy", "grid"], ["banded", "bumpy"])

    monkeypatch.setattr(DTDDataModule, "archives", (Archive(archive.name, (archive.as_uri(),), md5="0" * 32, what="DTD"),))
    with pytest.raises(ConfigurationError, match=r"could not fetch dtd-r1\.0\.1\.tar\.gz.*checksum mismatch"):
        DTDDataModule(str(tmp_path / "data"), download=True, split_file=split, **SMALL).prepare_data()
    monkeypatch.setattr(DTDDataModule, "archives", (Archive(archive.name, (archive.as_uri(),), md5=md5, what="DTD"),))
    dm = DTDDataModule(str(tmp_path / "data"), download=True, split_file=split, **SMALL)
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "data" / "dtd" / "images" / "gauzy").is_dir() and dm.split_counts("val") == (2, 3)


def test_download_quickdraw_fetches_only_missing_classes(tmp_path, monkeypatch):
    from lightning_meta.data import quickdraw

    make_quickdraw(tmp_path / "bucket", ["hedgehog", "swan", "ant", "anvil", "angel", "animal migration"])
    split = write_split(tmp_path / "s.json", ["hedgehog", "swan"], ["ant", "anvil"], ["angel", "animal migration"])
    make_quickdraw(tmp_path / "data", ["hedgehog"], drawings=2)   # the user's own copy is kept as is
    monkeypatch.setattr(quickdraw, "URL_PREFIX", (tmp_path / "bucket").as_uri() + "/")
    dm = QuickdrawDataModule(str(tmp_path / "data"), download=True, split_file=split, **SMALL)
    dm.prepare_data()
    assert (tmp_path / "data" / "animal migration.npy").is_file()
    assert dm.split_counts("train") == (2, 2) and dm.split_counts("test") == (2, 5)


# --------------------------------------------------------------------------- through the CLI
def test_cli_fit_on_a_tiny_dtd_copy(tmp_path):
    dm = tiny("dtd", tmp_path)
    run = ok(cli("fit", "--config", CONFIGS / "protonet_dtd_5w1s.yaml",
        "--data.init_args.root", dm.root, "--data.init_args.split_file", dm.split_file,
        "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--data.init_args.image_size", "16", "--model.init_args.embedding.init_args.image_size", "16",
        "--model.init_args.embedding.init_args.hidden_channels", "4",
        "--data.init_args.ways", "2", "--data.init_args.queries", "1", "--data.init_args.meta_batch_size", "1",
        "--data.init_args.episodes_per_epoch", "2", "--data.init_args.val_episodes", "2",
        "--data.init_args.test_episodes", "2", cwd=tmp_path))
    assert "test/acc" in run.stdout + run.stderr
    assert (Path(dm.folder) / ".lightning_meta_dtd_train_16.pt").is_file()


def test_cli_missing_file_is_one_line(tmp_path):
    run = cli("fit", "--config", CONFIGS / "protonet_aircraft_5w1s.yaml", "--data.init_args.root", tmp_path / "nothing", cwd=tmp_path)
    assert run.returncode == 2
    line = last_line(run.stderr)
    assert "configuration error: data.init_args.root=" in line
    assert "images_variant_trainval.txt is missing" in line and "data.init_args.download: true" in line
