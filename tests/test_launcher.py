"""The ``lightning-meta`` launcher: help and listing without torch, shipped configs by name, a catalog
that cannot drift from the package.

The launcher runs in a subprocess (this test process has imported torch already, through conftest).
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_meta
from lightning_meta import catalog
from lightning_meta.errors import ConfigurationError

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))

#: exported bases to subclass, not algorithms or data sets a config would name
#: base classes to subclass, not algorithms or data sets of their own: the catalog does not list them
BASES = {"Learner", "MetaLearner", "MetricLearner", "SequenceLearner", "FineTuningBaseline", "EpisodicDataModule",
         "TaskDataModule"}


def python(*args: str) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repository's code, W&B offline."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["list"]])
def test_help_and_list_name_every_algorithm_data_module_and_config(args):
    run = python("-m", "lightning_meta", *args)
    assert run.returncode == 0, run.stderr
    for entry in catalog.ALGORITHMS + catalog.DATA_MODULES:
        assert f"  {entry.name} " in run.stdout
    for path in CONFIG_FILES:
        assert f"  {path.stem} " in run.stdout
    assert ("usage: lightning-meta {fit,validate,test,predict,list}" in run.stdout) == (args != ["list"])


def test_help_and_list_import_neither_torch_nor_lightning():
    probe = (
        "import sys\n"
        "import lightning_meta.__main__ as launcher\n"
        "launcher.main(['list'])\n"
        "launcher.main(['--help'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning'))\n"
        "assert not heavy, heavy\n"
    )
    run = python("-c", probe)
    assert run.returncode == 0, run.stderr


def test_other_commands_reach_the_lightning_cli():
    run = python("-m", "lightning_meta", "fit", "--help")
    assert run.returncode == 0, run.stderr
    assert "--config" in run.stdout and "--trainer" in run.stdout


def test_the_public_api_is_imported_on_first_use():
    from lightning_meta import MAML

    assert MAML is lightning_meta.MAML is importlib.import_module("lightning_meta.algorithms.maml").MAML
    assert set(lightning_meta.__all__) == set(lightning_meta._ORIGIN)
    assert set(lightning_meta.__all__) <= set(dir(lightning_meta))
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        lightning_meta.Nothing


def test_catalog_lists_every_exported_learner_and_data_module():
    import pytorch_lightning as pl

    exported = {name: getattr(lightning_meta, name) for name in lightning_meta.__all__}
    learners = {name for name, obj in exported.items()
                if inspect.isclass(obj) and issubclass(obj, lightning_meta.Learner)} - BASES
    data_modules = {name for name, obj in exported.items()
                    if inspect.isclass(obj) and issubclass(obj, pl.LightningDataModule)} - BASES
    listed = [entry.name for entry in catalog.ALGORITHMS + catalog.DATA_MODULES]
    assert len(listed) == len(set(listed))
    assert {entry.name for entry in catalog.ALGORITHMS} == learners
    assert {entry.name for entry in catalog.DATA_MODULES} == data_modules


@pytest.mark.parametrize("entry", catalog.ALGORITHMS + catalog.DATA_MODULES, ids=lambda entry: entry.name)
def test_catalog_class_paths_import(entry):
    module, _, name = entry.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert cls.__name__ == entry.name
    assert entry.summary and "\n" not in entry.summary


def test_every_config_has_a_one_line_summary():
    assert list(catalog.shipped_configs()) == [path.stem for path in CONFIG_FILES]
    summaries = {path.stem: catalog.config_summary(path) for path in CONFIG_FILES}
    assert summaries["maml_sinusoid"] == "MAML on sinusoid regression"
    assert all(summaries.values()), [name for name, summary in summaries.items() if not summary]


@pytest.mark.parametrize("name", ["maml_sinusoid", "maml_sinusoid.yaml"])
def test_find_config_by_name(name):
    assert Path(catalog.find_config(name)) == REPO / "configs" / "maml_sinusoid.yaml"


def test_find_config_keeps_an_existing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("maml_sinusoid.yaml").write_text("trainer: {}\n")
    assert catalog.find_config("maml_sinusoid.yaml") == "maml_sinusoid.yaml"
    assert catalog.find_config(str(tmp_path / "maml_sinusoid.yaml")) == str(tmp_path / "maml_sinusoid.yaml")


def test_find_config_names_close_matches_for_an_unknown_name():
    with pytest.raises(ConfigurationError, match="maml_sinusoid") as error:
        catalog.find_config("maml_sinsoid")
    assert "neither a file nor a shipped config" in str(error.value)
    with pytest.raises(ConfigurationError, match="lightning-meta list"):
        catalog.find_config("no_such_thing_at_all")
