"""Run ``python -m lightning_meta`` as a user types it, in a subprocess, and read what a run leaves behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

#: a small ProtoNet on the bundled hanzi set: trains, validates and tests in seconds
HANZI = """\
seed_everything: 0
trainer:
  max_steps: 4
  accelerator: cpu
  val_check_interval: 2
  check_val_every_n_epoch: null
  log_every_n_steps: 1
  logger:
    class_path: pytorch_lightning.loggers.WandbLogger
    init_args:
      project: lightning-meta
model:
  class_path: lightning_meta.PrototypicalNetwork
  init_args:
    embedding:
      class_path: lightning_meta.models.Conv4
      init_args: {in_channels: 1, out_features: null, hidden_channels: 8, pooling: max, image_size: 28,
                  batch_norm_stats: running}
data:
  class_path: lightning_meta.data.NpzDataModule
  init_args: {path: hanzi, ways: 5, shots: 1, queries: 2, meta_batch_size: 2, episodes_per_epoch: 8,
              val_episodes: 4, test_episodes: 6}
"""


def cli(*args: str, cwd: Path, timeout: int = 400, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """``python -m lightning_meta ARGS`` in ``cwd``, W&B offline, no API key, one torch thread."""
    environment = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                   **(env or {})}
    environment.pop("WANDB_API_KEY", None)
    environment.pop("LIGHTNING_META_RUN", None)
    return subprocess.run([sys.executable, "-m", "lightning_meta", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    return run


def run_folders(experiment: Path) -> list[Path]:
    """The run folders of an experiment folder (``runs/<config>``)."""
    return sorted(p for p in experiment.iterdir() if p.is_dir()) if experiment.is_dir() else []


def the_run(experiment: Path) -> Path:
    folders = run_folders(experiment)
    assert len(folders) == 1, folders
    return folders[0]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def rows(path: Path, drop: tuple[str, ...] = ("train/tasks_per_s",)) -> list[dict[str, str]]:
    """The rows of a CSV file, without the columns in ``drop`` (timings)."""
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
