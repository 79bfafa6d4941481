"""iMAML against second-order MAML: time per task and peak memory of an outer step, by inner steps.

Both learners train on one pre-built meta-batch of hanzi episodes (Omniglot-shaped, 5-way 1-shot,
15 queries per class, meta-batch 32) with a Conv4 of 64 filters, through the real ``training_step``
inside ``Trainer.fit`` (tasks looped, as ``batching="auto"`` chooses for a Conv4 on a CPU):

* MAML: ``inner_steps`` SGD steps of 0.4 differentiated through (second order): its graph, and its
  memory, grow with the steps;
* iMAML: ``inner_steps`` SGD steps of 0.1 on the proximal problem (λ = 2) with no graph, then the
  meta-gradient by 5 conjugate-gradient steps on Hessian-vector products: the cost of a step is the
  inner loop plus a fixed implicit part, the memory does not depend on the steps.

Each cell runs in a fresh process (the time of the measured steps after ``--warmup`` dropped ones,
the peak resident-set growth over ``Trainer.fit``'s steps: benchmarks/README.md's VmHWM method).

Measured (commit fb54114, Conv4-64, 5-way 1-shot 15 queries, meta-batch 4 instead of 32, one thread, a
2-core CPU shared with other jobs, load average 3.4; ms per task / peak MiB):

    inner steps        1            5            20            50
    MAML (2nd order)   43.7 / 59.7  79.2 / 72.1  257.0 / 108.5  857.3 / 189.5
    iMAML (5 CG)       78.4 / 66.2  93.8 / 67.9  153.8 / 62.7   341.3 / 60.2

iMAML costs a fixed implicit part (query gradient and 5 Hessian-vector products) on top of its inner
loop and is the cheaper above about 6 steps; its memory does not grow with the steps, MAML's triples by
50 (issue 17's prototype, Conv4-64 meta-batch 32: MAML 29/61/202 (16 steps)/417 ms, iMAML 58/70/81/146-171).

    python -m benchmarks.imaml_step            # 1, 5, 20, 50 inner steps, meta-batch 32 (minutes)
    python -m benchmarks.imaml_step --tiny     # seconds: Conv4-8, meta-batch 2, 2 steps
    python -m benchmarks.imaml_step --hidden 32 --meta-batch 2 --warmup 0 --measured 1 --steps 5 50
                                                # tests/test_imaml.py's memory check
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from benchmarks.common import (
    PeakMemoryCallback,
    StepTimer,
    add_common_arguments,
    code_version,
    format_table,
    image_batch,
    in_fresh_process,
    load_average,
    load_hanzi,
    median_ms,
    memory_loader,
    quiet,
    quiet_trainer,
    write_json,
)
from lightning_meta import IMAML, MAML, ClassImages
from lightning_meta.models import Conv4

TITLE = "iMAML vs second-order MAML: ms per task and peak memory by inner steps"
HEADERS = ("algorithm", "inner steps", "ms per task", "peak MiB")
STEPS = (1, 5, 20, 50)
TINY_STEPS = (2,)


@dataclass(frozen=True)
class Setting:
    """One cell: the algorithm, its inner steps and the problem size."""

    algorithm: str  # "maml" or "imaml"
    inner_steps: int
    hidden: int = 64
    meta_batch: int = 32
    ways: int = 5
    shots: int = 1
    queries: int = 15
    lam: float = 2.0
    cg_steps: int = 5
    warmup: int = 1
    measured: int = 2


def build(setting: Setting):
    """The learner (weights seeded alike in every process) and its meta-batch."""
    torch.manual_seed(0)
    backbone = Conv4(in_channels=1, out_features=setting.ways, hidden_channels=setting.hidden)
    if setting.algorithm == "maml":
        learner = MAML(backbone, inner_lr=0.4, inner_steps=setting.inner_steps, batching="loop")
    else:
        learner = IMAML(backbone, inner_lr=0.1, inner_steps=setting.inner_steps, lam=setting.lam,
                        cg_steps=setting.cg_steps, batching="loop")
    pool = ClassImages.from_array(load_hanzi())
    return learner, image_batch(pool, setting.meta_batch, setting.ways, setting.shots, setting.queries)


def measure(setting: Setting, threads: int) -> dict:
    """Median ms per task of the measured steps and the peak RSS growth (MiB) of all steps; run it in a fresh
    process (:func:`~benchmarks.common.in_fresh_process`)."""
    quiet(threads)
    learner, batch = build(setting)
    steps = setting.warmup + setting.measured
    timer, memory = StepTimer(skip=setting.warmup), PeakMemoryCallback()
    quiet_trainer(steps, [timer, memory]).fit(learner, memory_loader([batch], steps))
    return {"ms_per_task": median_ms(timer.durations[setting.warmup:]) / setting.meta_batch,
            "peak_mib": memory.peak}


def run(settings: Sequence[Setting], threads: int) -> dict:
    load_before = load_average()
    cells = []
    for setting in settings:
        result = in_fresh_process(measure, setting, threads)
        cells.append({**dataclasses.asdict(setting), **result})
    rows = [[c["algorithm"], c["inner_steps"], c["ms_per_task"], c["peak_mib"]] for c in cells]
    first = settings[0]
    notes = [f"Conv4-{first.hidden}, hanzi {first.ways}-way {first.shots}-shot {first.queries} queries, meta-batch "
             f"{first.meta_batch}, tasks looped; iMAML lambda {first.lam}, {first.cg_steps} CG steps; {threads} "
             f"thread(s); median of {first.measured} steps after {first.warmup} dropped; load average "
             f"{load_before:.1f} before, {load_average():.1f} after; code {code_version()}"]
    text = "\n".join([TITLE, "", format_table(HEADERS, rows), "", *notes])
    return {"text": text, "raw": cells}


def settings_for(args: argparse.Namespace) -> list[Setting]:
    size = dict(hidden=8, meta_batch=2) if args.tiny else {}
    overrides = {name: getattr(args, name) for name in ("hidden", "meta_batch", "warmup", "measured")
                 if getattr(args, name) is not None}
    steps = args.steps or (TINY_STEPS if args.tiny else STEPS)
    return [Setting(algorithm, s, **{**size, **overrides}) for s in steps for algorithm in args.algorithms]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, nargs="*", default=None, help=f"inner steps (default {STEPS})")
    parser.add_argument("--algorithms", nargs="*", default=["maml", "imaml"], choices=["maml", "imaml"])
    parser.add_argument("--hidden", type=int, default=None, help="Conv4 filters (default 64, tiny 8)")
    parser.add_argument("--meta-batch", dest="meta_batch", type=int, default=None, help="tasks (default 32, tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped before timing (default 1)")
    parser.add_argument("--measured", type=int, default=None, help="steps timed (default 2)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    result = run(settings_for(args), args.threads)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
