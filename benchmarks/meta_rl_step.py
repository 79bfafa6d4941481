"""Seconds per meta-iteration of the meta-RL learners, broken down, on their paper-sized problems.

* MAML-TRPO and MAML-PPO on 2D navigation, 20 tasks x 20 episodes of 100 steps, policy 2-100-100-2:
  collecting (both inner steps' episodes), the meta-gradient, the curvature products of TRPO's
  conjugate gradient (``cg_iters`` of them), the line search, and the whole iteration as the
  training step runs it; PPO's 5 epochs;
* RL² on k=5 bandits with n=100 pulls, 64 tasks x 8 trials: collecting and the PPO epochs.

MAML-TRPO runs three learners side by side in the same rounds (each round times one after the other, so
a load that comes and goes falls on all): the learner as configured (curvature product with the KL's
Hessian at the adapted weights in Gauss-Newton form, its graphs looped over tasks), ``DoubleBackwardKL``
(the product before: that Hessian by double backward through the network, every graph vmapped), and the
learner with ``batching: loop``.  All compute the same numbers.

The issue's target: MAML-TRPO at most 4 s per iteration on 2 cores.

    python -m benchmarks.meta_rl_step          # the sizes above: about a minute
    python -m benchmarks.meta_rl_step --tiny   # 2 tasks x 2 episodes of 5 steps
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from benchmarks.common import ForeignLoad, add_common_arguments, code_version, format_table, quiet, write_json
from lightning_meta.algorithms.maml_rl import MAMLPolicyGradient
from lightning_meta.algorithms.rl2 import RL2, collect_trials
from lightning_meta.data.env_tasks import EnvTaskDataModule
from lightning_meta.envs import BernoulliBandits, Navigation2D
from lightning_meta.inner_loop import Params
from lightning_meta.models import GaussianMLPPolicy, GRUPolicy
from lightning_meta.rollouts import Trajectories
from lightning_meta.tasks import EnvTaskBatch
from lightning_meta.trpo import trpo_step

TITLE = "Meta-RL: seconds per meta-iteration, broken down"
HEADERS = ("learner", "problem", "collect s", "gradient s", "curvature s", "line search s", "iteration s",
           "other load")


def timed(function: Callable[[], object], rounds: int) -> float:
    return timed_side_by_side([function], rounds)[0]


def timed_side_by_side(functions: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """The median seconds of each function over ``rounds``, the functions taking turns within each round."""
    seconds: list[list[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for function, times in zip(functions, seconds):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in seconds]


def first_batch(data: EnvTaskDataModule, tasks: int) -> EnvTaskBatch:
    return data.stream("train", [list(range(tasks))], epoch=0).batch(0)


class DoubleBackwardKL(MAMLPolicyGradient):
    """MAML-TRPO's curvature product as it was before the Gauss-Newton form: the KL's Hessian at the adapted
    weights by double backward through the network, every graph vmapped over tasks (the reference the
    product is timed against; the same numbers)."""

    curvature_batching = "vmap"

    def fisher_product(self, adapted: Params, query: Trajectories) -> Callable[[Params], Params]:
        return self.kl_double_backward(adapted, query)


def maml_row(outer: str, tasks: int, rollouts: int, horizon: int, hidden: int, rounds: int) -> tuple[list, list]:
    """MAML-TRPO's or MAML-PPO's row; TRPO also times, side by side, the ``DoubleBackwardKL`` reference and the
    learner with ``batching: loop`` (the meta-gradient looped over tasks too)."""
    data = EnvTaskDataModule(Navigation2D(horizon=horizon), rollouts=rollouts, meta_batch_size=tasks)
    policy = lambda: GaussianMLPPolicy(2, 2, hidden_sizes=(hidden, hidden))  # noqa: E731
    model = MAMLPolicyGradient(policy(), outer=outer)
    learners = {f"MAML-{outer.upper()}": model}
    if outer == "trpo":
        learners["MAML-TRPO, KL double backward, vmapped"] = DoubleBackwardKL(policy(), outer=outer)
        learners["MAML-TRPO, batching: loop"] = MAMLPolicyGradient(policy(), outer=outer, batching="loop")
        for learner in learners.values():
            learner.policy.load_state_dict(model.policy.state_dict())
    batch = first_batch(data, tasks)
    sizes = model.step_sizes(True)
    support, query = model.explore(batch, sizes)
    theta = {k: v.detach() for k, v in model.policy.named_parameters()}
    vector = {k: torch.randn_like(v) for k, v in theta.items()}

    def explore(learner: MAMLPolicyGradient) -> Callable[[], object]:
        return lambda: learner.explore(batch, sizes)

    def gradient(learner: MAMLPolicyGradient) -> Callable[[], None]:
        def run() -> None:
            leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
            torch.autograd.grad(learner.batch_terms(leaves, support, query)[0], list(leaves.values()))
        return run

    def curvature(learner: MAMLPolicyGradient) -> Callable[[], None]:
        def run() -> None:
            product = learner.kl_hvp(theta, support, query)
            for _ in range(learner.cg_iters):
                product(vector)
        return run

    def line_search_point(learner: MAMLPolicyGradient) -> Callable[[], None]:
        def run() -> None:
            with torch.enable_grad():
                learner.batch_terms(theta, support, query)
        return run

    def iteration(learner: MAMLPolicyGradient) -> Callable[[], None]:
        def run() -> None:
            support, query = learner.explore(batch, sizes)
            if outer == "trpo":
                trpo_step(lambda p: tuple(learner.batch_terms(p, support, query)[:2]), theta, max_kl=learner.max_kl,
                          cg_iters=learner.cg_iters, cg_damping=learner.cg_damping,
                          kl_hvp=learner.kl_hvp(theta, support, query))
            else:
                for _ in range(learner.ppo_epochs):
                    gradient(learner)()
        return run

    parts = [explore, gradient] + ([curvature, line_search_point] if outer == "trpo" else []) + [iteration]
    load = ForeignLoad()
    load.start()
    seconds = [timed_side_by_side([part(learner) for learner in learners.values()], rounds) for part in parts]
    load.stop()
    if outer != "trpo":
        seconds[2:2] = [[0.0], [0.0]]
    problem = f"nav {tasks}x{rollouts}x{horizon}, {hidden}x{hidden}"
    rows, raw = [], []
    for i, label in enumerate(learners):
        collect_s, gradient_s, curvature_s, search_s, iteration_s = (part[i] for part in seconds)
        rows.append([label, problem, collect_s, gradient_s, curvature_s, search_s, iteration_s, load.cores])
        raw.append({"learner": label, "collect_s": collect_s, "gradient_s": gradient_s, "curvature_s": curvature_s,
                    "line_search_point_s": search_s, "iteration_s": iteration_s})
    return rows, raw


def rl2_row(tasks: int, trials: int, pulls: int, rounds: int) -> tuple[list, dict]:
    data = EnvTaskDataModule(BernoulliBandits(5), rollouts=trials, episodes_per_trial=pulls, meta_batch_size=tasks)
    model = RL2(GRUPolicy(1, num_actions=5, hidden_size=64))
    batch = first_batch(data, tasks)
    collect = lambda: collect_trials(model.policy, data.family, batch.task, trials, pulls, batch.key, 0,  # noqa: E731
                                     torch.float32)

    def update() -> None:
        collected = collect()
        leaves = {k: v.detach().requires_grad_() for k, v in model.policy.named_parameters()}
        for _ in range(model.ppo_epochs * model.ppo_minibatches):
            half = trials // model.ppo_minibatches
            part = type(collected)(*(x[:, :half] for x in collected))
            loss = model.minibatch_losses(part, part.rewards, part.rewards, leaves)["loss"]
            torch.autograd.grad(loss, list(leaves.values()))

    load = ForeignLoad()
    load.start()
    collect_s, iteration_s = timed(collect, rounds), timed(update, rounds)
    load.stop()
    other = load.cores
    row = ["RL2", f"bandits k=5 n={pulls}, {tasks}x{trials}", collect_s, iteration_s - collect_s, 0.0, 0.0,
           iteration_s, other]
    return row, {"learner": "RL2", "collect_s": collect_s, "iteration_s": iteration_s}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    quiet(args.threads)
    sizes = dict(tasks=2, rollouts=2, horizon=5, hidden=8, rounds=1) if args.tiny else \
        dict(tasks=20, rollouts=20, horizon=100, hidden=100, rounds=3)
    rows, raw = [], []
    for outer in ("trpo", "ppo"):
        maml_rows, numbers = maml_row(outer, **sizes)
        rows.extend(maml_rows)
        raw.extend(numbers)
    rl2_sizes = (2, 2, 5, 1) if args.tiny else (64, 8, 100, 3)
    row, numbers = rl2_row(*rl2_sizes)
    rows.append(row)
    raw.append(numbers)
    print(f"{TITLE} ({code_version()}, {args.threads} threads)")
    print(format_table(HEADERS, rows))
    result = {"rows": raw}
    write_json(args.json, result)
    return {"raw": result}


if __name__ == "__main__":
    main()
