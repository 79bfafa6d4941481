"""Against published code: our unrolled hypergradient vs ``higher``'s, iMAML's meta-gradient vs TorchOpt's.

Issue 17's comparison with the libraries of the ``reference`` extra (``make install``), side by side in one
process, the variants taking turns within each round so that other load lands on both alike:

* **hypergradient**: ``benchmarks/hypergradient_unroll.py``'s problem (MLP 64-100-100-10 tanh, momentum SGD on
  batches of 100, a rate and a momentum per step and tensor and a weight per example, float32) at
  ``T = 100``: :func:`lightning_meta.hypergradients.hypergradient` (reverse mode, one graph) against
  ``higher`` 0.2.1's ``innerloop_ctx`` with a differentiable ``torch.optim.SGD`` (one parameter group per
  tensor, the step's rates and momenta given by ``override``).  ms per hypergradient, median and minimum.
* **iMAML**: one task's meta-gradient (Conv4, hanzi 5-way 1-shot 15 queries, 16 proximal SGD steps of 0.1,
  λ = 2, 5 CG steps, float32): :meth:`lightning_meta.IMAML.task_meta_gradient` against TorchOpt 0.7.3's
  ``diff.implicit.custom_root`` of the stationarity condition ``∇L_support(φ) + λ (φ − θ) = 0`` with
  ``linear_solve.solve_cg(maxiter=5)``, its solver running the same 16 steps in plain torch
  (``torch.autograd.grad``, no graph).  ms per task, median and minimum over the tasks and rounds.
  TorchOpt's C++ extension does not load against torch 2.14.1; ``custom_root`` and its CG are pure Python.

``grad diff``: the largest difference from the reference library's gradient over its largest entry
(``tests/test_reference_libraries.py`` checks both agreements in float64: higher's bit for bit, TorchOpt's
to 1e-10).  A library that is not installed gets a row saying so.

    python -m benchmarks.reference_libraries --threads 1     # T = 100, Conv4-64, 8 tasks: about a minute
    python -m benchmarks.reference_libraries --tiny          # T = 10, Conv4-8, 2 tasks, 2 steps: seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from benchmarks.common import (ForeignLoad, add_common_arguments, code_version, format_table, image_batch,
                               load_hanzi, max_relative_difference, quiet, write_json)
from benchmarks.hypergradient_unroll import BATCH, POOL, Problem
from lightning_meta import IMAML, ClassImages
from lightning_meta.algorithms.imaml import proximal
from lightning_meta.hypergradients import hypergradient
from lightning_meta.inner_loop import supervised_loss
from lightning_meta.models import Conv4

TITLE = "Against published code: hypergradient vs higher, iMAML vs TorchOpt custom_root"
HEADERS = ("computation", "implementation", "ms", "min ms", "ref/ours", "grad diff", "other load")


def missing(module: str) -> Optional[str]:
    try:
        __import__(module)
    except ImportError:
        return "not installed (make install)"
    return None


# ---------------------------------------------------------------------------------------- hypergradient
def ours_hypergradient(problem: Problem) -> dict[str, Tensor]:
    return hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hyper, problem.update,
                         problem.steps).grads


def higher_hypergradient(problem: Problem) -> dict[str, Tensor]:
    """The same unroll through ``higher``'s differentiable SGD; the same hypergradient."""
    import higher

    hyper = {key: value.clone().requires_grad_() for key, value in problem.hyper.items()}
    optimizer = torch.optim.SGD([{"params": [p]} for p in problem.net.parameters()], lr=0.1, momentum=0.9)
    with higher.innerloop_ctx(problem.net, optimizer, copy_initial_weights=True) as (fnet, diffopt):
        for step in range(problem.steps):
            rows = torch.arange(step * BATCH, (step + 1) * BATCH) % POOL
            losses = nn.functional.cross_entropy(fnet(problem.x[rows]), problem.y[rows], reduction="none")
            diffopt.step((hyper["weights"][rows] * losses).mean(),
                         override={"lr": list(hyper["update.lr"][step]),
                                   "momentum": list(hyper["update.momentum"][step])})
        validation = torch.arange(POOL, len(problem.x))
        loss = nn.functional.cross_entropy(fnet(problem.x[validation]), problem.y[validation])
        grads = torch.autograd.grad(loss, list(hyper.values()))
    return dict(zip(hyper, grads))


# ---------------------------------------------------------------------------------------- iMAML
class IMAMLTasks:
    """The learner, its meta-parameters and ``tasks`` hanzi episodes (seed 0)."""

    def __init__(self, hidden: int, tasks: int, inner_steps: int):
        torch.manual_seed(0)
        self.learner = IMAML(Conv4(in_channels=1, out_features=5, hidden_channels=hidden), inner_lr=0.1,
                             inner_steps=inner_steps, lam=2.0, cg_steps=5, batching="loop")
        self.params = {name: p.detach() for name, p in self.learner.named_parameters()}
        batch = image_batch(ClassImages.from_array(load_hanzi()), tasks, 5, 1, 15)
        self.tasks = [(batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i])
                      for i in range(tasks)]


def ours_imaml(setup: IMAMLTasks, task: tuple[Tensor, ...]) -> dict[str, Tensor]:
    grads, _, _ = setup.learner.task_meta_gradient(setup.params, *task)
    return grads


def torchopt_imaml(setup: IMAMLTasks, task: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """iMAML's meta-gradient through TorchOpt's ``custom_root``: plain-torch proximal SGD in the solver, the
    implicit gradient by TorchOpt's CG (5 steps) on products of its ``functorch.vjp`` of the stationarity."""
    import torchopt

    learner = setup.learner
    support_x, support_y, query_x, query_y = task
    backbone = {name[len("backbone."):]: p for name, p in setup.params.items() if name.startswith("backbone.")}
    names = list(backbone)
    _, forward, support_in, query_in = learner.prepare_task(backbone, support_x, query_x)
    support = supervised_loss(forward, support_in, support_y, learner.inner_loss)
    lam = learner.lam

    def stationarity(weights: tuple[Tensor, ...], theta: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        gradient = torch.func.grad(lambda w: support(dict(zip(names, w)), 0))(weights)
        return tuple(g + lam * (w - t) for g, w, t in zip(gradient, weights, theta))

    @torchopt.diff.implicit.custom_root(stationarity, argnums=1,
                                        solve=torchopt.linear_solve.solve_cg(maxiter=learner.cg_steps, rtol=0.0))
    def solver(start: tuple[Tensor, ...], theta: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        anchor = {name: t.detach() for name, t in zip(names, theta)}
        objective = proximal(support, anchor, lam)
        weights = [w.detach() for w in start]
        for step in range(learner.inner_steps):
            with torch.enable_grad():
                leaves = [w.requires_grad_() for w in weights]
                grads = torch.autograd.grad(objective(dict(zip(names, leaves)), step), leaves)
            weights = [w.detach() - learner.inner_lr * g for w, g in zip(leaves, grads)]
        return tuple(weights)

    theta = tuple(backbone[name].detach().requires_grad_() for name in names)
    optimum = solver(tuple(t.detach() for t in theta), theta)
    with torch.enable_grad():
        loss = learner.query_loss(forward(dict(zip(names, optimum)), query_in), query_y)
        grads = torch.autograd.grad(loss, theta)
    return {f"backbone.{name}": g for name, g in zip(names, grads)}


# ---------------------------------------------------------------------------------------- timing
def timed(variants: dict[str, Callable[[], dict[str, Tensor]]], rounds: int,
          repeats: int = 1) -> tuple[dict[str, list[float]], dict[str, dict[str, Tensor]], dict[str, float]]:
    """``rounds`` rounds of ``repeats`` calls of each variant in turn: the seconds of each call, the gradients
    of the last call and the other load (cores) while each variant ran; one untimed call of each first."""
    for run_once in variants.values():
        run_once()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    grads: dict[str, dict[str, Tensor]] = {}
    loads = {name: ForeignLoad() for name in variants}
    for round_index in range(rounds):
        for name, run_once in variants.items():
            loads[name].start()
            for _ in range(repeats):
                start = time.perf_counter()
                grads[name] = run_once()
                seconds[name].append(time.perf_counter() - start)
            loads[name].stop()
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return seconds, grads, {name: load.cores for name, load in loads.items()}


def rows_for(computation: str, ours: str, reference: str, reference_missing: Optional[str],
             variants: dict[str, Callable[[], dict[str, Tensor]]], rounds: int, repeats: int = 1,
             per_call: Optional[Callable[[Sequence[float]], list[float]]] = None) -> tuple[list[list], dict]:
    if reference_missing:
        variants = {ours: variants[ours]}
    seconds, grads, loads = timed(variants, rounds, repeats)
    if per_call:
        seconds = {name: per_call(values) for name, values in seconds.items()}
    medians = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
    minima = {name: 1000 * min(values) for name, values in seconds.items()}
    rows = []
    for name in (reference, ours):
        if name not in seconds:
            rows.append([computation, name, reference_missing, "", "", "", ""])
            continue
        is_ours = name == ours and reference in seconds
        rows.append([computation if name == reference else "", name, medians[name], minima[name],
                     medians[reference] / medians[name] if is_ours else "",
                     max_relative_difference(grads[name], grads[reference]) if is_ours
                     else "(reference)" if name == reference else "",
                     loads[name]])
    return rows, {"seconds": seconds}


def run(steps: int, hidden: int, tasks: int, inner_steps: int, rounds: int, threads: int) -> dict:
    quiet(threads)
    problem = Problem(steps)
    rows, raw = rows_for(f"hypergradient, T = {steps}", "lightning-meta hypergradient", "higher innerloop_ctx",
                         missing("higher"),
                         {"higher innerloop_ctx": lambda: higher_hypergradient(problem),
                          "lightning-meta hypergradient": lambda: ours_hypergradient(problem)}, rounds)
    setup = IMAMLTasks(hidden, tasks, inner_steps)

    def all_tasks(implementation: Callable) -> Callable[[], dict[str, Tensor]]:
        def run_all() -> dict[str, Tensor]:
            for task in setup.tasks:  # the last task's gradient is compared
                grads = implementation(setup, task)
            return grads
        return run_all

    imaml_rows, imaml_raw = rows_for(
        f"iMAML meta-gradient per task, {inner_steps} steps", "lightning-meta IMAML", "TorchOpt custom_root",
        missing("torchopt"), {"TorchOpt custom_root": all_tasks(torchopt_imaml),
                              "lightning-meta IMAML": all_tasks(ours_imaml)},
        rounds, per_call=lambda values: [v / tasks for v in values])
    count = sum(h.numel() for h in problem.hyper.values())
    notes = [f"hypergradient: MLP 64-100-100-10 tanh, momentum SGD, T = {steps} steps of batch {BATCH}, {count:,} "
             f"hyper-parameters (a rate and a momentum per step and tensor, a weight per example), float32; "
             f"iMAML: Conv4-{hidden}, hanzi 5-way 1-shot 15 queries, {tasks} tasks, {inner_steps} proximal SGD "
             f"steps, lambda 2, 5 CG steps, float32 (ms per task: each round's time over {tasks} tasks); "
             f"ref/ours > 1: ours is faster; median of {rounds} round(s); {threads} thread(s); "
             f"lightning-meta at {code_version()}; torch {torch.__version__}"]
    text = "\n".join([TITLE, "", format_table(HEADERS, rows + imaml_rows), "", *notes])
    return {"text": text, "raw": {"hypergradient": raw, "imaml": imaml_raw, "steps": steps, "tasks": tasks}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="hypergradient steps T (default 100, tiny 10)")
    parser.add_argument("--hidden", type=int, default=None, help="iMAML's Conv4 filters (default 64, tiny 8)")
    parser.add_argument("--tasks", type=int, default=None, help="iMAML tasks per round (default 8, tiny 2)")
    parser.add_argument("--inner-steps", dest="inner_steps", type=int, default=None,
                        help="iMAML's proximal steps (default 16, tiny 2)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5, tiny 1)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    result = run(steps=args.steps or (10 if tiny else 100), hidden=args.hidden or (8 if tiny else 64),
                 tasks=args.tasks or (2 if tiny else 8), inner_steps=args.inner_steps or (2 if tiny else 16),
                 rounds=args.rounds or (1 if tiny else 5), threads=args.threads)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
