"""Every YAML in configs/ parses with ``python -m lightning_meta fit --config X --print_config``.

Importing Lightning takes about 10 s here, so one subprocess parses all configs in turn through the
same entry point (``lightning_meta.cli.main``), and one more runs the literal command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml"))

DRIVER = r"""
import contextlib, io, json, sys
from lightning_meta.cli import main

results = {}
for path in sys.argv[1:]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["fit", "--config", path, "--print_config"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except Exception as error:
            code, err = 1, io.StringIO(f"{type(error).__name__}: {error}")
    results[path] = {"rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
results["__learn2learn_imported__"] = "learn2learn" in sys.modules
sys.stdout.write("\n@@RESULTS@@" + json.dumps(results))
"""


def environment() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def parsed() -> dict:
    run = subprocess.run([sys.executable, "-c", DRIVER, *CONFIGS], cwd=REPO, env=environment(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.split("@@RESULTS@@")[-1])


#: the MAML image configs whose settings (Finn et al. 2017) are checked beyond parsing
IMAGE_CONFIGS = ["maml_omniglot_5w1s", "maml_omniglot_5w5s", "maml_omniglot_20w1s", "maml_miniimagenet_5w1s",
                 "maml_miniimagenet_5w5s", "maml_image_folder", "maml_npz"]


def test_configs_exist():
    assert set(IMAGE_CONFIGS) <= {Path(c).stem for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses(parsed, config):
    result = parsed[config]
    assert result["rc"] == 0, result["stderr"][-3000:]
    printed = yaml.safe_load(result["stdout"])
    assert printed["data"]["class_path"] and printed["model"]["class_path"]
    # one W&B logger whose command-line options reach it; the CLI places the run in runs/<config>/<run id>/
    logger = printed["trainer"]["logger"]
    assert logger["class_path"] == "pytorch_lightning.loggers.WandbLogger", logger
    assert logger["init_args"]["project"] == "lightning-meta" and logger["init_args"]["save_dir"] in (None, ".")


@pytest.mark.parametrize("name", IMAGE_CONFIGS)
def test_image_config_settings(parsed, name):
    printed = yaml.safe_load(parsed[f"configs/{name}.yaml"]["stdout"])
    data, model = printed["data"]["init_args"], printed["model"]["init_args"]
    assert printed["model"]["class_path"] == "lightning_meta.MAML"
    assert data["test_episodes"] == 600
    backbone = model["backbone"]["init_args"]
    assert backbone["out_features"] == data["ways"], "the backbone's out_features must equal the ways"
    ways = data["test_ways"] or data["ways"]
    assert backbone["out_features"] == ways
    assert (data.get("root") or data.get("path"))
    if "image_size" in data:
        assert backbone["image_size"] == data["image_size"]
    if "omniglot" in name:
        assert data["root"] == "data" and data["download"] is True
        expected = (0.1, 5, 16) if name.endswith("20w1s") else (0.4, 1, 32)
        assert (model["inner_lr"], model["inner_steps"], data["meta_batch_size"]) == expected
        assert model["outer_lr"] == 0.001
        assert (backbone["in_channels"], backbone["hidden_channels"], backbone["pooling"], backbone["image_size"]) \
            == (1, 64, "stride", 28)
    if "miniimagenet" in name:
        assert data["root"] == "data" and data["queries"] == 15
        assert (backbone["in_channels"], backbone["hidden_channels"], backbone["pooling"], backbone["image_size"]) \
            == (3, 32, "max", 84)
        assert (model["inner_lr"], model["inner_steps"], model["test_inner_steps"]) == (0.01, 5, 10)


def test_learn2learn_is_not_imported_by_parsing(parsed):
    assert parsed["__learn2learn_imported__"] is False


def test_the_command_line_itself():
    run = subprocess.run([sys.executable, "-m", "lightning_meta", "fit", "--config", "configs/maml_omniglot_5w1s.yaml",
                          "--print_config", "--data.init_args.root", "elsewhere"],
                         cwd=REPO, env=environment(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = yaml.safe_load(run.stdout)
    assert printed["data"]["class_path"] == "lightning_meta.data.OmniglotDataModule"
    assert printed["data"]["init_args"]["root"] == "elsewhere"
    assert printed["data"]["init_args"]["ways"] == 5 and printed["data"]["init_args"]["meta_batch_size"] == 32
