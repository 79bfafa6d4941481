"""Run folders: one folder per run, found again by ``--ckpt_path last``.

A training run lives in ``<experiment>/<run id>/`` (``<experiment>`` is ``runs/<config name>`` unless
the W&B logger's ``save_dir`` says otherwise; the run id is the W&B run id):

* ``checkpoints/`` (``best.ckpt``, ``last.ckpt``), ``config.yaml`` (the full resolved config),
  ``metrics.csv``, ``test_episodes.csv``, ``wandb/``;
* ``test-<time>/``, ``validate-<time>/``, ``predict-<time>/``: what ``test``/``validate``/``predict`` on
  one of its checkpoints wrote (their own config, metrics, CSV files, and a W&B run grouped with the
  training run).

``fit --ckpt_path last`` continues the newest run of the experiment in its own folder and W&B run;
``--ckpt_path best``/``last`` name that run's checkpoints for the other subcommands too.  The plan
of a run is made once, in the launching process, and handed to the processes that DDP starts
through the environment, so every rank writes to the same folder.

Example::

    plan = plan_run("fit", Path("runs/maml_sinusoid"), "last")
    plan.folder, plan.run_id, plan.ckpt_path, plan.resumes
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from lightning_meta.errors import ConfigurationError

#: environment variable through which the launching process hands its plan to the DDP processes
RUN_ENV = "LIGHTNING_META_RUN"
CHECKPOINTS = "checkpoints"
NAMED_CHECKPOINTS = ("last", "best")


@dataclass(frozen=True)
class RunPlan:
    """Where one invocation writes and what it loads.

    Args:
        folder: the folder this invocation writes to (absolute): the run folder for ``fit``, a
            sub-folder of the checkpoint's run for ``test``/``validate``/``predict``.
        run_id: the W&B run id of this invocation (the run folder's name for ``fit``).
        ckpt_path: the checkpoint file to resume or evaluate (absolute), or ``None``.
        resumes: whether ``fit`` continues the run that wrote ``ckpt_path`` (same folder, same W&B run).
        group: the training run's id when this invocation evaluates one of its checkpoints.
    """

    folder: str
    run_id: str
    ckpt_path: Optional[str] = None
    resumes: bool = False
    group: Optional[str] = None

    def export(self) -> None:
        """Hand this plan to the processes that DDP launches (they inherit the environment)."""
        os.environ[RUN_ENV] = json.dumps(asdict(self))

    @staticmethod
    def inherited() -> Optional["RunPlan"]:
        """The plan of the launching process, in a process that Lightning's DDP launcher started."""
        if "LOCAL_RANK" not in os.environ or RUN_ENV not in os.environ:
            return None
        return RunPlan(**json.loads(os.environ[RUN_ENV]))


def new_run_id() -> str:
    """A new run id: 8 characters of ``[a-z0-9]``, like W&B's."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def run_folder_of(checkpoint: Path) -> Optional[Path]:
    """The run folder of a checkpoint written in this layout (``<run>/checkpoints/<name>.ckpt``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def newest_checkpoint(experiment: Path, name: str) -> Optional[Path]:
    """``<run>/checkpoints/<name>.ckpt`` of the run of ``experiment`` that wrote it last."""
    found = [p for p in experiment.glob(f"*/{CHECKPOINTS}/{name}.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def evaluation_folder(run: Path, subcommand: str) -> Path:
    """A new sub-folder of ``run`` for one ``test``/``validate``/``predict`` of its checkpoints."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = run / f"{subcommand}-{stamp}", 1
    while folder.exists():
        n += 1
        folder = run / f"{subcommand}-{stamp}-{n}"
    return folder


def resolve_checkpoint(subcommand: str, experiment: Path, ckpt_path: Optional[str]) -> Optional[Path]:
    """``ckpt_path`` as a checkpoint file: ``last``/``best`` are the newest run's, paths are checked."""
    if not ckpt_path:
        return None
    if ckpt_path in NAMED_CHECKPOINTS:
        found = newest_checkpoint(experiment, ckpt_path)
        if found is not None:
            return found.resolve()
        if subcommand == "fit" and ckpt_path == "last":
            return None  # nothing to resume: a new run starts (what a re-queued job expects)
        raise ConfigurationError(
            f"ckpt_path={ckpt_path!r}: no run under {experiment.resolve()} has {CHECKPOINTS}/{ckpt_path}.ckpt: train"
            " one with fit first, or give the path of a checkpoint file")
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"ckpt_path={ckpt_path!r}: {path.resolve()} is not a file: give a checkpoint file (a run's"
            f" {CHECKPOINTS}/last.ckpt or best.ckpt), or 'last' / 'best' for the newest run of the config")
    return path.resolve()


def plan_run(subcommand: str, experiment: Path, ckpt_path: Optional[str]) -> RunPlan:
    """The folder, W&B run and checkpoint of one invocation (see the module docstring)."""
    checkpoint = resolve_checkpoint(subcommand, experiment, ckpt_path)
    run = run_folder_of(checkpoint) if checkpoint is not None else None
    ckpt = None if checkpoint is None else str(checkpoint)
    if run is not None and subcommand == "fit":
        return RunPlan(str(run), run.name, ckpt, resumes=True)
    run_id = new_run_id()
    if run is not None:
        return RunPlan(str(evaluation_folder(run, subcommand)), run_id, ckpt, group=run.name)
    return RunPlan(str((experiment / run_id).resolve()), run_id, ckpt)
