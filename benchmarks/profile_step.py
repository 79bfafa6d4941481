"""Where one MAML outer step spends its time: torch.profiler over ours (inside ``Trainer.fit``) and learn2learn.

For each side, one outer step after warm-up runs under ``torch.profiler``; the script prints the
top operators by self CPU time and splits the step's wall time into time inside ATen operators
(summed self time of every operator on the main thread) and the rest (Python, autograd/functorch
bookkeeping not attributed to an operator, Lightning's loop).

    python -m benchmarks.profile_step                          # conv4 5w1s B32, 5 steps, 2nd order
    python -m benchmarks.profile_step --only "1 step 1st" --batching vmap --rows 25
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Optional, Sequence

import pytorch_lightning as pl
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import add_common_arguments, memory_loader, quiet, quiet_trainer
from benchmarks.maml_step import CONFIGS, StepConfig, build_backbone, build_batch, build_learner, build_reference, tiny
from lightning_meta import TaskBatch

WARMUP = 2


class ProfileOneStep(pl.Callback):
    """Profiles training step ``step`` (0-based) from ``on_train_batch_start`` to ``on_train_batch_end``."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.profiler: Optional[profile] = None
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == self.step:
            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.step and self.profiler is not None:
            self.seconds = time.perf_counter() - self._start
            self.profiler.__exit__(None, None, None)


def profile_ours(config: StepConfig, batch: TaskBatch, batching: str, precision: str) -> tuple[profile, float]:
    """Profile of our step ``WARMUP`` inside ``Trainer.fit``, and its wall time (s)."""
    callback = ProfileOneStep(WARMUP)
    trainer = quiet_trainer(WARMUP + 1, [callback], precision)
    trainer.fit(build_learner(config, build_backbone(config), batching), memory_loader([batch], WARMUP + 1))
    assert callback.profiler is not None
    return callback.profiler, callback.seconds


def profile_reference(config: StepConfig, batch: TaskBatch) -> tuple[profile, float]:
    """Profile of learn2learn's step ``WARMUP`` and its wall time (s)."""
    reference = build_reference(config, build_backbone(config))
    for _ in range(WARMUP):
        reference.outer_step(batch)
    return _profiled(lambda: reference.outer_step(batch))


def _profiled(step: Callable[[], None]) -> tuple[profile, float]:
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    return profiler, seconds


def summary(name: str, profiler: profile, seconds: float, rows: int) -> str:
    """Top operators by self CPU time and the operator / other split of the wall time."""
    events = profiler.key_averages()
    operator_seconds = sum(e.self_cpu_time_total for e in events) / 1e6
    calls = sum(e.count for e in events)
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=45)
    split = (f"{name}: step {1000 * seconds:.0f} ms under the profiler; {1000 * operator_seconds:.0f} ms "
             f"({100 * operator_seconds / seconds:.0f}%) inside {calls} operator calls, "
             f"{1000 * (seconds - operator_seconds):.0f} ms outside them")
    return "\n".join([split, table])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, json_output=False)
    parser.add_argument("--only", default="5 steps 2nd", help="the first config whose name contains this")
    parser.add_argument("--batching", default="loop", choices=("loop", "vmap"))
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--rows", type=int, default=20, help="operators listed per side")
    args = parser.parse_args(argv)
    quiet(args.threads)
    config = next(tiny(c) if args.tiny else c for c in CONFIGS if args.only in c.name)
    batch = build_batch(config)
    ours = profile_ours(config, batch, args.batching, args.precision)
    reference = profile_reference(config, batch)
    print(f"Profile of one outer step: {config.name}, {args.threads} thread(s)\n")
    print(summary(f"ours {args.batching} {args.precision}", *ours, args.rows))
    print(summary("learn2learn", *reference, args.rows))


if __name__ == "__main__":
    main()
