"""Time and peak memory of one training step of MANN, SNAIL and the Meta-Learner LSTM, next to ProtoNet.

All four train on the same pre-built meta-batch of Omniglot-shaped 5-way 1-shot episodes (28x28 hanzi
images, 9 queries per class: 50 images per episode, so MANN reads the paper's 50-step streams of 5
classes x 10 instances) with the same Conv4 (64 filters, max-pooling) from the same weights:

* ProtoNet: ``PrototypicalNetwork`` on the Conv4 embedding (the reference: the embedding alone);
* SNAIL: the same embedding, then the paper's Omniglot sequence model (attention [[64, 32],
  [256, 128], [512, 256]], TC filters [128, 128]), every query appended to the shared support prefix,
  the sequence model run on 4 episodes per call (the default ``episodes_per_pass``); and one episode
  per call (``SNAIL 1 per pass``), the least memory;
* MANN: the same embedding, an LSTM controller of 200 units, a 128 x 40 LRUA memory with 4 read
  heads (the paper's sizes), 50 steps per stream; and its plain-LSTM baseline (``memory_slots=0``);
* Meta-Learner LSTM: the same Conv4 as the learner (with a 5-way head, batch statistics) trained on
  the 5 support images by 12 LSTM updates (the paper's 5-way 1-shot setting), its query loss
  differentiated through them.  Its inner loop is timed apart (``inner ms``: the 12 updates' forward
  pass, of which ``LSTM ms`` is the coordinate-wise LSTM and the rest the learner's support
  gradients; what remains of the step is the query pass, the backward through the 12 updates and Adam).

The issue's target: MANN and SNAIL within 1.5x of ProtoNet's step (the embedding dominates).
Each variant is the real ``training_step`` in ``Trainer.fit`` (CPU, no logger, checkpointing or
validation); variants take turns within a round; peak memory is the growth of the resident set over
two steps, in a fresh process per variant.

    python -m benchmarks.black_box_step            # meta-batch 32 (minutes: the Meta-LSTM is the slow one)
    python -m benchmarks.black_box_step --tiny     # seconds: meta-batch 2, 2 LSTM updates
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch

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
from lightning_meta import MANN, SNAIL, ClassImages, MetaLearnerLSTM, PrototypicalNetwork, TaskBatch
from lightning_meta.models import Conv4

TITLE = "Model-based and learned-optimizer training steps next to ProtoNet (same Conv4, same episodes)"
HEADERS = ("model", "step ms", "min ms", "tasks/s", "vs ProtoNet", "inner ms", "LSTM ms", "peak MiB",
           "mem vs ProtoNet", "other load")
WAYS, SHOTS, QUERIES = 5, 1, 9
VARIANTS = ("ProtoNet", "SNAIL", "SNAIL 1 per pass", "MANN", "MANN LSTM baseline", "Meta-Learner LSTM")
MEMORY_STEPS = 2


class TimedMetaLearnerLSTM(MetaLearnerLSTM):
    """The Meta-Learner LSTM with its inner loop's forward time recorded per training step:
    ``inner`` (all updates) and ``learner`` (the support losses and gradients inside them: ``inner`` less
    the time in the LSTM update rule)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner_seconds: list[float] = []
        self.learner_seconds: list[float] = []

    def on_train_batch_start(self, batch: TaskBatch, batch_idx: int) -> None:
        self.inner_seconds.append(0.0)
        self.learner_seconds.append(0.0)

    def adapt(self, params, support_x, support_y, steps, batch_size):
        start = time.perf_counter()
        result = super().adapt(params, support_x, support_y, steps, batch_size)
        if self.training:
            self.inner_seconds[-1] += time.perf_counter() - start
            self.learner_seconds[-1] += time.perf_counter() - start
        return result

    def inner_update(self, params):
        update = super().inner_update(params)

        def timed(*args):
            start = time.perf_counter()
            result = update(*args)
            if self.training:  # the LSTM's time is not the learner's
                self.learner_seconds[-1] -= time.perf_counter() - start
            return result

        return timed


def build_embedding(head: Optional[int] = None, statistics: str = "running") -> Conv4:
    """The shared Conv4-64 (max-pooling), from a fixed seed: headless, or with a ``head``-way classifier."""
    torch.manual_seed(0)
    return Conv4(1, head, pooling="max", batch_norm_stats=statistics)


def build_model(variant: str, inner_steps: int) -> pl.LightningModule:
    embedding = build_embedding()
    if variant == "ProtoNet":
        return PrototypicalNetwork(embedding)
    if variant.startswith("SNAIL"):
        return SNAIL(embedding, ways=WAYS, shots=SHOTS, episodes_per_pass=1 if "1 per pass" in variant else 4)
    if variant.startswith("MANN"):
        return MANN(WAYS, embedding, memory_slots=0 if "baseline" in variant else 128)
    learner = build_embedding(WAYS, statistics="batch")
    return TimedMetaLearnerLSTM(learner, inner_steps=inner_steps)


def build_batch(meta_batch: int) -> TaskBatch:
    return image_batch(ClassImages.from_array(load_hanzi()), meta_batch, WAYS, SHOTS, QUERIES)


def time_variant(variant: str, batch: TaskBatch, steps: int, warmup: int, inner_steps: int,
                 load: ForeignLoad) -> tuple[list[float], list[float], list[float]]:
    """Step seconds after ``warmup``, and for the Meta-LSTM its inner-loop and learner-gradient seconds."""
    timer = StepTimer(skip=warmup, load=load)
    model = build_model(variant, inner_steps)
    quiet_trainer(warmup + steps, [timer]).fit(model, memory_loader([batch], warmup + steps))
    inner = getattr(model, "inner_seconds", [])[warmup:]
    learner = getattr(model, "learner_seconds", [])[warmup:]
    return timer.durations[warmup:], inner, learner


def peak_memory(variant: str, meta_batch: int, inner_steps: int, threads: int) -> float:
    """Peak RSS growth (MiB) over ``MEMORY_STEPS`` steps, measured in a fresh process."""
    quiet(threads)
    callback = PeakMemoryCallback()
    model, batch = build_model(variant, inner_steps), build_batch(meta_batch)
    quiet_trainer(MEMORY_STEPS, [callback]).fit(model, memory_loader([batch], MEMORY_STEPS))
    return callback.peak


def median_or_nan(seconds: Sequence[float]) -> float:
    return median_ms(seconds) if seconds else float("nan")


def run(meta_batch: int, steps: int, rounds: int, warmup: int, inner_steps: int, threads: int,
        memory: bool) -> dict:
    quiet(threads)
    batch = build_batch(meta_batch)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    inner: list[float] = []
    learner: list[float] = []
    loads = {v: ForeignLoad() for v in VARIANTS}
    for round_index in range(rounds):
        for variant in VARIANTS:
            taken, inner_taken, learner_taken = time_variant(variant, batch, steps, warmup, inner_steps, loads[variant])
            seconds[variant] += taken
            inner += inner_taken
            learner += learner_taken
        print(f"  timing round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    peaks = {v: in_fresh_process(peak_memory, v, meta_batch, inner_steps, threads) if memory else float("nan")
             for v in VARIANTS}
    reference = median_ms(seconds["ProtoNet"])
    lstm = [total - grads for total, grads in zip(inner, learner)]
    rows = []
    for variant in VARIANTS:
        step = median_ms(seconds[variant])
        is_meta_lstm = variant == "Meta-Learner LSTM"
        rows.append([variant, step, 1000 * min(seconds[variant]), meta_batch / (step / 1000),
                     None if variant == "ProtoNet" else step / reference,
                     median_or_nan(inner) if is_meta_lstm else None, median_or_nan(lstm) if is_meta_lstm else None,
                     peaks[variant], None if variant == "ProtoNet" else peaks[variant] / peaks["ProtoNet"],
                     loads[variant].cores])
    header = (f"{TITLE}\n(Conv4-64 max-pool, {WAYS}-way {SHOTS}-shot {QUERIES} queries per class, meta-batch "
              f"{meta_batch}; Meta-Learner LSTM: {inner_steps} updates; lightning-meta at {code_version()}; torch "
              f"{torch.__version__}, {threads} thread(s); median and min over {rounds} round(s) x {steps} steps "
              f"after {warmup} warm-up)")
    text = "\n".join([header, "", format_table(HEADERS, rows)])
    return {"text": text, "raw": {"seconds": seconds, "inner_seconds": inner, "learner_seconds": learner,
                                  "peak_mib": peaks}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 2, tiny 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    args = parser.parse_args(argv)
    result = run(meta_batch=2 if args.tiny else 32, steps=1 if args.tiny else 2,
                 rounds=args.rounds or (1 if args.tiny else 2), warmup=1, inner_steps=2 if args.tiny else 12,
                 threads=args.threads, memory=not args.no_memory)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
