"""Shared fixtures: small real data shipped in tests/data, W&B offline, quiet Lightning."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def hanzi() -> np.ndarray:
    """300 classes x 20 font renders of Chinese characters, uint8 [300, 20, 28, 28] (see tests/data/README.md)."""
    return np.load(DATA / "hanzi_300x20.npz")["X"]


#: one torch thread per pytest-xdist worker (``make test`` runs one worker per core: more threads would
#: oversubscribe the cores, which made small kernels 25-70x slower on a loaded 2-core machine); two alone
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(THREADS)
    yield
