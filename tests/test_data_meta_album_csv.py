"""MetaAlbumDataModule and CSVSplitDataModule on tiny data sets in their real on-disk formats.

* Meta-Album: ``labels.csv`` (FILE_NAME, CATEGORY, SUPER_CATEGORY), ``info.json`` (the released keys),
  ``images/*.jpg`` (as meta-album's DataFormat/ examples).
* CSV: LibFewShot's ``images/`` + ``train.csv`` / ``val.csv`` / ``test.csv`` with a ``filename,label`` header.

Image ``i`` of class ``c`` is a flat colour with red ``20 c + 3 i`` (JPEG keeps flat colours to +-2), so tests
can tell which class a decoded image came from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import pytest
import torch
from cli_helpers import CONFIGS, cli, ok
from PIL import Image

from lightning_meta.data import listed_images
from lightning_meta.data.csv_split import CSVSplitDataModule
from lightning_meta.data.meta_album import MetaAlbumDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.tasks import TaskBatch

SMALL = dict(ways=2, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=4, val_episodes=4, test_episodes=4)


def red(c: int, i: int) -> int:
    return (20 * c + 3 * i) % 256


def save_image(path: Path, c: int, i: int, size: int = 12, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (red(c, i), 40, 200)).convert(mode).save(path)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_meta_album(root: Path, classes: int = 20, per_class: int = 4, size: int = 12, images_folder: bool = True,
                    columns: Sequence[str] = ("FILE_NAME", "CATEGORY", "SUPER_CATEGORY")) -> Path:
    """A Meta-Album data set: ``labels.csv``, ``info.json`` and ``images/`` (or the images beside them)."""
    folder = root / "images" if images_folder else root
    rows = []
    for c in range(classes):
        for i in range(per_class):
            name = f"{c * per_class + i:05d}.jpg"  # the released sets number their images
            save_image(folder / name, c, i, size)
            rows.append((name, f"species_{c:02d}", f"family_{c % 3}"))
    rows.reverse()  # rows in no particular order
    write_csv(root / "labels.csv", columns, rows)
    info = {"dataset_name": "TINY_Micro", "dataset_description": "a test set", "total_categories": classes,
            "total_super_categories": 3, "uniform_number_of_images_per_category": True,
            "minimum_images_per_category": per_class, "median_images_per_category": float(per_class),
            "maximum_images_per_category": per_class, "has_super_categories": True,
            "image_column_name": columns[0], "category_column_name": columns[1],
            "super_category_column_name": columns[2]}
    (root / "info.json").write_text(json.dumps(info, indent=4))
    return root


def make_csv_dataset(root: Path, splits: Optional[dict[str, int]] = None, per_class: int = 3, size: int = 12,
                     mode: str = "RGB", header: Sequence[str] = ("filename", "label")) -> Path:
    """LibFewShot's layout: ``images/<class>/<i>.png`` and ``{train,val,test}.csv`` (``filename,label``)."""
    splits = splits or {"train": 6, "val": 3, "test": 3}
    c = 0
    for split, classes in splits.items():
        rows = []
        for _ in range(classes):
            for i in range(per_class):
                name = f"n{c:03d}/{i}.png"
                save_image(root / "images" / name, c, i, size, mode)
                rows.append((name, f"n{c:03d}"))
            c += 1
        write_csv(root / f"{split}.csv", header, rows)
    return root


def no_decoding(*args, **kwargs):
    raise AssertionError("images were decoded")


def class_of(images: torch.Tensor) -> list[int]:
    """The class each decoded image was drawn for, from its red channel (``20 c + 3 i``, i < 4)."""
    return [round(int(v) // 20) for v in images[:, 0, 0, 0]]


# ----------------------------------------------------------------------------- Meta-Album
def meta_album(root: Path, **kwargs) -> MetaAlbumDataModule:
    return MetaAlbumDataModule(str(root), **{**SMALL, **kwargs})


def test_meta_album_seeded_split_is_disjoint_and_decodes_each_class(tmp_path):
    root = make_meta_album(tmp_path / "TINY_Micro")
    dm = meta_album(root)
    dm.setup("fit")
    names = {s: dm.sources[s].names for s in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == [14, 3, 3]  # 70 / 15 / 15 of 20 categories
    assert sorted(sum(names.values(), [])) == [f"species_{c:02d}" for c in range(20)]
    assert all(set(names[a]).isdisjoint(names[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test")))
    train = dm.sources["train"]
    assert train.images.shape == (56, 3, 12, 12) and train.images.dtype == torch.uint8
    for k, name in enumerate(train.names):  # each class holds its own 4 images, in file order
        block = train.images[4 * k:4 * k + 4].int()
        c = int(name[-2:])
        assert (block[:, 0, 0, 0] - torch.tensor([red(c, i) for i in range(4)])).abs().max() <= 2, name
    assert {s: meta_album(root).layout()[s].names for s in names} == names  # the same split every time
    assert meta_album(root, split_seed=1).layout()["test"].names != names["test"]
    assert [len(v) for v in meta_album(root, train_fraction=0.5, val_fraction=0.25).layout().values()] == [10, 5, 5]
    assert isinstance(next(iter(dm.train_dataloader())), TaskBatch)


def test_meta_album_reads_the_columns_info_json_names_and_images_beside_it(tmp_path):
    root = make_meta_album(tmp_path / "other", classes=8, images_folder=False, columns=("path", "species", "family"))
    text = (root / "info.json").read_text()
    (root / "info.json").write_text(text[:text.rindex("}")].rstrip() + ",\n}")  # the format's example: a trailing comma
    dm = meta_album(root, split={"train": [f"species_{c:02d}" for c in range(4)], "val": ["species_04", "species_05"],
                                 "test": ["species_07", "species_06"]}, image_size=8)
    dm.setup("fit")
    assert dm.sources["test"].names == ["species_06", "species_07"]
    assert dm.sources["train"].images.shape == (16, 3, 8, 8)
    assert class_of(dm.sources["val"].images) == [4] * 4 + [5] * 4


def test_meta_album_explicit_split_errors(tmp_path):
    root = make_meta_album(tmp_path / "TINY_Micro", classes=8)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.split=.* is invalid.*\{train: \[\.\.\.\]"):
        meta_album(root, split={"train": ["species_00"], "test": ["species_01"]})
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.split\.val names category 'owl'.*does not have"):
        meta_album(root, split={"train": ["species_00"], "val": ["owl"], "test": []}).layout()
    with pytest.raises(ConfigurationError, match=r"split puts category 'species_01' in both 'train' and 'test'"):
        meta_album(root, split={"train": ["species_01"], "val": ["species_02"], "test": ["species_01"]}).layout()


def test_meta_album_missing_files_name_the_root_field(tmp_path, monkeypatch):
    monkeypatch.setattr(listed_images, "decode_images", no_decoding)
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.root='.*nowhere': Meta-Album data set folder"):
        meta_album(tmp_path / "nowhere").setup("fit")
    root = make_meta_album(tmp_path / "TINY_Micro", classes=8)
    (root / "info.json").rename(root / "info.bak")
    with pytest.raises(ConfigurationError, match=r"root=.*Meta-Album file .*info\.json does not exist"):
        meta_album(root).setup("fit")
    (root / "info.bak").write_text(json.dumps({"image_column_name": "IMAGE", "category_column_name": "CATEGORY"}))
    (root / "info.bak").rename(root / "info.json")
    with pytest.raises(ConfigurationError, match=r"labels\.csv has no column 'IMAGE' or 'CATEGORY'.*info\.json"):
        meta_album(root).setup("fit")
    (root / "info.json").write_text("{}")  # no column names: Meta-Album's defaults FILE_NAME / CATEGORY
    assert len(meta_album(root).layout()["train"]) == 6
    (root / "images" / "00009.jpg").unlink()
    with pytest.raises(ConfigurationError, match=r"labels\.csv row \d+: image .*00009\.jpg does not exist \(1 of the 32"):
        meta_album(root).setup("fit")
    (root / "labels.csv").unlink()
    with pytest.raises(ConfigurationError, match=r"root=.*Meta-Album file .*labels\.csv does not exist"):
        meta_album(root).setup("fit")


def test_meta_album_settings_are_checked_before_decoding_and_the_cache_is_reused(tmp_path, monkeypatch):
    root = make_meta_album(tmp_path / "TINY_Micro", classes=14)
    real = listed_images.decode_images
    monkeypatch.setattr(listed_images, "decode_images", no_decoding)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.test_ways=3 asks for more classes than the 2 of the 'val'"
                                                 r".*; or lower data\.init_args\.train_fraction=0\.7"):
        meta_album(root, test_ways=3).setup("fit")  # 14 categories: 10 / 2 / 2
    with pytest.raises(ConfigurationError, match=r"shots \+ data\.init_args\.queries = 1 \+ 4 = 5 exceeds the 4"):
        meta_album(root, queries=4).setup("fit")
    monkeypatch.setattr(listed_images, "decode_images", real)
    first = meta_album(root, normalize=True)
    first.setup("fit")
    assert sorted(p.name for p in root.glob(".lightning_meta_*")) == [
        f".lightning_meta_meta_album_{s}.pt" for s in ("test", "train", "val")]
    monkeypatch.setattr(listed_images, "decode_images", no_decoding)
    again = meta_album(root, normalize=True)
    again.setup("fit")  # read from the cache
    assert torch.equal(again.sources["train"].images, first.sources["train"].images)
    x = again.sources["train"].class_samples(0, torch.tensor([0]))
    raw = again.sources["train"].images[:1].float() / 255
    expected = (raw - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x, expected)
    with pytest.raises(AssertionError, match="decoded"):  # another size: another cache key
        meta_album(root, image_size=8).setup("fit")


# ----------------------------------------------------------------------------- CSV splits
def csv_split(root: Path, **kwargs) -> CSVSplitDataModule:
    return CSVSplitDataModule(str(root), **{**SMALL, **kwargs})


def test_csv_splits_follow_the_files(tmp_path):
    root = make_csv_dataset(tmp_path / "bench")
    text = (root / "val.csv").read_text().replace("filename,label", "filename    , label", 1)  # LibFewShot's docs
    (root / "val.csv").write_text(text)
    dm = csv_split(root)
    assert [dm.split_counts(s) for s in ("train", "val", "test")] == [(6, 3), (3, 3), (3, 3)]
    dm.setup("fit")
    assert dm.sources["train"].names == [f"n{c:03d}" for c in range(6)]
    assert dm.sources["test"].names == [f"n{c:03d}" for c in range(9, 12)]
    assert dm.sources["val"].images.shape == (9, 3, 12, 12)
    assert class_of(dm.sources["test"].images) == [9] * 3 + [10] * 3 + [11] * 3
    assert (root / "images").is_dir() and len(list(root.glob(".lightning_meta_csv_*.pt"))) == 3


def test_csv_options_other_files_columns_and_greyscale(tmp_path):
    root = make_csv_dataset(tmp_path / "bench", mode="L", header=("file_name", "label"))
    for split in ("train", "val", "test"):  # label first, then the file; split files in a sub-folder
        lines = (root / f"{split}.csv").read_text().splitlines()
        (root / "lists").mkdir(exist_ok=True)
        (root / "lists" / f"{split}.csv").write_text("\n".join(",".join(line.split(",")[::-1]) for line in lines))
        (root / f"{split}.csv").unlink()
    (root / "images").rename(root / "pictures")
    dm = csv_split(root, train_csv="lists/train.csv", val_csv="lists/val.csv", test_csv="lists/test.csv",
                   image_root="pictures")
    dm.setup("fit")
    assert dm.sources["train"].images.shape == (18, 1, 12, 12)  # greyscale PNGs: one channel inferred
    with pytest.raises(ConfigurationError, match=r"train\.csv has no column 'path' .*set data\.init_args\.file_column"):
        csv_split(root, train_csv="lists/train.csv", val_csv="lists/val.csv", test_csv="lists/test.csv",
                  image_root="pictures", file_column="path").layout()


def test_a_class_in_two_split_files_is_an_error_naming_both(tmp_path):
    root = make_csv_dataset(tmp_path / "bench")
    with open(root / "test.csv", "a", newline="") as handle:
        handle.write("n001/0.png,n001\n")  # a meta-training class's image listed again for test
    with pytest.raises(ConfigurationError, match=r"train_csv='train\.csv' and data\.init_args\.test_csv='test\.csv':"
                                                 r" class 'n001' \(1 classes in all\) is in both .*train\.csv and .*test"):
        csv_split(root).layout()
    lines = (root / "test.csv").read_text().splitlines()
    (root / "test.csv").write_text("\n".join(lines[:-1] + ["n001/0.png,n999"]) + "\n")  # same image, another label
    with pytest.raises(ConfigurationError, match=r"image .*n001/0\.png is in both .*train\.csv \(row 5\) and .*test"
                                                 r"\.csv \(row 11\)"):
        csv_split(root).layout()


def test_csv_row_errors_name_the_file_the_row_and_the_image(tmp_path, monkeypatch):
    monkeypatch.setattr(listed_images, "decode_images", no_decoding)
    root = make_csv_dataset(tmp_path / "bench")
    (root / "images" / "n010" / "2.png").unlink()
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.test_csv='test\.csv': .*test\.csv row 7: image "
                                                 r".*n010/2\.png does not exist \(1 of the 9 images"):
        csv_split(root).setup("fit")
    save_image(root / "images" / "n010" / "2.png", 10, 2)
    with open(root / "val.csv", "a") as handle:
        handle.write("n006/1.png,n006\n")
    with pytest.raises(ConfigurationError, match=r"val\.csv lists image 'n006/1\.png' twice \(rows 3 and 11\)"):
        csv_split(root).setup("fit")
    with open(root / "val.csv", "w") as handle:
        handle.write("filename,label\nn006/1.png\n")
    with pytest.raises(ConfigurationError, match=r"val\.csv row 2 \('n006/1\.png'\) has no image name or no label"):
        csv_split(root).setup("fit")


def test_csv_missing_files_and_folders_name_their_fields(tmp_path, monkeypatch):
    monkeypatch.setattr(listed_images, "decode_images", no_decoding)
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.root='.*nowhere': folder .* does not exist"):
        csv_split(tmp_path / "nowhere").setup("fit")
    root = make_csv_dataset(tmp_path / "bench")
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.image_root='imgs': image folder .*imgs does not"
                                                 r" exist: set --data\.init_args\.image_root"):
        csv_split(root, image_root="imgs").setup("fit")
    (root / "val.csv").unlink()
    with pytest.raises(ConfigurationError, match=r"^data\.init_args\.val_csv='val\.csv': val split file .*val\.csv"
                                                 r" does not exist: set --data\.init_args\.val_csv"):
        csv_split(root).setup("fit")
    (root / "val.csv").write_text("")
    with pytest.raises(ConfigurationError, match=r"val_csv='val\.csv': .*val\.csv is empty"):
        csv_split(root).setup("fit")
    (root / "val.csv").write_text("filename,label\n")
    with pytest.raises(ConfigurationError, match=r"val\.csv lists no images"):
        csv_split(root).setup("fit")
    make_csv_dataset(root)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.ways=7 asks for more classes than the 6"):
        csv_split(root, ways=7).setup("fit")  # from the listing, nothing decoded


# ----------------------------------------------------------------------------- the configs, as a user runs them
TINY_RUN = ("--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--data.init_args.image_size", "16",
            "--data.init_args.ways", "2", "--data.init_args.queries", "2", "--data.init_args.episodes_per_epoch", "2",
            "--data.init_args.val_episodes", "2", "--data.init_args.test_episodes", "2")


@pytest.mark.parametrize("config", ["protonet_meta_album_5w1s", "protonet_csv_5w1s"])
def test_config_trains_and_tests_on_a_fixture(tmp_path, config):
    if config.startswith("protonet_meta_album"):
        root = make_meta_album(tmp_path / "TINY_Micro", classes=14)  # 10 / 2 / 2 categories
        network = ("--model.init_args.embedding.init_args.channels", "[4, 4, 8, 8]")
    else:
        root = make_csv_dataset(tmp_path / "bench", {"train": 3, "val": 2, "test": 2})
        network = ("--model.init_args.embedding.init_args.hidden_channels", "4",
                   "--model.init_args.embedding.init_args.image_size", "16")
    run = ok(cli("fit", "--config", CONFIGS / f"{config}.yaml", "--data.init_args.root", root, *TINY_RUN, *network,
                 cwd=tmp_path))
    output = run.stdout + run.stderr
    assert "test/acc" in output
    assert len(list((tmp_path / "runs" / config).rglob("best.ckpt"))) == 1
