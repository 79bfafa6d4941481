"""Time and peak memory of one MAML outer step: lightning-meta against learn2learn, same tasks, same weights.

Both sides start from deep copies of one backbone and train on one pre-built meta-batch:

* learn2learn: its standard loop (:mod:`benchmarks.reference`), timed around ``outer_step``;
* lightning-meta: the real ``MAML.training_step`` inside ``Trainer.fit``, timed by a callback from
  ``on_train_batch_start`` to ``on_train_batch_end``, with ``batching="loop"`` and ``"vmap"``
  (and bf16-mixed precision for the convolutional rows).

The first ``--warmup`` steps of every run are dropped; the table gives the median (and the
minimum) of the rest, pooled over ``--rounds`` rounds that take turns between the sides, so a
load spike from another process hits every column alike.  The first step's meta-gradients are
compared (``grad diff``: largest elementwise difference over the largest learn2learn entry).
Peak memory is measured separately, one fresh process per cell (see benchmarks/README.md).

    python -m benchmarks.maml_step            # the full table (~14 minutes on a quiet 2-core CPU)
    python -m benchmarks.maml_step --tiny     # seconds: meta-batch 2, two steps
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import (
    THREADS,
    FirstStepGradients,
    ForeignLoad,
    PeakMemory,
    PeakMemoryCallback,
    StepTimer,
    format_table,
    image_batch,
    in_fresh_process,
    load_average,
    load_hanzi,
    max_relative_difference,
    median_ms,
    memory_loader,
    quiet,
    quiet_trainer,
    sinusoid_batch,
    write_json,
    add_common_arguments,
    code_version,
)
from benchmarks.reference import L2LMAML
from lightning_meta import MAML, ClassImages, TaskBatch
from lightning_meta.models import MLP, Conv4

TITLE = "MAML outer step: lightning-meta vs learn2learn"
HEADERS = ("config", "implementation", "step ms", "min ms", "l2l/ours", "l2l/ours min", "peak MiB", "ours/l2l mem",
           "grad diff", "other load")
L2L = "learn2learn"
OURS = "lightning-meta"


@dataclass(frozen=True)
class StepConfig:
    """One row group of the table: a backbone, an episode shape and an inner loop."""

    model: str  # "conv4" (Omniglot Conv4, 28x28) or "mlp" (sinusoid 1-40-40-1)
    inner_steps: int
    first_order: bool
    inner_lr: float
    meta_batch: int
    ways: int
    shots: int
    queries: int
    measured_steps: int
    outer_lr: float = 1e-3

    @property
    def is_conv(self) -> bool:
        return self.model == "conv4"

    @property
    def name(self) -> str:
        order = "1st" if self.first_order else "2nd"
        steps = f"{self.inner_steps} step{'s' if self.inner_steps > 1 else ''} {order}"
        if self.is_conv:
            return f"conv4 {self.ways}w{self.shots}s B{self.meta_batch} {steps}"
        return f"sine {self.shots}sh B{self.meta_batch} {steps}"


def _conv(steps: int, first_order: bool) -> StepConfig:
    return StepConfig("conv4", steps, first_order, inner_lr=0.4, meta_batch=32, ways=5, shots=1, queries=15,
                      measured_steps=3 if steps == 1 else 2)


CONFIGS: tuple[StepConfig, ...] = (
    _conv(1, True),
    _conv(1, False),
    _conv(5, True),
    _conv(5, False),
    StepConfig("mlp", 5, False, inner_lr=0.01, meta_batch=25, ways=1, shots=10, queries=10, measured_steps=15),
)


def tiny(config: StepConfig) -> StepConfig:
    """The CI size of ``config``: two tasks, two measured steps."""
    return dataclasses.replace(config, meta_batch=2, measured_steps=2)


# --tiny runs two rows (every variant, memory included): each fresh process pays seconds of one-time
# kernel set-up, so all five rows would take minutes.
TINY_CONFIGS = (CONFIGS[1], CONFIGS[4])


@dataclass(frozen=True)
class Variant:
    """One implementation column: learn2learn, or lightning-meta with a batching mode and precision."""

    side: str
    batching: str = ""
    precision: str = "32-true"
    auto: bool = False  # the mode batching="auto" picks
    max_rounds: Optional[int] = None  # timed in the first rounds only (None: every round)

    @property
    def label(self) -> str:
        if self.side == L2L:
            return L2L
        precision = "" if self.precision == "32-true" else f" {self.precision}"
        return f"ours {self.batching}{precision}{' (auto)' if self.auto else ''}"


def variants(config: StepConfig) -> list[Variant]:
    """learn2learn, ours in both batching modes, and ours in bf16-mixed (auto mode) for the conv rows."""
    auto = auto_batching(config)
    ours = [Variant(OURS, mode, auto=mode == auto) for mode in ("loop", "vmap")]
    # bf16 is ~10x slower on this CPU (no native bf16 instructions): one round says enough.
    bf16 = [Variant(OURS, auto, "bf16-mixed", auto=True, max_rounds=1)] if config.is_conv else []
    return [Variant(L2L), *ours, *bf16]


# ---------------------------------------------------------------------------------------- building
def build_backbone(config: StepConfig) -> nn.Module:
    """The backbone both sides copy, seeded so that every process builds the same weights."""
    torch.manual_seed(0)
    if config.is_conv:
        return Conv4(in_channels=1, out_features=config.ways)
    return MLP(in_features=1, out_features=1, hidden=(40, 40))


def build_batch(config: StepConfig) -> TaskBatch:
    """The meta-batch both sides train on: hanzi episodes (Omniglot-shaped) or sinusoids."""
    if config.is_conv:
        pool = ClassImages.from_array(load_hanzi())
        return image_batch(pool, config.meta_batch, config.ways, config.shots, config.queries)
    return sinusoid_batch(config.meta_batch, config.shots, config.queries)


def build_learner(config: StepConfig, backbone: nn.Module, batching: str) -> MAML:
    """lightning-meta's MAML on a deep copy of ``backbone``, with the settings of ``config``."""
    return MAML(copy.deepcopy(backbone), inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                first_order=config.first_order, outer_lr=config.outer_lr, batching=batching)


def build_reference(config: StepConfig, backbone: nn.Module) -> L2LMAML:
    loss_fn = F.cross_entropy if config.is_conv else F.mse_loss
    return L2LMAML(backbone, config.inner_lr, config.inner_steps, config.first_order, config.outer_lr, loss_fn)


def auto_batching(config: StepConfig) -> str:
    """The mode ``batching="auto"`` resolves to on this CPU."""
    return build_learner(config, build_backbone(config), "auto").batching_mode


# ---------------------------------------------------------------------------------------- timing
@dataclass
class Run:
    """Step times (warm-up dropped) and the first step's meta-gradient of one run."""

    seconds: list[float]
    grads: dict[str, Tensor]


def time_reference(config: StepConfig, backbone: nn.Module, batch: TaskBatch, warmup: int,
                   load: ForeignLoad) -> Run:
    """learn2learn: ``warmup + measured_steps`` outer steps, each timed around ``outer_step``."""
    reference = build_reference(config, backbone)
    seconds, grads = [], {}
    for step in range(warmup + config.measured_steps):
        if step >= warmup:
            load.start()
        start = time.perf_counter()
        reference.outer_step(batch)
        seconds.append(time.perf_counter() - start)
        load.stop()
        if step == 0:
            grads = reference.gradients()
    return Run(seconds[warmup:], grads)


def time_ours(config: StepConfig, variant: Variant, backbone: nn.Module, batch: TaskBatch, warmup: int,
              load: ForeignLoad) -> Run:
    """lightning-meta: ``Trainer.fit`` over the same batch, steps timed by a callback."""
    timer, recorder = StepTimer(skip=warmup, load=load), FirstStepGradients("backbone")
    steps = warmup + config.measured_steps
    trainer = quiet_trainer(steps, [timer, recorder], variant.precision)
    trainer.fit(build_learner(config, backbone, variant.batching), memory_loader([batch], steps))
    return Run(timer.durations[warmup:], recorder.grads or {})


def time_variant(config: StepConfig, variant: Variant, backbone: nn.Module, batch: TaskBatch, warmup: int,
                 load: ForeignLoad) -> Run:
    if variant.side == L2L:
        return time_reference(config, backbone, batch, warmup, load)
    return time_ours(config, variant, backbone, batch, warmup, load)


# ---------------------------------------------------------------------------------------- memory
MEMORY_STEPS = 2


def peak_memory(config: StepConfig, variant: Variant, threads: int) -> float:
    """Peak RSS growth (MiB) of ``MEMORY_STEPS`` outer steps; run it in a fresh process.

    The baseline is taken with the model, the optimizer and the batch built (for ours: inside
    ``Trainer.fit``, at ``on_train_start``).
    """
    quiet(threads)
    backbone, batch = build_backbone(config), build_batch(config)
    if variant.side == L2L:
        reference = build_reference(config, backbone)
        memory = PeakMemory()
        memory.start()
        for _ in range(MEMORY_STEPS):
            reference.outer_step(batch)
        return memory.peak_mib()
    callback = PeakMemoryCallback()
    trainer = quiet_trainer(MEMORY_STEPS, [callback], variant.precision)
    trainer.fit(build_learner(config, backbone, variant.batching), memory_loader([batch], MEMORY_STEPS))
    return callback.peak


# ---------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Settings:
    """How much to measure: timing rounds, warm-up steps per run, memory or not, torch threads."""

    rounds: int = 4
    warmup: int = 2
    memory: bool = True
    threads: int = THREADS
    check_targets: bool = True  # the targets are about the full sizes, not --tiny


@dataclass
class Cell:
    """The measurements of one (config, variant) pair."""

    config: StepConfig
    variant: Variant
    seconds: list[float] = field(default_factory=list)
    grads: dict[str, Tensor] = field(default_factory=dict)
    peak_mib: float = float("nan")
    load: ForeignLoad = field(default_factory=ForeignLoad)

    @property
    def median_ms(self) -> float:
        return median_ms(self.seconds)

    @property
    def min_ms(self) -> float:
        return 1000.0 * min(self.seconds)


def measure_config(config: StepConfig, settings: Settings) -> list[Cell]:
    """Every variant of ``config``: ``rounds`` interleaved timing rounds, then peak memory."""
    backbone, batch = build_backbone(config), build_batch(config)
    cells = [Cell(config, v) for v in variants(config)]
    for round_index in range(settings.rounds):
        for cell in cells:
            if cell.variant.max_rounds is not None and round_index >= cell.variant.max_rounds:
                continue
            run = time_variant(config, cell.variant, backbone, batch, settings.warmup, cell.load)
            cell.seconds += run.seconds
            if round_index == 0:
                cell.grads = run.grads
        print(f"  {config.name}: timing round {round_index + 1}/{settings.rounds} done", file=sys.stderr, flush=True)
    if settings.memory:
        for cell in cells:
            cell.peak_mib = in_fresh_process(peak_memory, config, cell.variant, settings.threads,
                                             preload=["benchmarks.reference"])
    return cells


def table_rows(cells: Sequence[Cell]) -> list[list]:
    """Table rows of one config: learn2learn first, ratios against it."""
    reference = cells[0]
    rows = []
    for i, cell in enumerate(cells):
        is_ref = cell.variant.side == L2L
        rows.append([
            cell.config.name if i == 0 else "",
            cell.variant.label,
            cell.median_ms,
            cell.min_ms,
            None if is_ref else reference.median_ms / cell.median_ms,
            None if is_ref else reference.min_ms / cell.min_ms,
            cell.peak_mib,
            None if is_ref else cell.peak_mib / reference.peak_mib,
            "(reference)" if is_ref else max_relative_difference(cell.grads, reference.grads),
            cell.load.cores,
        ])
    return rows


def verdict(cells: Sequence[Cell]) -> str:
    """The target of ``cells``' config, checked on the mode ``batching="auto"`` picks at fp32 (median times).

    Conv4: at least as fast as learn2learn with at most 1.1x its peak memory; sinusoid: 4x faster.
    """
    reference = cells[0]
    auto = next(c for c in cells if c.variant.auto and c.variant.precision == "32-true")
    speed = reference.median_ms / auto.median_ms
    memory = auto.peak_mib / reference.peak_mib
    config = auto.config
    if config.is_conv:
        ok = speed >= 1.0 and not memory > 1.1  # NaN memory (not measured) does not fail
        goal = "speed >= 1.0x, memory <= 1.1x"
    else:
        ok = speed >= 4.0
        goal = "speed >= 4x"
    return (f"{config.name}: {auto.variant.label} {speed:.2f}x speed, {memory:.2f}x memory "
            f"-> {'meets' if ok else 'MISSES'} target ({goal})")


def run(configs: Sequence[StepConfig], settings: Settings) -> dict:
    """Measure every config; returns the printed text and the raw numbers."""
    quiet(settings.threads)
    load_before, version = load_average(), code_version()
    rows, notes, raw = [], [], []
    for config in configs:
        cells = measure_config(config, settings)
        rows += table_rows(cells)
        if settings.check_targets:
            notes.append(verdict(cells))
        print(format_table(HEADERS, table_rows(cells)), file=sys.stderr, flush=True)
        raw += [{"config": c.config.name, "variant": c.variant.label, "seconds": c.seconds, "peak_mib": c.peak_mib,
                 "other_load": c.load.cores} for c in cells]
    header = (f"{TITLE}\n(lightning-meta at {version}; torch {torch.__version__}, {settings.threads} thread(s);\n"
              f" median and min over {settings.rounds} round(s) of measured steps, {settings.warmup} warm-up step(s) "
              f"dropped per run; load average {load_before:.1f} before, {load_average():.1f} after)")
    text = "\n".join([header, "", format_table(HEADERS, rows), "", *notes])
    return {"text": text, "raw": raw}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per config (default 4, tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped per run (default 2, tiny 1)")
    parser.add_argument("--only", default="", help="run only the configs whose name contains this")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    configs = [tiny(c) for c in TINY_CONFIGS] if args.tiny else list(CONFIGS)
    configs = [c for c in configs if args.only in c.name]
    settings = Settings(rounds=args.rounds or (1 if args.tiny else 4),
                        warmup=args.warmup if args.warmup is not None else (1 if args.tiny else 2),
                        memory=not args.no_memory, threads=args.threads, check_targets=not args.tiny)
    result = run(configs, settings)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
