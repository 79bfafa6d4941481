"""Prediction on new classes: ``python -m lightning_meta predict`` (CSV) and ``predict_task`` (Python).

A MAML model is trained a few steps on a tiny Omniglot copy through the CLI; support and query
folders of new "characters" are made here, in ``tmp_path``.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from fixtures_images import glyph, make_image_folder, make_npz, make_omniglot
from test_cli import CONFIG, SMALL, cli

from lightning_meta import MAML
from lightning_meta.algorithms.protonet import PrototypicalNetwork
from lightning_meta.callbacks import PredictionCSV
from lightning_meta.data import ImageFolderDataModule, NpzDataModule, OmniglotDataModule, SinusoidDataModule
from lightning_meta.data.miniimagenet import MiniImageNetDataModule
from lightning_meta.data.prediction import predict_folders
from lightning_meta.errors import ConfigurationError
from lightning_meta.models import Conv4

CLASSES = ("delta", "alpha", "charlie")  # sorted: alpha, charlie, delta


def make_support_and_queries(folder: Path, classes=CLASSES, shots: int = 2, queries: int = 2,
                             first_seed: int = 1000) -> tuple[Path, Path]:
    """``folder/support/<class>/sNN.png`` and ``folder/query/[sub/]<class>_qNN.png`` of Omniglot-like glyphs."""
    support, query = folder / "support", folder / "query"
    for c, name in enumerate(classes):
        (support / name).mkdir(parents=True)
        for s in range(shots):
            glyph(first_seed + c, s).save(support / name / f"s{s:02d}.png")
        for q in range(queries):
            target = query / "sub" if q % 2 else query
            target.mkdir(parents=True, exist_ok=True)
            glyph(first_seed + c, shots + q).save(target / f"{name}_q{q:02d}.png")
    return support, query


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- CLI end to end (MAML)
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("predict")
    root = make_omniglot(work / "data", background=(3,) * 8, evaluation=(3, 3), drawings=5)
    run = cli("fit", "--config", CONFIG, "--data.init_args.root", str(root), "--trainer.max_epochs", "1", *SMALL,
              cwd=work)
    assert run.returncode == 0, run.stderr[-4000:]
    best = next((work / "runs").rglob("best.ckpt"))
    return work, root, best


def test_cli_predict_writes_the_csv_that_predict_task_gives(trained, tmp_path):
    work, root, best = trained
    support, query = make_support_and_queries(tmp_path)
    run = cli("predict", "--config", CONFIG, "--ckpt_path", str(best), "--data.init_args.root", str(root),
              "--data.init_args.support_dir", str(support), "--data.init_args.query_dir", str(query), *SMALL,
              cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    written = list(best.parent.parent.glob("predict-*/predictions.csv"))   # in a sub-folder of the checkpoint's run
    assert len(written) == 1
    assert str(written[0].resolve()) in run.stdout + run.stderr  # the path is printed
    rows = read_csv(written[0])
    names = sorted(CLASSES)
    assert list(rows[0]) == ["query", "prediction"] + [f"p_{name}" for name in names]
    expected_files = sorted(p.relative_to(query).as_posix() for p in query.rglob("*.png"))
    assert [r["query"] for r in rows] == expected_files and any("/" in f for f in expected_files)
    probabilities = torch.tensor([[float(r[f"p_{name}"]) for name in names] for r in rows])
    assert torch.allclose(probabilities.sum(1), torch.ones(len(rows)), atol=1e-5)
    assert [r["prediction"] for r in rows] == [names[i] for i in probabilities.argmax(1).tolist()]

    # the same images through Python: the data module of the config decodes them as in training
    model = MAML.load_from_checkpoint(str(best))
    data = OmniglotDataModule(str(root), image_size=28, support_dir=str(support), query_dir=str(query))
    task = data.prediction_set()
    assert task.class_names == names and task.query_files == expected_files
    expected = model.predict_task(task.support_x, task.support_y, task.query_x)
    assert expected.shape == (len(rows), 3)
    assert torch.allclose(probabilities, expected, atol=1e-4)
    assert [r["prediction"] for r in predict_folders(model, data)] == [r["prediction"] for r in rows]


def test_cli_predict_without_folders_fails_before_running(trained, tmp_path):
    work, root, best = trained
    run = cli("predict", "--config", CONFIG, "--ckpt_path", str(best), "--data.init_args.root", str(root), *SMALL,
              cwd=tmp_path)
    assert run.returncode == 2
    assert "data.init_args.support_dir is not set" in run.stderr and "--data.init_args.support_dir" in run.stderr


# --------------------------------------------------------------------------- Python
def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(inference_mode=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1)
    return pl.Trainer(**{**defaults, **kwargs})


def small_maml(out_features: int = 5) -> MAML:
    return MAML(Conv4(in_channels=1, out_features=out_features, hidden_channels=8), inner_lr=0.4, inner_steps=1,
                test_inner_steps=2)


def small_protonet() -> PrototypicalNetwork:
    torch.manual_seed(0)
    return PrototypicalNetwork(Conv4(in_channels=1, out_features=None, hidden_channels=8, pooling="max",
                                     batch_norm_stats="running"))


def test_protonet_predicts_through_python_and_through_the_trainer(tmp_path):
    support, query = make_support_and_queries(tmp_path, shots=1, queries=0)
    query.mkdir(exist_ok=True)
    for c, name in enumerate(CLASSES):  # queries: copies of the support images, and one new drawing each
        shutil.copy(support / name / "s00.png", query / f"{name}_copy.png")
        glyph(1000 + c, 7).save(query / f"{name}_new.png")
    model = small_protonet()
    model.train()
    data = OmniglotDataModule(str(tmp_path / "no_training_data_needed"), image_size=28, support_dir=str(support),
                              query_dir=str(query))
    task = data.prediction_set()
    probabilities = model.predict_task(task.support_x, task.support_y, task.query_x)
    assert model.training  # eval() for the call only
    assert probabilities.shape == (6, 3) and torch.allclose(probabilities.sum(1), torch.ones(6))
    names = task.class_names
    copies = [i for i, f in enumerate(task.query_files) if f.endswith("_copy.png")]
    assert [names[i] for i in probabilities[copies].argmax(1).tolist()] == \
        [task.query_files[i].split("_")[0] for i in copies]  # a copy of a support image is at distance 0

    # the same as the stateful metric interface
    model.eval()
    with torch.no_grad():
        model.process_support_set(task.support_x, task.support_y)
        stateful = model.probabilities(model(task.query_x))
    assert torch.allclose(probabilities, stateful, atol=1e-5)

    # and as trainer.predict with the CSV writer
    writer = PredictionCSV(str(tmp_path / "out" / "predictions.csv"))
    returned = trainer(callbacks=[writer]).predict(model, datamodule=data)
    assert torch.allclose(returned[0][0], probabilities, atol=1e-5)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == ["query", "prediction", "p_alpha", "p_charlie", "p_delta"]
    assert [r["query"] for r in rows] == task.query_files
    assert [r["prediction"] for r in rows] == [names[i] for i in probabilities.argmax(1).tolist()]


def test_maml_predict_task_adapts_with_gradients_and_slices_the_head(tmp_path):
    support, query = make_support_and_queries(tmp_path)
    data = OmniglotDataModule(str(tmp_path), image_size=28, support_dir=str(support), query_dir=str(query))
    task = data.prediction_set()
    model = small_maml()
    with torch.no_grad():  # adaptation takes gradients even when the caller disabled them
        probabilities = model.predict_task(task.support_x, task.support_y, task.query_x)
    assert probabilities.shape == (6, 3) and torch.allclose(probabilities.sum(1), torch.ones(6))
    after, _ = model.evaluate_task(task.support_x, task.support_y, task.query_x, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(probabilities, after[:, :3].softmax(1), atol=1e-5)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        model.predict_task(task.support_x, task.support_y, task.query_x)


def test_prediction_images_are_decoded_as_the_training_images(tmp_path):
    root = make_omniglot(tmp_path / "data", background=(3, 3), evaluation=(2,), drawings=4)
    character = root / "omniglot-py" / "images_evaluation" / "Omega_0" / "character02"
    support = tmp_path / "support"
    shutil.copytree(character, support / "Omega_0-character02")
    data = OmniglotDataModule(str(root), image_size=28, val_alphabets=1, download=False, support_dir=str(support),
                              query_dir=str(support))
    source = data.load_split("test")
    c = source.names.index("Omega_0/character02")
    assert torch.equal(data.prediction_set().support_x, source.class_samples(c, torch.arange(4)))

    folder = make_image_folder(tmp_path / "folder", classes=10, per_class=3, size=20, mode="L")
    data = ImageFolderDataModule(str(folder), image_size=12, support_dir=str(folder / "class_03"),
                                 query_dir=str(folder / "class_03"))
    pool = data.load_split([s for s, files in data.layout().items() if "class_03" in files.names][0])
    with pytest.raises(ConfigurationError, match="holds no class folders"):
        data.prediction_set()
    (tmp_path / "s").mkdir()
    shutil.copytree(folder / "class_03", tmp_path / "s" / "class_03")
    data = ImageFolderDataModule(str(folder), image_size=12, support_dir=str(tmp_path / "s"),
                                 query_dir=str(folder / "class_03"))
    prediction = data.prediction_set()
    c = pool.names.index("class_03")
    assert torch.equal(prediction.support_x, pool.class_samples(c, torch.arange(3)))
    assert torch.equal(prediction.query_x, prediction.support_x)


def test_mini_imagenet_prediction_resizes_and_normalises(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=2, size=50)
    data = MiniImageNetDataModule(str(tmp_path / "absent"), image_size=16, normalize=True,
                                  support_dir=str(folder), query_dir=str(folder / "class_01"))
    task = data.prediction_set()
    assert task.support_x.shape == (4, 3, 16, 16) and task.query_x.shape == (2, 3, 16, 16)
    assert task.support_x.min() < 0  # standardised with ImageNet's statistics


# --------------------------------------------------------------------------- errors
def omniglot_data(tmp_path, support, query) -> OmniglotDataModule:
    return OmniglotDataModule(str(tmp_path), image_size=28, support_dir=None if support is None else str(support),
                              query_dir=None if query is None else str(query))


def test_missing_or_empty_folders_name_the_field(tmp_path):
    support, query = make_support_and_queries(tmp_path)
    cases = [
        (None, query, "data.init_args.support_dir is not set"),
        (support, None, "data.init_args.query_dir is not set"),
        (tmp_path / "nowhere", query, "data.init_args.support_dir='.*nowhere': .* does not exist"),
        (support, tmp_path / "nowhere", "data.init_args.query_dir='.*nowhere': .* does not exist"),
        (support, support / "alpha" / "s00.png", "is a file, not a folder"),
    ]
    (tmp_path / "empty").mkdir()
    cases += [(tmp_path / "empty", query, "support_dir=.* holds no class folders"),
              (support, tmp_path / "empty", "query_dir=.* holds no images")]
    for s, q, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            omniglot_data(tmp_path, s, q).setup("predict")
    (support / "echo").mkdir()
    (support / "echo" / "notes.txt").write_text("no image here")
    with pytest.raises(ConfigurationError, match="support_dir=.*class folder .*echo holds no images"):
        omniglot_data(tmp_path, support, query).setup("predict")


def test_images_must_match_a_module_that_does_not_resize(tmp_path):
    npz = make_npz(tmp_path / "x.npz", classes=30, samples=6, size=12)
    support = make_image_folder(tmp_path / "support", classes=2, per_class=1, size=12, mode="L")
    wrong_size = make_image_folder(tmp_path / "q_size", classes=1, per_class=1, size=14, mode="L")
    colour = make_image_folder(tmp_path / "q_colour", classes=1, per_class=1, size=12, mode="RGB")
    good = NpzDataModule(str(npz), support_dir=str(support), query_dir=str(support)).prediction_set()
    assert good.support_x.shape == (2, 1, 12, 12)
    with pytest.raises(ConfigurationError, match=r"query_dir=.*img_00.png is 14x14 but the model was trained on 12x12"):
        NpzDataModule(str(npz), support_dir=str(support), query_dir=str(wrong_size)).prediction_set()
    with pytest.raises(ConfigurationError, match=r"query_dir=.*is colour .* 1-channel images .* save every support"):
        NpzDataModule(str(npz), support_dir=str(support), query_dir=str(colour)).prediction_set()

    folder = make_image_folder(tmp_path / "train", classes=10, per_class=3, size=12, mode="L")
    with pytest.raises(ConfigurationError, match=r"14x14 but the model was trained on 12x12 .* ImageFolderDataModule"):
        ImageFolderDataModule(str(folder), support_dir=str(support), query_dir=str(wrong_size)).prediction_set()
    with pytest.raises(ConfigurationError, match="is colour"):  # channels inferred: all training images were grey
        ImageFolderDataModule(str(folder), support_dir=str(support), query_dir=str(colour)).prediction_set()
    converted = ImageFolderDataModule(str(folder), channels=1, image_size=12, support_dir=str(support),
                                      query_dir=str(colour)).prediction_set()
    assert converted.query_x.shape == (1, 1, 12, 12)  # a module that converts and resizes takes them


def test_more_classes_than_the_head_fail_before_predicting(tmp_path):
    support, query = make_support_and_queries(tmp_path, classes=[f"class{c}" for c in range(7)], shots=1, queries=1)
    data = omniglot_data(tmp_path, support, query)
    task = data.prediction_set()
    model = small_maml(out_features=5)
    with pytest.raises(ConfigurationError, match="the support set has 7 classes but the model outputs 5"):
        model.predict_task(task.support_x, task.support_y, task.query_x)
    with pytest.raises(ConfigurationError, match=r"support_dir=.* has 7 classes .* out_features"):
        trainer().predict(model, datamodule=data)
    assert small_protonet().predict_task(task.support_x, task.support_y, task.query_x).shape == (7, 7)


def test_regression_data_modules_cannot_predict():
    with pytest.raises(ConfigurationError, match="SinusoidDataModule is a regression data module"):
        SinusoidDataModule().setup("predict")
