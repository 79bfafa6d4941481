"""Time and peak memory of one MetaGAN training step against the plain learner: same Conv4, same episodes.

Rows: MAML (second order, one inner step of 0.4) and ProtoNet, each plain, wrapped by MetaGAN with the default fakes
(1 per class in the support set, 3 beside the queries) and with 15 fakes per class beside the queries.  A MetaGAN step
is a discriminator step and a generator step (64/32-channel ``TaskConditionedGenerator``); each step runs the real
``training_step`` inside ``Trainer.fit`` on one pre-built meta-batch of 5-way 1-shot 15-query hanzi episodes, timed
by a callback from ``on_train_batch_start`` to ``on_train_batch_end``.  The first ``warmup`` steps are dropped; the
table gives the median (and the minimum) pooled over rounds that take turns between the variants, and the ratio to
the plain learner (target: <= 2.5x at the default fakes).  Peak memory: one fresh process per cell.

    python -m benchmarks.metagan_step            # the full table (a few minutes on a quiet 2-core CPU)
    python -m benchmarks.metagan_step --tiny     # seconds: meta-batch 1, two steps, no memory
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Optional, Sequence

import torch
from torch import nn

from benchmarks.common import (
    ForeignLoad,
    PeakMemoryCallback,
    StepTimer,
    add_common_arguments,
    code_version,
    format_table,
    image_batch,
    in_fresh_process,
    load_hanzi,
    median_ms,
    memory_loader,
    quiet,
    quiet_trainer,
    write_json,
)
from lightning_meta import MAML, ClassImages, PrototypicalNetwork, TaskBatch
from lightning_meta.algorithms.metagan import MetaGAN
from lightning_meta.models import Conv4
from lightning_meta.models.generator import TaskConditionedGenerator

TITLE = "MetaGAN step vs the plain learner"
HEADERS = ("learner", "variant", "step ms", "min ms", "x plain", "peak MiB", "x plain mem", "other load")
WAYS, SHOTS, QUERIES = 5, 1, 15
#: (label, (support fakes, query fakes) per class; None: the plain learner)
VARIANTS = (("plain", None), ("MetaGAN 1+3 per class", (1, 3)), ("MetaGAN 1+15 per class", (1, 15)))
LEARNERS = ("MAML", "ProtoNet")
MEMORY_STEPS = 3


def build_learner(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "MAML":
        return MAML(Conv4(1, WAYS, hidden_channels=64), inner_lr=0.4, inner_steps=1, batching="loop")
    return PrototypicalNetwork(Conv4(1, None, hidden_channels=64, pooling="max", batch_norm_stats="running"))


def build_model(kind: str, fakes: Optional[tuple[int, int]]) -> nn.Module:
    learner = build_learner(kind)
    if fakes is None:
        return learner
    torch.manual_seed(1)
    return MetaGAN(learner, TaskConditionedGenerator(1, 28, noise_dim=32, hidden_channels=64, encoder_channels=32),
                   support_fakes=fakes[0], query_fakes=fakes[1])


def build_batch(meta_batch: int) -> TaskBatch:
    return image_batch(ClassImages.from_array(load_hanzi()[:64]), meta_batch, WAYS, SHOTS, QUERIES)


def trainer_steps(fakes: Optional[tuple[int, int]], batches: int) -> int:
    """``max_steps`` for ``batches`` training batches: MetaGAN steps two optimizers per batch."""
    return batches if fakes is None else 2 * batches


def time_variant(kind: str, fakes: Optional[tuple[int, int]], batch: TaskBatch, steps: int, warmup: int,
                 load: ForeignLoad) -> list[float]:
    timer = StepTimer(skip=warmup, load=load)
    model = build_model(kind, fakes)
    quiet_trainer(trainer_steps(fakes, warmup + steps), [timer]).fit(model, memory_loader([batch], warmup + steps))
    return timer.durations[warmup:]


def peak_memory(kind: str, fakes: Optional[tuple[int, int]], meta_batch: int, threads: int) -> float:
    """Peak RSS growth (MiB) over ``MEMORY_STEPS`` batches, in a fresh process."""
    quiet(threads)
    batch, callback = build_batch(meta_batch), PeakMemoryCallback()
    model = build_model(kind, fakes)
    quiet_trainer(trainer_steps(fakes, MEMORY_STEPS), [callback]).fit(model, memory_loader([batch], MEMORY_STEPS))
    return callback.peak


def run(meta_batch: int, steps: int, rounds: int, warmup: int, threads: int, memory: bool,
        learners: Sequence[str] = LEARNERS) -> dict:
    quiet(threads)
    batch = build_batch(meta_batch)
    cells = [(kind, label, fakes) for kind in learners for label, fakes in VARIANTS]
    seconds: dict[str, list[float]] = {f"{k} {label}": [] for k, label, _ in cells}
    loads = {name: ForeignLoad() for name in seconds}
    for round_index in range(rounds):
        for kind, label, fakes in cells:
            name = f"{kind} {label}"
            seconds[name] += time_variant(kind, fakes, copy.deepcopy(batch), steps, warmup, loads[name])
        print(f"  timing round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    peaks = {f"{k} {label}": (in_fresh_process(peak_memory, k, fakes, meta_batch, threads) if memory else float("nan"))
             for k, label, fakes in cells}
    rows = []
    for kind, label, _ in cells:
        name, plain = f"{kind} {label}", f"{kind} plain"
        rows.append([kind, label, median_ms(seconds[name]), 1000 * min(seconds[name]),
                     None if name == plain else median_ms(seconds[name]) / median_ms(seconds[plain]), peaks[name],
                     None if name == plain else peaks[name] / peaks[plain], loads[name].cores])
    header = (f"{TITLE}\n(Conv4-64 on hanzi 28x28, {WAYS}-way {SHOTS}-shot {QUERIES} queries, meta-batch {meta_batch};"
              f" MAML second order, 1 inner step; generator 64/32 channels; lightning-meta at {code_version()}; torch"
              f" {torch.__version__}, {threads} thread(s); median and min over {rounds} round(s) x {steps} steps after"
              f" {warmup} warm-up; a MetaGAN step is a discriminator and a generator update)")
    return {"text": "\n".join([header, "", format_table(HEADERS, rows)]),
            "raw": {"seconds": seconds, "peak_mib": peaks}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3, tiny 1)")
    parser.add_argument("--meta-batch", type=int, default=None, help="tasks per step (default 4, tiny 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    args = parser.parse_args(argv)
    result = run(meta_batch=args.meta_batch or (1 if args.tiny else 4), steps=2 if args.tiny else 5,
                 rounds=args.rounds or (1 if args.tiny else 3), warmup=1 if args.tiny else 2, threads=args.threads,
                 memory=not (args.no_memory or args.tiny))
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
