"""Unrolled hypergradients: time and peak memory of reverse mode, plain vs segmented vs ``torch.utils.checkpoint``.

The problem of issue 17's rate-schedule learner at Maclaurin et al.'s scale: an MLP 64-100-100-10 (tanh)
trained from a fixed initialisation by ``T`` steps of momentum SGD on batches of 100 (a pool of 2,000
synthetic examples labelled by a random teacher, walked in order), with a rate and a momentum per step and
parameter tensor (``[T, 6]`` each) and a weight per pool example as hyper-parameters; the objective is the
cross-entropy on 1,000 held-out examples.  One hypergradient of all of them, three ways:

* ``plain``: :func:`lightning_meta.hypergradients.hypergradient`, one graph over the ``T`` steps;
* ``segmented (k)``: the same with ``checkpoint_every=k``: a forward sweep without graph keeps the
  parameters and momenta every ``k`` steps, then one segment's graph at a time;
* ``torch.utils.checkpoint (k)``: the plain graph with each segment of ``k`` steps (second-order inner
  gradients inside) wrapped in non-reentrant ``torch.utils.checkpoint``.

Time: median over ``--rounds`` rounds, the variants taking turns.  Peak memory: each variant again in a fresh
process (``benchmarks.common.in_fresh_process``), ``VmHWM`` minus the resident set after building the
problem (``PeakMemory``).  ``grad diff``: largest difference from plain's hypergradient over its largest
entry.  The issue's target: segmented (k = 10) within 1.6x plain's time and 0.25x its memory at T = 1,000.

    python -m benchmarks.hypergradient_unroll --threads 1         # T = 1,000: a few minutes
    python -m benchmarks.hypergradient_unroll --tiny              # T = 20, k = 5: seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from benchmarks.common import (ForeignLoad, PeakMemory, add_common_arguments, code_version, format_table,
                               in_fresh_process, max_relative_difference, quiet, write_json)
from lightning_meta.hypergradients import Hyper, bind_update, hypergradient, leaves, tensors, train
from lightning_meta.inner_loop import Params
from lightning_meta.inner_updates import MomentumSGD

TITLE = "Unrolled hypergradient: plain vs segmented reverse mode vs torch.utils.checkpoint"
HEADERS = ("variant", "seconds", "vs plain", "peak MiB", "vs plain mem", "grad diff", "other load")
BATCH, POOL, VALIDATION = 100, 2000, 1000


class Problem:
    """The MLP, its initial parameters, the data, the losses and the hyper-parameters (float32, seed 0)."""

    def __init__(self, steps: int):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 10))
        teacher = nn.Linear(64, 10)
        with torch.no_grad():
            self.x = torch.randn(POOL + VALIDATION, 64)
            self.y = teacher(self.x).argmax(-1)
        self.params = {name: p.detach().clone() for name, p in self.net.named_parameters()}
        self.steps = steps
        self.update = MomentumSGD(0.0, momentum=0.0)
        self.hyper = {"update.lr": torch.full((steps, len(self.params)), 0.05),
                      "update.momentum": torch.full((steps, len(self.params)), 0.9),
                      "weights": torch.ones(POOL)}

    def losses(self, params: Params, rows: Tensor) -> Tensor:
        logits = functional_call(self.net, params, (self.x[rows],))
        return nn.functional.cross_entropy(logits, self.y[rows], reduction="none")

    def train_loss(self, params: Params, hyper: Hyper, step: int) -> Tensor:
        rows = torch.arange(step * BATCH, (step + 1) * BATCH) % POOL
        return (hyper["weights"][rows] * self.losses(params, rows)).mean()

    def val_loss(self, params: Params, hyper: Hyper) -> Tensor:
        return self.losses(params, torch.arange(POOL, POOL + VALIDATION)).mean()


def with_torch_checkpoint(problem: Problem, every: int) -> dict[str, Tensor]:
    """The plain graph with every segment of ``every`` steps recomputed by ``torch.utils.checkpoint``."""
    hyper = leaves(problem.hyper)
    names = list(problem.params)
    rule = bind_update(problem.update, hyper, names)
    params, state = problem.params, None

    def segment(start: int, stop: int, *flat: Tensor) -> tuple[Tensor, ...]:
        start_params = dict(zip(names, flat[:len(names)]))
        start_state = dict(zip(names, flat[len(names):])) if start > 0 else None
        end_params, end_state = train(problem.train_loss, start_params, hyper, rule, start, stop, start_state,
                                      "second_order")
        return tuple(tensors((end_params, end_state)))

    with torch.enable_grad():
        for start in range(0, problem.steps, every):
            stop = min(start + every, problem.steps)
            flat = checkpoint(segment, start, stop, *tensors((params, state)), use_reentrant=False)
            params, state = dict(zip(names, flat[:len(names)])), dict(zip(names, flat[len(names):]))
        loss = problem.val_loss(params, hyper)
        grads = torch.autograd.grad(loss, list(hyper.values()))
    return dict(zip(hyper, grads))


def compute(variant: str, problem: Problem, every: int) -> dict[str, Tensor]:
    if variant == "torch.utils.checkpoint":
        return with_torch_checkpoint(problem, every)
    checkpoint_every = None if variant == "plain" else every
    return hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hyper, problem.update,
                         problem.steps, checkpoint_every=checkpoint_every).grads


def peak_memory(variant: str, steps: int, every: int, threads: int) -> float:
    """Peak RSS growth (MiB) of one hypergradient, in a fresh process."""
    quiet(threads)
    problem = Problem(steps)
    memory = PeakMemory()
    memory.start()
    compute(variant, problem, every)
    return memory.peak_mib()


def run(steps: int, every: int, rounds: int, threads: int, memory: bool) -> dict:
    quiet(threads)
    problem = Problem(steps)
    variants = ["plain", "segmented", "torch.utils.checkpoint"]
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    loads = {v: ForeignLoad() for v in variants}
    grads: dict[str, dict[str, Tensor]] = {}
    for round_index in range(rounds):
        for variant in variants:
            loads[variant].start()
            start = time.perf_counter()
            grads[variant] = compute(variant, problem, every)
            seconds[variant].append(time.perf_counter() - start)
            loads[variant].stop()
        print(f"  timing round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    peaks = {v: in_fresh_process(peak_memory, v, steps, every, threads) if memory else float("nan") for v in variants}
    plain_seconds = statistics.median(seconds["plain"])
    rows = []
    for variant in variants:
        median = statistics.median(seconds[variant])
        name = variant if variant == "plain" else f"{variant} (k={every})"
        rows.append([name, median, median / plain_seconds, peaks[variant], peaks[variant] / peaks["plain"],
                     max_relative_difference(grads[variant], grads["plain"]), loads[variant].cores])
    count = sum(h.numel() for h in problem.hyper.values())
    header = (f"{TITLE}\n(MLP 64-100-100-10 tanh, momentum SGD, T = {steps} steps of batch {BATCH}, {count:,} "
              f"hyper-parameters: a rate and a momentum per step and tensor, a weight per example; float32; "
              f"lightning-meta at {code_version()}; torch {torch.__version__}, {threads} thread(s); median of "
              f"{rounds} round(s); peak memory in fresh processes)")
    text = "\n".join([header, "", format_table(HEADERS, rows)])
    return {"text": text, "raw": {"steps": steps, "every": every, "seconds": seconds, "peak_mib": peaks}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="inner steps T (default 1000, tiny 20)")
    parser.add_argument("--every", type=int, default=None, help="segment length k (default 10, tiny 5)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 2, tiny 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    args = parser.parse_args(argv)
    result = run(steps=args.steps or (20 if args.tiny else 1000), every=args.every or (5 if args.tiny else 10),
                 rounds=args.rounds or (1 if args.tiny else 2), threads=args.threads, memory=not args.no_memory)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
