"""Shared fixtures: the small real data set shipped with the package, W&B offline, quiet Lightning."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import numpy as np
import pytest
import torch

from lightning_meta.data import bundled_path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")


@pytest.fixture(scope="session")
def hanzi() -> np.ndarray:
    """300 classes x 20 font renders of Chinese characters, uint8 [300, 20, 28, 28]: the bundled set
    (lightning_meta/data/bundled/README.md); a config or data module names it ``"hanzi"``."""
    return np.load(bundled_path("hanzi"))["X"]


#: one torch thread per pytest-xdist worker (``make test`` runs one worker per core: more threads would
#: oversubscribe the cores, which made small kernels 25-70x slower on a loaded 2-core machine); two alone
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(autouse=True)
def _no_shared_wandb_service():
    """Keep CLI subprocesses off the W&B service an in-process run started.

    ``wandb.init`` in the test process starts a service and records it in ``WANDB_SERVICE``; every CLI run a
    later test starts as a subprocess inherits that variable and joins the same service, where a resumed run
    id is still "in use" (seen as ``ServerResponseError: run ID ... is in use`` in run-lifecycle tests).
    The test process keeps its connection in memory, so dropping the variable is enough. ``wandb.teardown()``
    is not: a later in-process run then fails with ``AlreadyJoinedError`` (seen in CI).  A run a test left
    open is finished, or the next ``WandbLogger`` in this process would log into it (seen in CI: a later
    test found the earlier run's empty tags).
    """
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    os.environ.pop("WANDB_SERVICE", None)
