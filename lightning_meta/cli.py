"""``python -m lightning_meta fit|validate|test|predict --config X``: LightningCLI for meta-learning runs.

On top of LightningCLI:

* **One folder per run** (:mod:`lightning_meta.runs`): ``runs/<config>/<run id>/`` with
  ``checkpoints/``, ``config.yaml``, ``metrics.csv``, ``test_episodes.csv`` and the W&B files; the
  run id is the W&B run id.  ``test``/``validate``/``predict`` on a checkpoint write into a
  sub-folder of its run and log to a W&B run grouped with it.
* **Resume**: ``--ckpt_path last`` continues the newest run of the config (same folder, same W&B
  run, best score kept); ``last``/``best``/a path work for every subcommand.
* **Everything about a run is saved**: the full config in ``config.yaml`` and, by section, in the W&B
  config (:class:`~lightning_meta.callbacks.RunConfig`); the data module's arguments and decoding
  in every checkpoint.  ``test``/``validate``/``predict`` refuse a data config that decodes images
  differently from training, naming the field.
* **Checks before anything starts**: every split and the model's fit to the data are checked before
  any logger or folder is created, so a refused run leaves nothing behind.
* **One-line errors**, exit status 2: ``lightning-meta: configuration error: <field>: <what and the fix>``.
* ``inference_mode=False`` (evaluation adapts with gradients), :class:`~lightning_meta.callbacks.BestCheckpoint`,
  :class:`~lightning_meta.callbacks.EpisodeResultsCSV`, ``metrics.csv``; ``fit`` ends by testing the best
  checkpoint; ``predict`` writes ``predictions.csv``; W&B runs offline when no API key is configured;
  Ctrl-C during ``fit`` stops after the current step and writes ``last.ckpt`` (twice: at once).
"""

from __future__ import annotations

import copy
import logging
import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import BasePredictionWriter, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info

from lightning_meta.algorithms.learner import Learner
from lightning_meta.callbacks import (
    AdaptationCurve,
    BestCheckpoint,
    EpisodeGallery,
    EpisodeResultsCSV,
    EpisodeTable,
    HyperparameterPlot,
    RegressionPlot,
    TrajectoryPlot,
)
from lightning_meta.callbacks.graceful_stop import GracefulStop
from lightning_meta.callbacks.metrics_csv import MetricsCSV
from lightning_meta.callbacks.progress import MetaProgressBar
from lightning_meta.callbacks.run_config import RunConfig
from lightning_meta.callbacks.run_folder import RunFolder
from lightning_meta.catalog import find_config, help_text
from lightning_meta.data.root import TaskDataModule
from lightning_meta.data.saved_settings import compare_with_checkpoint
from lightning_meta.errors import ConfigurationError, one_line_error
from lightning_meta.internals import drop_deprecated_wandb_setting
from lightning_meta.runs import CHECKPOINTS, RunPlan, plan_run

SUBCOMMANDS = ("fit", "validate", "test", "predict")

# Start-up noise of every run: Lightning's advertisement and a deprecation inside its own pytree use.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


class WithoutTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." advertisements from the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(WithoutTips())


def trainer_defaults() -> dict[str, Any]:
    """Fresh Trainer defaults for one CLI run (callbacks hold state, so never shared)."""
    return {"inference_mode": False, "callbacks": [BestCheckpoint(), EpisodeResultsCSV()]}


def wandb_has_credentials() -> bool:
    """Whether W&B could log online: an API key in the environment or in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def parser_kwargs() -> dict[str, Any]:
    """Parsers that raise instead of exiting (so errors become one line), for every subcommand, whose
    ``--help`` starts with the algorithms and shipped configs."""
    description = help_text()
    return {"exit_on_error": False,
            **{name: {"exit_on_error": False, "description": description} for name in SUBCOMMANDS}}


def with_config_paths(args: list[str]) -> list[str]:
    """``args`` with each ``--config NAME`` of a shipped config replaced by its path (see
    :func:`~lightning_meta.catalog.find_config`; existing paths are kept)."""
    resolved, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c") and i + 1 < len(args):
            resolved += [arg, find_config(args[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + find_config(arg.split("=", 1)[1])
        resolved.append(arg)
        i += 1
    return resolved


def visual_callbacks() -> list[pl.Callback]:
    """What ``--visuals true`` (the default) adds: adaptation curve, episode gallery, regression plot,
    the test episodes' W&B table, 2D navigation trajectories, learned hyper-parameters (each skips the learners
    and data it does not apply to)."""
    return [AdaptationCurve(), EpisodeGallery(), RegressionPlot(), EpisodeTable(), TrajectoryPlot(),
            HyperparameterPlot()]


# ---------------------------------------------------------------------- loggers of the config
def configured_loggers(trainer: Namespace) -> list[Namespace]:
    """The ``class_path`` entries of ``trainer.logger`` (one or a list)."""
    logger = trainer.get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if isinstance(entry, Namespace) and entry.get("class_path")]


def is_wandb(entry: Namespace) -> bool:
    return entry["class_path"].rsplit(".", 1)[-1] == "WandbLogger"


def config_name(config: Namespace) -> str:
    """The name of the run's config: the last ``--config`` file's stem, else the model class's name."""
    files = config.get("config") or []
    if files:
        return Path(str(files[-1])).stem
    model = config.get("model")
    class_path = model.get("class_path") if isinstance(model, Namespace) else None
    return class_path.rsplit(".", 1)[-1].lower() if class_path else "run"


def experiment_folder(config: Namespace) -> Path:
    """Where the runs of this config live: the W&B logger's ``save_dir`` if set, else ``runs/<config>``."""
    for entry in configured_loggers(config["trainer"]):
        save_dir = entry.get("init_args", Namespace()).get("save_dir")
        if is_wandb(entry) and save_dir not in (None, "", "."):
            return Path(save_dir)
    return Path("runs") / config_name(config)


def with_run_loggers(config: Namespace, subcommand: str, plan: RunPlan) -> Namespace:
    """A copy of ``config`` whose loggers write into the plan's folder, W&B under the plan's run id.

    The saved ``config.yaml`` keeps the user's values; only what is instantiated gets these.
    """
    config = copy.deepcopy(config)
    trainer = config[subcommand]["trainer"]
    name = config_name(config[subcommand])
    for entry in configured_loggers(trainer):
        args = entry.get("init_args") or Namespace()
        if is_wandb(entry):
            args["save_dir"], args["id"] = plan.folder, plan.run_id
            args["name"] = args.get("name") or (name if subcommand == "fit" else f"{name}-{subcommand}")
            extra = dict(entry.get("dict_kwargs") or {})
            if plan.resumes:
                extra["resume"] = "allow"
            if plan.group:
                extra.update(group=plan.group, job_type=subcommand)
            entry["dict_kwargs"] = extra
        elif "save_dir" in args:
            args["save_dir"] = plan.folder
        entry["init_args"] = args
    return config


# ---------------------------------------------------------------------- the CLI
class MetaCLI(LightningCLI):
    """LightningCLI with run folders, exact resume, saved settings and early checks (see the module docstring).

    Example::

        MetaCLI(args=["fit", "--config", "configs/maml_sinusoid.yaml", "--trainer.max_epochs", "2"])
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("trainer_defaults", trainer_defaults())
        kwargs.setdefault("save_config_callback", RunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_kwargs", parser_kwargs())
        self.plan: Optional[RunPlan] = None
        self.checkpoint: Optional[dict[str, Any]] = None
        if not args:
            args = (Learner, TaskDataModule)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ parsing: the run's plan
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then plan the run: its folder, W&B id and the checkpoint ``--ckpt_path`` names.

        Resolving ``last``/``best`` here, before LightningCLI reloads the model's arguments from the
        checkpoint, is what makes ``--ckpt_path last`` resume the previous run.
        """
        if args is None:  # DDP re-launches sys.argv: keep the resolved paths there
            sys.argv[1:] = with_config_paths(sys.argv[1:])
        elif isinstance(args, list):
            args = with_config_paths(args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        self.plan = RunPlan.inherited() or plan_run(subcommand, experiment_folder(config), config.get("ckpt_path"))
        self.plan.export()
        config["ckpt_path"] = self.plan.ckpt_path
        if self.plan.ckpt_path:
            self.checkpoint = read_checkpoint(self.plan.ckpt_path)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--visuals", type=bool, default=True,
                            help="Draw the adaptation curve, an episode gallery and regression tasks into the run "
                                 "folder and W&B, and put the test episodes in a W&B table")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer", {})
        if trainer.get("gradient_clip_val"):
            raise ConfigurationError(
                "trainer.gradient_clip_val is not supported: meta-learners optimise manually and Lightning "
                "refuses Trainer gradient clipping then. Use --model.init_args.gradient_clip_val "
                f"{trainer.get('gradient_clip_val')} instead")
        if trainer.get("accumulate_grad_batches", 1) not in (None, 1):
            raise ConfigurationError(
                "trainer.accumulate_grad_batches is not supported: meta-learners optimise manually and Lightning "
                "refuses Trainer accumulation then. Use --model.init_args.accumulate_grad_batches "
                f"{trainer.get('accumulate_grad_batches')} instead")
        if not wandb_has_credentials():
            os.environ.setdefault("WANDB_MODE", "offline")

    def instantiate_classes(self) -> None:
        """As LightningCLI's, with the loggers pointed at the run's folder and W&B run."""
        config = self.config if self.plan is None else with_run_loggers(self.config, self.subcommand, self.plan)
        self.config_init = self.parser.instantiate_classes(config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def _add_configure_optimizers_method_to_model(self, subcommand: Optional[str]) -> None:
        """``--optimizer``/``--lr_scheduler`` for a :class:`Learner`: one of each per parameter group (LightningCLI
        would put every parameter in one optimizer); other modules get LightningCLI's behaviour."""
        if not isinstance(self.model, Learner):
            super()._add_configure_optimizers_method_to_model(subcommand)
            return
        config = self._get(self.config_init, "optimizer")
        if not config:
            return
        schedule = self._get(self.config_init, "lr_scheduler")
        self.model.use_optimizer(spec_of(config), spec_of(schedule) if schedule else None)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        if self.plan is None:
            return super().instantiate_trainer(**kwargs)
        config = self._get(self.config_init, "trainer", default={})
        metrics = MetricsCSV(self.plan.folder)
        callbacks = config.get("callbacks") or []
        callbacks = [*(callbacks if isinstance(callbacks, list) else [callbacks]), RunFolder(self.plan.folder), metrics,
                     GracefulStop(config.get("max_time"))]
        kwargs.setdefault("max_time", None)  # GracefulStop ends training on time, after a whole step
        if self._get(self.config, "visuals", True):
            callbacks += visual_callbacks()
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(MetaProgressBar())
        kwargs.setdefault("callbacks", callbacks)
        kwargs.setdefault("default_root_dir", self.plan.folder)
        if config.get("logger") in (None, True):
            kwargs.setdefault("logger", False)  # no W&B configured: metrics.csv only
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                drop_deprecated_wandb_setting(logger)
        trainer.loggers = [*trainer.loggers, metrics.logger]
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None) is None:
                callback.dirpath = os.path.join(self.plan.folder, CHECKPOINTS)
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            writer = self.model.prediction_writer() if isinstance(self.model, Learner) else None
            if writer is not None:
                trainer.callbacks.append(writer)
        return trainer

    # ------------------------------------------------------------------ checks before any logger starts
    def check_before(self, stage: str) -> None:
        """Check the data of every split the stage uses, and the model against it, before Lightning
        starts the loggers (so a refused run leaves no folder and no W&B run)."""
        datamodule, model = self.datamodule, self.model
        if self.plan is None:
            return
        if self.checkpoint is not None:
            compare_with_checkpoint(self.checkpoint, datamodule, stage, self.plan.ckpt_path)
        if datamodule is None:
            Path(self.plan.folder).mkdir(parents=True, exist_ok=True)
            return
        datamodule.trainer = self.trainer
        if "LOCAL_RANK" not in os.environ:  # DDP processes started later find the data prepared
            datamodule.prepare_data()
        datamodule.setup(stage)
        if isinstance(model, Learner):
            model.check_stage(datamodule, stage)
        Path(self.plan.folder).mkdir(parents=True, exist_ok=True)  # all checked: the run may start

    def before_fit(self) -> None:
        self.check_before("fit")

    def before_validate(self) -> None:
        self.check_before("validate")

    def before_test(self) -> None:
        self.check_before("test")

    def before_predict(self) -> None:
        self.check_before("predict")

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        if any(isinstance(c, GracefulStop) and c.by_user for c in trainer.callbacks):
            rank_zero_info(f"stopped by Ctrl-C after step {trainer.global_step}, last.ckpt written: continue with the"
                           " same command and --ckpt_path last")
            return
        best: Optional[str] = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
        rank_zero_info(f"testing {'the best checkpoint ' + best if best else 'the final weights'}")
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint as LightningCLI will (``weights_only``), turning an unreadable file into one line."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigurationError(
            f"ckpt_path={path!r}: the checkpoint cannot be read ({reason}): the file is truncated or not a Lightning"
            " checkpoint; give another one (a run's checkpoints/ folder keeps best.ckpt and last.ckpt)") from error


def main(args: Optional[list[str]] = None) -> None:
    """Run the CLI; configuration errors end in one line and exit status 2, failed runs in one line and 1."""
    try:
        MetaCLI(args=args)
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - every error is reported in one line, or re-raised
        message, status = one_line_error(error)
        if message is None:
            raise
        print(f"lightning-meta: {message}", file=sys.stderr)
        raise SystemExit(status) from None
    finally:
        os.environ.pop("LIGHTNING_META_RUN", None)


def spec_of(config: Any) -> dict[str, Any]:
    """A ``{"class_path", "init_args"}`` dict of an optimizer or scheduler as the parser holds it."""
    return config.as_dict() if isinstance(config, Namespace) else dict(config)
