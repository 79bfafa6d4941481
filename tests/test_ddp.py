"""DDP on CPU (gloo): 2 processes with B/2 tasks each equal 1 process with B tasks, one all-reduce per step.

Every learner whose episodes are independent of each other in a meta-batch: MAML (vmap and loop),
Reptile (inner Adam on shuffled mini-batches, epsilon annealed to 0), SNAIL, MANN and the
Meta-Learner LSTM (tests/ddp_check.py builds them); the meta-RL learners, which reduce their gradients,
TRPO's curvature products and line search themselves.
"""

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


@pytest.mark.parametrize("batching,model", [
    ("vmap", "mlp"), ("loop", "conv"), ("vmap", "reptile-mlp"), ("loop", "reptile-conv"),
    ("loop", "snail"), ("loop", "mann"), ("loop", "metalstm"),
])
def test_two_processes_match_one(tmp_path, batching, model):
    single = run(tmp_path, 1, batching, model)
    double = run(tmp_path, 2, batching, model)
    assert single["steps"] == double["steps"] == 3
    assert single["lr"] == pytest.approx(double["lr"])
    if model.startswith("reptile"):
        assert single["lr"] == pytest.approx(0.0), "Reptile's epsilon anneals linearly to 0 over the 3 steps"
    for name, value in single["params"].items():
        if "running_" in name or name.endswith("num_batches_tracked"):
            continue  # BatchNorm's running statistics follow the episodes each rank saw (SNAIL's, MANN's embedding)
        torch.testing.assert_close(double["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert double["allreduces"] == 3, "expected exactly one gradient all-reduce per outer step"


@pytest.mark.parametrize("batching,model", [("vmap", "maml_rl_trpo"), ("loop", "maml_rl_ppo"), ("loop", "rl2")])
def test_meta_rl_two_processes_match_one(tmp_path, batching, model):
    """Each task's rollouts come from its own key, so 2 processes with 2 tasks each take the step 1 process
    with 4 takes: TRPO the same trust-region step, PPO and RL² the same Adam steps.  TRPO's conjugate gradient
    amplifies float32's last bits (the order of the task sums differs): measured 1.6e-5 on moves of 0.2."""
    single = run(tmp_path, 1, batching, model)
    double = run(tmp_path, 2, batching, model)
    assert single["steps"] == double["steps"] >= 3
    atol = 1e-4 if model == "maml_rl_trpo" else 1e-6
    for name, value in single["params"].items():
        torch.testing.assert_close(double["params"][name], value, rtol=1e-5, atol=atol, msg=name)
    assert any((value - single["initial"][name]).abs().max() > 1e-4 for name, value in single["params"].items())
