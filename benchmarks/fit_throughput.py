"""End-to-end tasks/second of ``Trainer.fit`` with episodic data loading, against compute only.

The same MAML (Conv4, Omniglot-shaped hanzi episodes) trains for the same steps three ways:

* compute only: the batches are built beforehand and held in memory;
* ``EpisodicDataModule`` with ``num_workers=0`` (the default: batches built in the main process);
* ``EpisodicDataModule`` with ``num_workers=2``.

The data module is :class:`HanziEpisodes`, an in-memory ``ClassImages`` over the bundled hanzi_300x20.npz
split 200/50/50 classes, with Omniglot's rotations on the training classes.  A step's time is the
interval between consecutive ``on_train_batch_end`` calls, so it includes fetching the next batch
and Lightning's loop; the first ``warmup`` steps of each run are dropped (they include starting
the workers).  Runs take turns over ``rounds`` rounds.

    python -m benchmarks.fit_throughput            # meta-batch 32, about a minute
    python -m benchmarks.fit_throughput --tiny     # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from benchmarks.common import (
    ForeignLoad,
    StepTimer,
    add_common_arguments,
    code_version,
    format_table,
    load_average,
    load_hanzi,
    memory_loader,
    quiet,
    quiet_trainer,
    write_json,
)
from lightning_meta import MAML, ClassImages, EpisodicDataModule, TaskBatch
from lightning_meta.models import Conv4

TITLE = "Trainer.fit throughput: episodic data loading vs compute only"
HEADERS = ("data", "num_workers", "tasks/s", "ms/step", "vs compute only", "other load")
SPLITS = {"train": slice(0, 200), "val": slice(200, 250), "test": slice(250, 300)}


class HanziEpisodes(EpisodicDataModule):
    """The hanzi test images as an Omniglot-style data module held in memory.

    Classes 0-199 train (each also rotated by 90, 180 and 270 degrees, as Omniglot's meta-training
    does), 200-249 validate, 250-299 test.  ``images`` is uint8 ``[classes, samples, H, W]``.
    """

    def __init__(self, images: Tensor, **kwargs):
        super().__init__(**kwargs)
        self.images = images

    def load_split(self, split: str) -> ClassImages:
        rotations = (0, 90, 180, 270) if split == "train" else (0,)
        return ClassImages.from_array(self.images[SPLITS[split]], rotations=rotations)


@dataclass(frozen=True)
class FitConfig:
    """MAML on 5-way 1-shot episodes (Finn et al.'s Omniglot setting) and how many steps to time."""

    meta_batch: int = 32
    ways: int = 5
    shots: int = 1
    queries: int = 15
    inner_steps: int = 1
    first_order: bool = False
    inner_lr: float = 0.4
    warmup: int = 2
    steps: int = 10
    rounds: int = 2

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def name(self) -> str:
        order = "1st" if self.first_order else "2nd"
        return (f"MAML Conv4 {self.ways}w{self.shots}s{self.queries}q B{self.meta_batch}, {self.inner_steps} inner "
                f"step(s) {order} order")


TINY = FitConfig(meta_batch=4, warmup=1, steps=2, rounds=1)


def build_learner(config: FitConfig) -> MAML:
    """The same initial weights in every run."""
    torch.manual_seed(0)
    return MAML(Conv4(in_channels=1, out_features=config.ways), inner_lr=config.inner_lr,
                inner_steps=config.inner_steps, first_order=config.first_order)


def build_data(config: FitConfig, images: Tensor, num_workers: int) -> HanziEpisodes:
    """A data module whose one epoch holds exactly the steps of a run."""
    return HanziEpisodes(images, ways=config.ways, shots=config.shots, queries=config.queries,
                         meta_batch_size=config.meta_batch, episodes_per_epoch=config.total_steps * config.meta_batch,
                         num_workers=num_workers)


def prebuilt_batches(config: FitConfig, images: Tensor) -> list[TaskBatch]:
    """The batches the data module serves in a run (the same episodes), built now."""
    data = build_data(config, images, num_workers=0)
    data.setup("fit")
    return list(data.train_dataloader())


@dataclass
class Source:
    """One row: where the batches come from, and what its runs measured."""

    label: str
    num_workers: Optional[int]  # None: pre-built batches in memory
    intervals: list[float] = field(default_factory=list)
    load: ForeignLoad = field(default_factory=ForeignLoad)

    @property
    def seconds_per_step(self) -> float:
        return sum(self.intervals) / len(self.intervals)


def time_fit(config: FitConfig, source: Source, images: Tensor, batches: Sequence[TaskBatch]) -> None:
    """One ``Trainer.fit`` of ``config.total_steps`` steps; appends the measured step intervals to ``source``."""
    timer = StepTimer(skip=config.warmup)
    trainer = quiet_trainer(config.total_steps, [timer])
    learner = build_learner(config)
    source.load.start()
    if source.num_workers is None:
        trainer.fit(learner, train_dataloaders=memory_loader(batches, config.total_steps))
    else:
        trainer.fit(learner, datamodule=build_data(config, images, source.num_workers))
    source.load.stop()
    ends = timer.ends
    source.intervals += [b - a for a, b in zip(ends[config.warmup - 1:], ends[config.warmup:])]


def batch_build_ms(config: FitConfig, images: Tensor, count: int = 5) -> float:
    """Median time to build one meta-batch in this process (what ``num_workers=0`` adds to a step)."""
    data = build_data(config, images, num_workers=0)
    data.setup("fit")
    stream = data.train_dataloader().stream
    seconds = []
    for position in range(min(count, len(stream))):
        start = time.perf_counter()
        stream.batch(position)
        seconds.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(seconds)


def run(config: FitConfig, threads: int, check_target: bool = True) -> dict:
    """Measure the three sources; returns the printed text and the raw numbers."""
    quiet(threads)
    images = load_hanzi()
    batches = prebuilt_batches(config, images)
    sources = [Source("pre-built, in memory (compute only)", None), Source("EpisodicDataModule", 0),
               Source("EpisodicDataModule", 2)]
    load_before, version = load_average(), code_version()
    for round_index in range(config.rounds):
        for source in sources:
            time_fit(config, source, images, batches)
        print(f"  fit throughput: round {round_index + 1}/{config.rounds} done", file=sys.stderr, flush=True)
    compute = sources[0].seconds_per_step
    rows = [[s.label, "-" if s.num_workers is None else s.num_workers, config.meta_batch / s.seconds_per_step,
             1000.0 * s.seconds_per_step, compute / s.seconds_per_step, s.load.cores] for s in sources]
    header = (f"{TITLE}\n({config.name}; lightning-meta at {version}; {threads} thread(s);\n"
              f" {config.rounds} round(s) x {config.steps} steps after {config.warmup} warm-up; "
              f"load average {load_before:.1f} before, {load_average():.1f} after)")
    notes = [f"building one meta-batch in the main process: {batch_build_ms(config, images):.1f} ms"]
    if check_target:  # the target is about the full size, not --tiny
        ratio = min(compute / s.seconds_per_step for s in sources[1:])
        notes.append(f"slowest end-to-end / compute only: {ratio:.3f} -> {'meets' if ratio >= 0.95 else 'MISSES'} "
                     "target (within 5%)")
    text = "\n".join([header, "", format_table(HEADERS, rows), "", *notes])
    raw = [{"source": s.label, "num_workers": s.num_workers, "intervals": s.intervals, "other_load": s.load.cores}
           for s in sources]
    return {"text": text, "raw": raw}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run (default 10)")
    parser.add_argument("--rounds", type=int, default=None, help="runs per data source (default 2)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    config = TINY if args.tiny else FitConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("rounds", args.rounds)) if v is not None}
    result = run(dataclasses.replace(config, **overrides), args.threads, check_target=not args.tiny)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
