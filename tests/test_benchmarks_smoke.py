"""The benchmarks run end to end at their CI size (``--tiny``) and print their tables.

No timing is asserted: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("learn2learn")

REPO = Path(__file__).resolve().parents[1]
TABLES = {
    "MAML outer step: lightning-meta vs learn2learn": ("implementation", "step ms", "l2l/ours", "peak MiB",
                                                       "ours/l2l mem", "grad diff"),
    "Prototypical network training step: lightning-meta vs learn2learn": ("ours per episode", "ours embed_together",
                                                                           "l2l/ours", "ours/l2l mem"),
    "Trainer.fit throughput: episodic data loading vs compute only": ("num_workers", "tasks/s", "vs compute only"),
    "Model-based and learned-optimizer training steps next to ProtoNet": ("SNAIL", "SNAIL 1 per pass",
                                                                          "MANN LSTM baseline", "Meta-Learner LSTM",
                                                                          "vs ProtoNet", "inner ms", "LSTM ms"),
    "Environment steps per second: batched task families vs a gymnasium SyncVectorEnv": ("batched steps/s",
                                                                                         "gymnasium steps/s",
                                                                                         "batched/gymnasium"),
    "Meta-RL: seconds per meta-iteration, broken down": ("collect s", "curvature s", "line search s", "iteration s"),
    "Unrolled hypergradient: plain vs segmented reverse mode vs torch.utils.checkpoint": ("seconds", "vs plain",
                                                                                          "peak MiB", "grad diff"),
    "iMAML vs second-order MAML: ms per task and peak memory by inner steps": ("algorithm", "inner steps",
                                                                              "ms per task", "peak MiB"),
    "Against published code: hypergradient vs higher, iMAML vs TorchOpt custom_root": ("implementation", "ref/ours",
                                                                                       "grad diff"),
    "Data loading: augmented 84x84 RGB episodes/s vs a mini-ImageNet MAML step": ("num_workers", "episodes/s",
                                                                                   "vs step"),
    "MetaGAN step vs the plain learner": ("learner", "step ms", "x plain", "peak MiB"),
    "FIGR: meta-iterations per second and adaptation time of one class": ("meta-iterations/s", "adapt one class ms"),
}


@pytest.mark.slow
def test_run_all_tiny_prints_every_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    raw = tmp_path / "raw.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--tiny", "--json", str(raw)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for title, headers in TABLES.items():
        assert title in done.stdout
        for header in headers:
            assert header in done.stdout, header
    assert "learn2learn" in done.stdout and "ours loop" in done.stdout and "ours vmap" in done.stdout
    assert raw.exists() and raw.stat().st_size > 0
