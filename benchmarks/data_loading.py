"""Episodes per second of augmented 84x84 RGB episodes against what a mini-ImageNet MAML step consumes.

Does data loading keep up with the accelerator it would feed?  Side by side in one run:

* **loading**: the training loader of an ``EpisodicDataModule`` (``augment: true``: random resized crop,
  flip, colour jitter) over a ``ClassImages`` built in memory with mini-ImageNet's shape and counts
  (64 meta-training classes x 600 synthetic uint8 images, 3x84x84: no download), 5-way 1-shot 15-query
  episodes in meta-batches of 4, iterated with ``num_workers`` 0 and 2 (no model: the loader alone);
* **compute**: the MAML training step these episodes feed (Finn et al.'s mini-ImageNet setting: Conv4
  with 32 filters, 5 second-order inner steps, meta-batch 4) on pre-built batches in ``Trainer.fit``.

The target: loading with 2 workers at least 4x the episodes/s the step consumes on this CPU, so it
would not starve a step up to 4x faster (a small GPU).  Where the time of one meta-batch goes in the
main process (drawing and selecting the images, augmenting, scaling) is printed with the table.

    python -m benchmarks.data_loading            # about a minute on a quiet 2-core CPU
    python -m benchmarks.data_loading --tiny     # seconds: 10 classes x 20 images, few batches
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from benchmarks.common import (
    ForeignLoad,
    StepTimer,
    add_common_arguments,
    code_version,
    format_table,
    load_average,
    memory_loader,
    quiet,
    quiet_trainer,
    write_json,
)
from lightning_meta.algorithms.maml import MAML
from lightning_meta.data.class_images import ClassImages, rotate_images, scale_pixels
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import episode_generators
from lightning_meta.models import Conv4

TITLE = "Data loading: augmented 84x84 RGB episodes/s vs a mini-ImageNet MAML step"
HEADERS = ("what", "num_workers", "episodes/s", "ms/batch", "vs step", "other load")


class SyntheticImages(EpisodicDataModule):
    """mini-ImageNet's shape in memory: ``classes`` x ``samples`` random uint8 RGB images per split.

    Example::

        data = SyntheticImages(classes=64, samples=600, augment=True, meta_batch_size=4)
    """

    def __init__(self, classes: int = 64, samples: int = 600, size: int = 84, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.samples, self.size = classes, samples, size

    def load_split(self, split: str) -> ClassImages:
        generator = torch.Generator().manual_seed(("train", "val", "test").index(split))
        shape = (self.classes if split == "train" else 16, self.samples, 3, self.size, self.size)
        return ClassImages.from_array(torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8))


@dataclass(frozen=True)
class LoadingConfig:
    classes: int = 64
    samples: int = 600
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 4
    batches: int = 100          # meta-batches iterated per loader run
    inner_steps: int = 5
    warmup: int = 2
    steps: int = 6              # measured MAML steps
    rounds: int = 2

    @property
    def name(self) -> str:
        return (f"{self.ways}w{self.shots}s{self.queries}q B{self.meta_batch}, {self.classes} classes x {self.samples}"
                f" images 3x84x84, augment crop+flip+jitter; MAML Conv4-32, {self.inner_steps} inner steps 2nd order")


TINY = LoadingConfig(classes=10, samples=20, batches=6, inner_steps=1, warmup=1, steps=2, rounds=1)


def build_data(config: LoadingConfig, num_workers: int, batches: Optional[int] = None) -> SyntheticImages:
    return SyntheticImages(config.classes, config.samples, ways=config.ways, shots=config.shots,
                           queries=config.queries, meta_batch_size=config.meta_batch,
                           episodes_per_epoch=(batches or config.batches) * config.meta_batch, augment=True,
                           num_workers=num_workers)


def time_loader(data: SyntheticImages) -> tuple[float, float]:
    """Seconds per meta-batch of one pass over the training loader (the first batch, which pays the workers'
    start, excluded) and the other processes' load meanwhile."""
    load = ForeignLoad()
    ends = []
    load.start()
    start = time.perf_counter()
    for _ in data.train_dataloader():
        ends.append(time.perf_counter())
    load.stop()
    intervals = [b - a for a, b in zip(ends, ends[1:])] or [ends[0] - start]
    return sum(intervals) / len(intervals), load.cores


def time_step(config: LoadingConfig) -> tuple[float, float]:
    """Seconds per MAML training step on pre-built augmented batches (compute only), and the other load."""
    prepared = build_data(config, 0, config.warmup + config.steps)
    prepared.setup("fit")
    batches = list(prepared.train_dataloader())
    torch.manual_seed(0)
    learner = MAML(Conv4(in_channels=3, out_features=config.ways, hidden_channels=32, pooling="max", image_size=84),
                   inner_lr=0.01, inner_steps=config.inner_steps, first_order=False)
    load = ForeignLoad()
    timer = StepTimer(skip=config.warmup, load=load)
    total = config.warmup + config.steps
    quiet_trainer(total, [timer]).fit(learner, train_dataloaders=memory_loader(batches, total))
    intervals = [b - a for a, b in zip(timer.ends[config.warmup - 1:], timer.ends[config.warmup:])]
    return sum(intervals) / len(intervals), load.cores


def breakdown_ms(config: LoadingConfig, data: SyntheticImages, count: int = 10) -> dict[str, float]:
    """Median ms per meta-batch in the main process: drawing classes and samples and selecting the uint8
    images, augmenting them, scaling to floats; and the whole ``EpisodeStream.batch``."""
    stream = data.train_dataloader().stream
    pool: ClassImages = data.source("train")
    parts: dict[str, list[float]] = {"draw + select": [], "augment": [], "scale": [], "whole batch": []}
    size = config.shots + config.queries
    for position in range(min(count, len(stream))):
        generators = episode_generators(data.seed, "train", stream.plan[position], 0)
        start = time.perf_counter()
        picks, firsts = [], []
        for g in generators:
            for c in torch.randperm(pool.num_classes, generator=g)[:config.ways].tolist():
                picks.append(torch.randperm(pool.class_sizes[c], generator=g)[:size])
                firsts.append(pool.first_sample[c])
        rows = torch.cat(picks) + torch.tensor(firsts).repeat_interleave(size)
        images = rotate_images(pool.images.index_select(0, rows), torch.zeros(len(rows), dtype=torch.long))
        drawn = time.perf_counter()
        augmented = data.augmentation(images, generators, [config.ways * size] * len(generators))
        augmented_at = time.perf_counter()
        scale_pixels(augmented)
        scaled = time.perf_counter()
        stream.batch(position)
        whole = time.perf_counter()
        for name, (a, b) in zip(parts, ((start, drawn), (drawn, augmented_at), (augmented_at, scaled),
                                        (scaled, whole))):
            parts[name].append(b - a)
    return {name: 1000.0 * statistics.median(values) for name, values in parts.items()}


def run(config: LoadingConfig, threads: int, check_target: bool = True) -> dict:
    quiet(threads)
    load_before, version = load_average(), code_version()
    rows_raw: dict[str, list[float]] = {"loader 0": [], "loader 2": [], "step": []}
    other: dict[str, list[float]] = {key: [] for key in rows_raw}
    datas = {workers: build_data(config, workers) for workers in (0, 2)}
    for data in datas.values():
        data.setup("fit")
    for round_index in range(config.rounds):
        for workers, data in datas.items():
            seconds, cores = time_loader(data)
            rows_raw[f"loader {workers}"].append(seconds)
            other[f"loader {workers}"].append(cores)
        seconds, cores = time_step(config)
        rows_raw["step"].append(seconds)
        other["step"].append(cores)
        print(f"  data loading: round {round_index + 1}/{config.rounds} done", file=sys.stderr, flush=True)
    per_batch = {key: statistics.median(values) for key, values in rows_raw.items()}
    step = per_batch["step"]
    rows = []
    for key, label, workers in (("loader 0", "EpisodicDataModule loader (augment)", 0),
                                ("loader 2", "EpisodicDataModule loader (augment)", 2),
                                ("step", "MAML Conv4 training step (compute only)", "-")):
        seconds = per_batch[key]
        rows.append([label, workers, config.meta_batch / seconds, 1000.0 * seconds, step / seconds,
                     statistics.mean(other[key])])
    parts = breakdown_ms(config, datas[0])
    header = (f"{TITLE}\n({config.name}; lightning-meta at {version}; {threads} thread(s); {config.rounds} round(s);"
              f"\n load average {load_before:.1f} before, {load_average():.1f} after)")
    notes = ["one meta-batch in the main process, median ms: "
             + ", ".join(f"{name} {ms:.1f}" for name, ms in parts.items())]
    ratio = step / per_batch["loader 2"]
    if check_target:
        notes.append(f"loading with 2 workers / step consumption: {ratio:.2f}x -> "
                     f"{'meets' if ratio >= 4 else 'MISSES'} the target (>= 4x)")
    text = "\n".join([header, "", format_table(HEADERS, rows), "", *notes])
    raw = {"seconds_per_batch": rows_raw, "other_load": other, "breakdown_ms": parts, "ratio_2_workers": ratio,
           "meta_batch": config.meta_batch}
    return {"text": text, "raw": raw}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="runs per row (default 2)")
    parser.add_argument("--samples", type=int, default=None, help="images per class (default 600, mini-ImageNet's)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    config = TINY if args.tiny else LoadingConfig()
    overrides = {k: v for k, v in (("rounds", args.rounds), ("samples", args.samples)) if v is not None}
    result = run(dataclasses.replace(config, **overrides), args.threads, check_target=not args.tiny)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
