"""``python -m lightning_meta fit|validate|test|predict --config configs/X.yaml``: LightningCLI for meta-learning.

Defaults that meta-learning needs, on top of LightningCLI:

* ``inference_mode=False``: evaluation adapts to each task with gradients;
* :class:`~lightning_meta.callbacks.BestCheckpoint` (``best.ckpt`` by ``val/acc`` or ``val/mse``, and
  ``last.ckpt``) and :class:`~lightning_meta.callbacks.EpisodeResultsCSV`;
* ``fit`` ends by testing the best checkpoint and printing mean and 95% CI over the test episodes;
* ``predict`` writes the class predictions of ``--data.init_args.query_dir`` given the classes of
  ``--data.init_args.support_dir`` to a CSV through :class:`~lightning_meta.callbacks.PredictionCSV`
  (added unless a prediction writer is configured);
* W&B runs offline when no API key is configured (``WANDB_MODE=offline``), never prompting;
* ``--trainer.gradient_clip_val`` / ``--trainer.accumulate_grad_batches``, which Lightning refuses
  under manual optimisation, are turned into an error that names the model argument to use.
"""

from __future__ import annotations

import netrc
import os
import sys
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.callbacks import BestCheckpoint, EpisodeResultsCSV, PredictionCSV
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.errors import ConfigurationError


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


class MetaCLI(LightningCLI):
    """LightningCLI with the meta-learning defaults listed in the module docstring.

    Example::

        MetaCLI(args=["fit", "--config", "configs/maml_sinusoid.yaml", "--trainer.max_epochs", "2"])
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("trainer_defaults", trainer_defaults())
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        if not args:
            args = (MetaLearner, EpisodicDataModule)
        super().__init__(*args, **kwargs)

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

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            trainer.callbacks.append(PredictionCSV())
        return trainer

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        best: Optional[str] = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
        rank_zero_info(f"testing {'the best checkpoint ' + best if best else 'the final weights'}")
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``python -m lightning_meta`` and the ``lightning-meta`` command."""
    try:
        MetaCLI(args=args)
    except ConfigurationError as error:
        print(f"lightning-meta: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
