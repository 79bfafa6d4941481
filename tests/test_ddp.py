"""DDP on CPU (gloo): 2 processes with B/2 tasks each equal 1 process with B tasks, one all-reduce per step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_check.py")


def run(tmp_path: Path, devices: int, batching: str, model: str) -> dict:
    out = tmp_path / f"{devices}_{batching}_{model}.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), batching, model],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("batching,model", [("vmap", "mlp"), ("loop", "conv")])
def test_two_processes_match_one(tmp_path, batching, model):
    single = run(tmp_path, 1, batching, model)
    double = run(tmp_path, 2, batching, model)
    assert single["steps"] == double["steps"] == 3
    for name, value in single["params"].items():
        torch.testing.assert_close(double["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert double["allreduces"] == 3, "expected exactly one gradient all-reduce per outer step"
