"""FIGR: meta-iterations per second and the adaptation time of one class.

FIGR (``lightning_meta.algorithms.figr``) with the networks of ``configs/figr_glyphs.yaml`` (DCGAN, 2 blocks,
32 / 16 channels: generator 0.93M, critic 0.17M parameters) on bundled hanzi classes (28x28, 1 class of 4 images per
task):

* meta-iterations per second: the real ``training_step`` inside ``Trainer.fit`` (10 inner steps, each a critic
  step with the gradient penalty's double backward and a generator step, then the Reptile step of both
  networks), on pre-built one-class batches;
* adaptation of one class: :meth:`~lightning_meta.algorithms.figr.FIGR.class_samples` on 4 support images (10
  inner steps) and 16 generated images, what evaluation and ``predict`` pay per class.

Each row runs in a fresh process.  ``--tiny``: networks of 8 channels, 2 inner steps, seconds.

    python -m benchmarks.figr_step             # the config's networks (a minute on a 2-core CPU)
    python -m benchmarks.figr_step --tiny      # seconds: what CI runs
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from benchmarks.common import (
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
from lightning_meta.algorithms.figr import FIGR
from lightning_meta.data.class_images import ClassImages
from lightning_meta.models.figr_nets import DCGANDiscriminator, DCGANGenerator

TITLE = "FIGR: meta-iterations per second and adaptation time of one class"
HEADERS = ("channels G/D", "inner steps", "meta-iterations/s", "ms per meta-iteration", "adapt one class ms")


@dataclass(frozen=True)
class Setting:
    hidden: int = 32
    critic_hidden: int = 16
    inner_steps: int = 10
    warmup: int = 2
    measured: int = 10
    samples: int = 16


def build(setting: Setting) -> FIGR:
    torch.manual_seed(0)
    return FIGR(DCGANGenerator(100, 1, 28, setting.hidden, 2), DCGANDiscriminator(1, 28, setting.critic_hidden, 2),
                inner_steps=setting.inner_steps)


def measure(setting: Setting, threads: int) -> dict:
    """Median ms per meta-iteration (``Trainer.fit``) and per class adaptation; run it in a fresh process."""
    quiet(threads)
    model = build(setting)
    pool = ClassImages.from_array(load_hanzi())
    batches = [image_batch(pool, 1, 1, 4, 0, first=i) for i in range(setting.warmup + setting.measured)]
    steps = setting.warmup + setting.measured
    timer = StepTimer(skip=setting.warmup)
    quiet_trainer(2 * steps, [timer]).fit(model, memory_loader(batches, steps))   # 2 optimizer steps per batch
    per_iteration = median_ms(timer.durations[setting.warmup:])
    task = batches[0][0]
    adapt = []
    for i in range(1 + max(2, setting.measured // 3)):
        start = time.perf_counter()
        model.class_samples(task.support_x, task.support_y, setting.samples, torch.Generator().manual_seed(i))
        adapt.append(time.perf_counter() - start)
    return {"ms_per_iteration": per_iteration, "iterations_per_s": 1000 / per_iteration,
            "adapt_ms": median_ms(adapt[1:]),
            "parameters": {"generator": sum(p.numel() for p in model.generator.parameters()),
                           "discriminator": sum(p.numel() for p in model.discriminator.parameters())}}


def run(settings: Sequence[Setting], threads: int) -> dict:
    load_before = load_average()
    cells = [{**dataclasses.asdict(s), **in_fresh_process(measure, s, threads)} for s in settings]
    rows = [[f"{c['hidden']}/{c['critic_hidden']}", c["inner_steps"], c["iterations_per_s"], c["ms_per_iteration"], c["adapt_ms"]]
            for c in cells]
    first = cells[0]
    notes = [f"DCGAN 28x28, 2 blocks, generator {first['parameters']['generator']:,} / critic "
             f"{first['parameters']['discriminator']:,} parameters at {first['hidden']}/{first['critic_hidden']} channels; 1 class x 4 images "
             f"per task; adaptation: {first['inner_steps']} inner steps + {first['samples']} samples; {threads} "
             f"thread(s); median of {first['measured']} iterations after {first['warmup']} dropped; load average "
             f"{load_before:.1f} before, {load_average():.1f} after; code {code_version()}"]
    return {"text": "\n".join([TITLE, "", format_table(HEADERS, rows), "", *notes]), "raw": cells}


def settings_for(args: argparse.Namespace) -> list[Setting]:
    if args.tiny:
        return [Setting(hidden=8, critic_hidden=8, inner_steps=2, warmup=1, measured=2, samples=4)]
    return [Setting(hidden=h, critic_hidden=d) for h, d in (args.channels or [(32, 16), (32, 32)])]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--channels", type=lambda text: tuple(map(int, text.split("/"))), nargs="*", default=None,
                        help="generator/critic channels, e.g. 32/16 (default: 32/16 and 32/32)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    result = run(settings_for(args), args.threads)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
