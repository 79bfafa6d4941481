"""``RunFolder``: where one invocation (a ``fit``, or a ``test``/``validate``/``predict`` on a checkpoint)
writes its files, known on every rank without a collective.

``trainer.log_dir`` broadcasts from rank 0, so a callback that reads it on one rank only hangs a
multi-process run; :func:`output_dir` reads the folder from this callback instead (the CLI adds one
per run), falling back to ``trainer.default_root_dir`` for a Trainer built in Python.

Example::

    trainer = pl.Trainer(callbacks=[RunFolder("runs/my_experiment/run1")], inference_mode=False)
    output_dir(trainer)            # Path("runs/my_experiment/run1"), on every rank
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import pytorch_lightning as pl


class RunFolder(pl.Callback):
    """Holds the folder of this invocation (absolute); see the module docstring."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(os.path.abspath(path))


def output_dir(trainer: pl.Trainer) -> Path:
    """The folder this invocation writes to: its :class:`RunFolder`, else ``trainer.default_root_dir``."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunFolder):
            return callback.path
    return Path(os.path.abspath(trainer.default_root_dir))
