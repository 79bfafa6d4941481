"""Shared pieces of the benchmarks: identical tasks, a quiet Trainer, step timing, peak memory, tables.

Nothing here is specific to one side of a comparison: the tasks are built once and handed to both
learn2learn and lightning-meta, the Trainer is the one a user would build (minus logging and
checkpoints), and memory is read from the kernel for the whole process.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_meta.data import ClassImages, bundled_path, episode_generator
from lightning_meta.data.regression import SinusoidTasks
from lightning_meta.tasks import TaskBatch

REPO = Path(__file__).resolve().parents[1]
HANZI = bundled_path("hanzi")  # shipped with the package (lightning_meta/data/bundled)
THREADS = 2
MIB = 1024.0


# ---------------------------------------------------------------------------------------- setup
def quiet(threads: int = THREADS) -> None:
    """Silence Lightning's banners and the warnings a benchmark run does not act on; set torch's threads."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)


def load_hanzi() -> Tensor:
    """The test images: uint8 ``[300 classes, 20 samples, 28, 28]`` (lightning_meta/data/bundled/README.md)."""
    return torch.from_numpy(np.load(HANZI)["X"])


def image_batch(pool: ClassImages, meta_batch: int, ways: int, shots: int, queries: int, seed: int = 0,
                first: int = 0) -> TaskBatch:
    """``meta_batch`` training episodes ``first, first + 1, ...`` of ``pool``, drawn as the data module draws them."""
    episodes = range(first, first + meta_batch)
    tasks = [pool.sample(episode_generator(seed, "train", i, 0), ways, shots, queries) for i in episodes]
    return TaskBatch.stack(tasks, index=list(episodes))


def sinusoid_batch(meta_batch: int, shots: int, queries: int, seed: int = 0) -> TaskBatch:
    """``meta_batch`` sinusoid regression tasks (Finn et al. 2017), targets ``[points, 1]``."""
    family = SinusoidTasks()
    tasks = [family.sample(episode_generator(seed, "train", i, 0), 1, shots, queries) for i in range(meta_batch)]
    return TaskBatch.stack(tasks, index=list(range(meta_batch)))


class BatchesInMemory(IterableDataset):
    """Yields pre-built batches in turn, ``count`` in all (the "compute only" data source)."""

    def __init__(self, batches: Sequence[TaskBatch], count: int):
        super().__init__()
        self.batches, self.count = list(batches), count

    def __iter__(self) -> Iterator[TaskBatch]:
        return (self.batches[i % len(self.batches)] for i in range(self.count))


def memory_loader(batches: Sequence[TaskBatch], count: int) -> DataLoader:
    """A loader over pre-built batches; no worker, no copying, no collation."""
    return DataLoader(BatchesInMemory(batches, count), batch_size=None, num_workers=0)


def quiet_trainer(max_steps: int, callbacks: Sequence[pl.Callback] = (), precision: str = "32-true") -> pl.Trainer:
    """The Trainer a user would build on this CPU, without logger, checkpoints, progress bar or validation."""
    return pl.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=max_steps, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=list(callbacks),
    )


# ---------------------------------------------------------------------------------------- timing
class StepTimer(pl.Callback):
    """Wall-clock time of every training step, ``on_train_batch_start`` to ``on_train_batch_end``.

    ``ends`` holds the end time of every step (and ``started`` the start of training), so the
    intervals between them also cover fetching the next batch, as a user's run does.  Steps from
    the ``skip``-th on also feed ``load`` (the other processes' CPU use while they ran).
    """

    def __init__(self, skip: int = 0, load: Optional["ForeignLoad"] = None) -> None:
        self.skip = skip
        self.load = load if load is not None else ForeignLoad()
        self.durations: list[float] = []
        self.ends: list[float] = []
        self.started = 0.0
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if len(self.durations) >= self.skip:
            self.load.start()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        self.load.stop()
        self.durations.append(now - self._start)
        self.ends.append(now)


class FirstStepGradients(pl.Callback):
    """Copies the meta-gradient of the first outer step, just before the optimizer applies it.

    Parameters are keyed as in ``getattr(pl_module, prefix).named_parameters()`` (the backbone's
    own names, as learn2learn's ``maml.module`` has them).
    """

    def __init__(self, prefix: str = "backbone") -> None:
        self.prefix = prefix
        self.grads: Optional[dict[str, Tensor]] = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.grads is None:
            module = getattr(pl_module, self.prefix)
            self.grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


class ForeignLoad:
    """CPU time other processes used while we measured, in cores (0: we had the machine to ourselves).

    Read from the kernel's counters (``/proc/stat`` for the machine, ``/proc/self/stat`` for this
    process and its threads, in clock ticks).  On a shared machine a step that ran beside another
    job is slower for reasons that are not ours; the tables print this next to the times.
    Data-loader worker processes count as foreign.
    """

    def __init__(self) -> None:
        self.busy_ticks = 0
        self.seconds = 0.0
        self._start: Optional[tuple[int, int, float]] = None

    @staticmethod
    def _sample() -> tuple[int, int, float]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        machine_busy = sum(values) - values[3] - values[4]  # all but idle and iowait
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])  # utime + stime
        return machine_busy, own, time.perf_counter()

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        if self._start is None:
            return
        machine, own, now = self._sample()
        self.busy_ticks += (machine - self._start[0]) - (own - self._start[1])
        self.seconds += now - self._start[2]
        self._start = None

    @property
    def cores(self) -> float:
        if self.seconds <= 0:
            return float("nan")
        return max(self.busy_ticks, 0) / os.sysconf("SC_CLK_TCK") / self.seconds


def median_ms(seconds: Sequence[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def code_version() -> str:
    """The commit of the checkout and whether the package differs from it (results belong to a version)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    changed = git("status", "--porcelain", "--", "lightning_meta").splitlines()
    return commit + (f" + uncommitted changes in {len(changed)} package file(s)" if changed else "")


def load_average() -> float:
    """The 1-minute load average: other processes competing for this machine's cores."""
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


class PeakMemory:
    """Growth of this process's peak resident set (VmHWM) over its resident set at :meth:`start`.

    :meth:`start` resets the kernel's high-water mark to the current RSS (``echo 5 >
    /proc/self/clear_refs``, Linux >= 4.0), so allocations made and freed before it do not count;
    :meth:`peak_mib` reads the high-water mark since then.  It counts everything the process
    touches (tensors, autograd graphs, allocator caches, Python objects), as a user's run would.
    """

    def __init__(self) -> None:
        self.baseline_kib = 0

    def start(self) -> None:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        self.baseline_kib = _status_kib("VmRSS")

    def peak_mib(self) -> float:
        return (_status_kib("VmHWM") - self.baseline_kib) / MIB


class PeakMemoryCallback(pl.Callback):
    """:class:`PeakMemory` over ``Trainer.fit``'s training steps (model, optimizer and data already built)."""

    def __init__(self) -> None:
        self.memory = PeakMemory()
        self.peak = float("nan")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.memory.start()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.peak = self.memory.peak_mib()


_PRELOAD = ["torch", "pytorch_lightning", "lightning_meta"]


def in_fresh_process(function: Callable[..., Any], *args: Any, preload: Sequence[str] = ()) -> Any:
    """``function(*args)`` in a fresh process forked from a clean "forkserver" that has imported ``preload``.

    The server imports the heavy modules once (torch, Lightning, learn2learn take ~10 s), never
    runs a tensor operation, and forks one child per call: each measurement starts from the same
    untouched heap and thread pool, without paying the imports again.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD + [m for m in preload if m not in _PRELOAD])
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(function, *args).result()


# ---------------------------------------------------------------------------------------- results
def add_common_arguments(parser: argparse.ArgumentParser, json_output: bool = True) -> None:
    """The options every benchmark script takes (``--json`` where it has raw numbers to write)."""
    parser.add_argument("--tiny", action="store_true", help="CI size: seconds, not minutes")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    if json_output:
        parser.add_argument("--json", default="", help="also write the raw numbers to this file")


def write_json(path: str, data: Any) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(data, out, indent=1)



def max_relative_difference(ours: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """Largest elementwise ``|ours - reference|`` over all parameters, over the largest ``|reference|`` entry.

    Scaled by the largest entry, not entry by entry: a convolution bias followed by BatchNorm has
    a meta-gradient that is exactly zero up to round-off, whose relative error means nothing.
    """
    if set(ours) != set(reference):
        raise KeyError(f"parameter names differ: {sorted(set(ours) ^ set(reference))}")
    difference = max(float((ours[k].double() - reference[k].double()).abs().max()) for k in reference)
    scale = max(float(reference[k].double().abs().max()) for k in reference)
    return difference / scale


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned, ready for a terminal or a Markdown code block."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] not in ("", None)) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
        return f"{value:.1e}"
    return str(value)
