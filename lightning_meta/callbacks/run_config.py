"""``RunConfig``: the full resolved config of a run, as ``config.yaml`` in its folder and in its W&B config.

LightningCLI's ``SaveConfigCallback`` writes to ``trainer.log_dir`` (shared by every run of a
config when W&B is the first logger) and gives W&B nothing.  This one writes into the
invocation's own folder (:func:`~lightning_meta.callbacks.run_folder.output_dir`) and puts every
section (``model``, ``data``, ``trainer``, ``seed_everything``, optimiser and scheduler, and
``lightning_meta``: library version and git commit) into the W&B run config, so a run on the W&B
dashboard says how to reproduce it.  The CLI installs it; nothing to configure.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from typing import Any, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from lightning_meta.callbacks.run_folder import output_dir


@lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    """The commit of the lightning-meta source tree in use (``None`` outside a git checkout)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        result = subprocess.run(["git", "-C", package, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def library_section() -> dict[str, Any]:
    from lightning_meta import __version__

    return {"version": __version__, "git_commit": git_commit()}


class RunConfig(SaveConfigCallback):
    """Writes ``config.yaml`` into the invocation's folder and the config, by section, into W&B."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            folder = output_dir(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(folder / self.config_filename), skip_none=False, overwrite=True,
                             multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def sections(self) -> dict[str, Any]:
        """The resolved config as plain data, plus the ``lightning_meta`` section."""
        sections = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        sections.pop("config", None)
        sections["lightning_meta"] = library_section()
        return sections

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            sections = self.sections()
            for logger in loggers:
                logger.experiment.config.update(sections, allow_val_change=True)
