"""Environment steps per second: the batched task families against a gymnasium vector of numpy environments.

Each row runs ``B`` tasks x ``n`` environments for ``steps`` steps two ways, on the same tasks:

* batched: the family's ``reset`` and ``step`` on ``[B, n, ...]`` tensors (float32, CPU), the actions
  and the noise drawn beforehand, a reset at every ``horizon`` steps;
* gymnasium (the ``rl`` extra): a ``SyncVectorEnv`` (same-step autoreset) of ``B * n`` one-environment numpy references
  (:mod:`lightning_meta.envs.reference`, float64), each drawing its own noise, stepped with the same
  actions as a ``[B * n, ...]`` array.

Both sides include their resets; neither includes building the environments or drawing the actions.
The sides take turns over ``rounds`` rounds; the table gives the median of the rounds. The issue's
target: the batched Navigation2D at least 50x the gymnasium vector at 400 and 800 environments.

    python -m benchmarks.env_steps            # 100 steps, 5 rounds: seconds
    python -m benchmarks.env_steps --tiny     # 2 x 2 environments, 4 steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import gymnasium
import numpy as np
import torch
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import Tensor

from benchmarks.common import ForeignLoad, add_common_arguments, code_version, format_table, quiet, write_json
from lightning_meta.envs import BernoulliBandits, Navigation2D, TabularMDPs, TaskFamily
from lightning_meta.envs.reference import BanditEnv, NavigationEnv, ReferenceEnv, TabularMDPEnv

TITLE = "Environment steps per second: batched task families vs a gymnasium SyncVectorEnv of numpy environments"
HEADERS = ("family", "tasks x envs", "envs", "batched steps/s", "gymnasium steps/s", "batched/gymnasium",
           "other load")
FAMILIES: dict[str, Callable[[], TaskFamily]] = {"Navigation2D": Navigation2D, "BernoulliBandits": BernoulliBandits,
                                                 "TabularMDPs": TabularMDPs}


def build_tasks(family: TaskFamily, count: int) -> dict[str, Tensor]:
    return family.stack([family.sample_task(torch.Generator().manual_seed(i)) for i in range(count)])


def build_actions(family: TaskFamily, steps: int, tasks: int, envs: int) -> Tensor:
    """``[steps, B, n(, action_size)]`` actions: uniform arms, or Gaussian steps of scale 0.1."""
    generator = torch.Generator().manual_seed(1)
    if family.discrete:
        return torch.randint(family.num_actions, (steps, tasks, envs), generator=generator)
    return 0.1 * torch.randn(steps, tasks, envs, family.action_size, generator=generator)


def batched_seconds(family: TaskFamily, task: dict[str, Tensor], actions: Tensor, noise: Tensor) -> float:
    """Time of ``len(actions)`` steps of every environment, with a reset at the start of every episode."""
    envs = actions.shape[2]
    start = time.perf_counter()
    for t in range(len(actions)):
        if t % family.horizon == 0:
            state, _ = family.reset(task, envs, noise[t])
        state, _, _, _ = family.step(task, state, actions[t], noise[t])
    return time.perf_counter() - start


def reference_env(name: str, family: TaskFamily, task: dict[str, np.ndarray]) -> ReferenceEnv:
    if name == "Navigation2D":
        return NavigationEnv(task["goal"], family.horizon)
    if name == "BernoulliBandits":
        return BanditEnv(task["p"])
    return TabularMDPEnv(task["transitions"], task["reward_mean"], family.horizon)


class AsGymnasium(gymnasium.Env):
    """A reference environment with the spaces gymnasium's vector environments need."""

    def __init__(self, env: ReferenceEnv, family: TaskFamily):
        self.env = env
        self.observation_space = Box(-np.inf, np.inf, (family.observation_size,), np.float64)
        self.action_space = (Discrete(family.num_actions) if family.discrete
                             else Box(-np.inf, np.inf, (family.action_size,), np.float64))

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.env.step(action)


def gymnasium_vector(name: str, family: TaskFamily, task: dict[str, Tensor], tasks: int, envs: int) -> SyncVectorEnv:
    """A ``SyncVectorEnv`` of ``B * n`` references, ``n`` per task, task-major as the batched arrays flatten."""
    arrays = [{key: value[b].double().numpy() for key, value in task.items()} for b in range(tasks)]
    makers = [lambda a=a: AsGymnasium(reference_env(name, family, a), family) for a in arrays for _ in range(envs)]
    return SyncVectorEnv(makers, autoreset_mode=AutoresetMode.SAME_STEP)


def gymnasium_seconds(vector: SyncVectorEnv, actions: np.ndarray) -> float:
    start = time.perf_counter()
    vector.reset(seed=0)
    for action in actions:
        vector.step(action)
    return time.perf_counter() - start


def run(cases: Sequence[tuple[str, int, int]], steps: int, rounds: int, threads: int) -> dict:
    quiet(threads)
    rows, raw = [], {}
    for name, tasks, envs in cases:
        family = FAMILIES[name]()
        task = build_tasks(family, tasks)
        actions = build_actions(family, steps, tasks, envs)
        noise = torch.rand(steps, tasks, envs, family.noise_size, generator=torch.Generator().manual_seed(2))
        flat = actions.flatten(1, 2)
        flat_actions = (flat if family.discrete else flat.double()).numpy()
        vector = gymnasium_vector(name, family, task, tasks, envs)
        load = ForeignLoad()
        batched: list[float] = []
        gym: list[float] = []
        for _ in range(rounds):
            load.start()
            batched.append(batched_seconds(family, task, actions, noise))
            gym.append(gymnasium_seconds(vector, flat_actions))
            load.stop()
        count = steps * tasks * envs
        ours = count / statistics.median(batched)
        theirs = count / statistics.median(gym)
        rows.append([name, f"{tasks} x {envs}", tasks * envs, ours, theirs, ours / theirs, load.cores])
        raw[f"{name} {tasks}x{envs}"] = {"steps": count, "batched_seconds": batched, "gymnasium_seconds": gym}
        print(f"  {name} {tasks} x {envs} done", file=sys.stderr, flush=True)
    header = (f"{TITLE}\n({steps} steps per round, median of {rounds} round(s); batched float32 on CPU, gymnasium "
              f"float64 numpy; lightning-meta at {code_version()}; torch {torch.__version__}, {threads} thread(s))")
    text = "\n".join([header, "", format_table(HEADERS, rows)])
    return {"text": text, "raw": raw}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5, tiny 1)")
    args = parser.parse_args(argv)
    cases = [("Navigation2D", 2, 2), ("BernoulliBandits", 2, 2), ("TabularMDPs", 2, 2)] if args.tiny else [
        ("Navigation2D", 20, 20), ("Navigation2D", 40, 20), ("BernoulliBandits", 20, 20), ("TabularMDPs", 20, 20)]
    result = run(cases, steps=4 if args.tiny else 100, rounds=args.rounds or (1 if args.tiny else 5),
                 threads=args.threads)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
