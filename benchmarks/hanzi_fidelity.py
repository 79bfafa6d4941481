"""Accuracy of the transfer, first-order and black-box learners on a full few-shot data set, next to raw pixels.

No Omniglot or mini-ImageNet is reachable from the reference machine, so the paper numbers of
issue 5 cannot be reproduced there; this script is the stand-in: each job trains once on an ``.npz``
(default: ``hanzi``, the set bundled with the package, 300 classes x 20 font renders; 192 / 48 / 60
meta-train / validation / test classes, rotations as new meta-train classes; ``--data`` takes a bigger
file, e.g. the shared 1,200-class set: 768 / 192 / 240) and tests on ``--test-episodes`` fixed 5-way
15-query episodes of the held-out classes, beside the raw-pixel nearest-prototype accuracy on the same
episodes.  Reptile is tested with both protocols (non-transductive first).
SNAIL is the paper's Omniglot model (Conv4-64, attention [[64, 32], [256, 128], [512, 256]], TC
filters [128, 128], Adam 1e-3) on meta-batches of 16 episodes with 5 queries per class.
DANN uses the built-in noisy copy of the same file as its target domain (all classes, 4 held-out
fonts each) and is reported against the same model trained on the source alone.

    python -m benchmarks.hanzi_fidelity --jobs reptile_5w1s --steps 200 --test-episodes 300   # bundled data
    python -m benchmarks.hanzi_fidelity --data ../shared/data/hanzi_fonts_1200x20.npz          # ~25 min, 2 cores
    python -m benchmarks.hanzi_fidelity --tiny --jobs reptile_5w1s                             # checks that it runs
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import pytorch_lightning as pl

from benchmarks.common import format_table, quiet
from lightning_meta import SNAIL, Baseline, BaselinePlusPlus, DomainAdversarial, NpzDataModule, Reptile
from lightning_meta.data.domains import DomainPairDataModule
from lightning_meta.metrics import pixel_prototype_accuracy
from lightning_meta.models import Conv4

TITLE = "Few-shot accuracy on held-out classes (5-way, 15 queries) and domain adaptation"
HEADERS = ("job", "protocol", "training", "accuracy", "ci95", "pixels", "fit s")
ROTATIONS = (0, 90, 180, 270)


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False, accelerator="cpu", limit_val_batches=0,
                      **kwargs)


def pixel_accuracy(data: NpzDataModule) -> float:
    return pixel_prototype_accuracy(data.test_dataloader()).mean().item()


def reptile(path: str, shots: int, steps: int, episodes: int) -> list[tuple]:
    pl.seed_everything(0, verbose=False)
    data = NpzDataModule(path, ways=5, shots=shots, queries=4 if shots == 1 else 5, test_queries=15,
                         rotations=ROTATIONS, meta_batch_size=10, episodes_per_epoch=10 * steps, val_episodes=10,
                         test_episodes=episodes)
    model = Reptile(Conv4(1, 5, hidden_channels=64), inner_optimizer="sgd", inner_lr=0.3, inner_steps=10,
                    inner_batch_size=5 if shots == 1 else 10, test_inner_steps=10 if shots == 1 else 20,
                    test_inner_batch_size=None, outer_lr=1.0, outer_lr_final=0.0)
    fit, seconds = timed_fit(model, data, max_epochs=1)
    rows = []
    for transductive in (False, True):
        model.transductive = transductive
        result = fit.test(model, data, verbose=False)[0]
        rows.append((f"reptile 5w{shots}s", "transductive" if transductive else "non-transductive",
                     f"{steps} x 10 tasks", result["test/acc"], result["test/acc_ci95"], pixel_accuracy(data), seconds))
    return rows


def snail(path: str, shots: int, steps: int, episodes: int) -> list[tuple]:
    pl.seed_everything(0, verbose=False)
    data = NpzDataModule(path, ways=5, shots=shots, queries=5, test_queries=15, rotations=ROTATIONS,
                         meta_batch_size=16, episodes_per_epoch=16 * steps, val_episodes=10, test_episodes=episodes)
    model = SNAIL(Conv4(1, None, pooling="max", batch_norm_stats="running"), ways=5, shots=shots)
    fit, seconds = timed_fit(model, data, max_epochs=1)
    result = fit.test(model, data, verbose=False)[0]
    return [(f"snail 5w{shots}s", "each query alone after the support set", f"{steps} x 16 tasks",
             result["test/acc"], result["test/acc_ci95"], pixel_accuracy(data), seconds)]


def baseline(model_class: type, name: str) -> Callable[[str, int, int, int], list[tuple]]:
    """Pre-train once, then test 5-way 1-shot and 5-shot; fine-tuning as Chen et al. (100 passes over the
    support set in batches of 4: 200 and 700 steps)."""
    def job(path: str, shots: int, steps: int, episodes: int) -> list[tuple]:
        pl.seed_everything(0, verbose=False)
        settings = dict(train_batches="supervised", batch_size=64, rotations=ROTATIONS, ways=5, queries=15,
                        meta_batch_size=20, val_episodes=20, test_episodes=episodes)
        data = NpzDataModule(path, shots=1, **settings)
        data.setup("fit")
        model = model_class(Conv4(1, None, pooling="max", batch_norm_stats="running"),
                            num_classes=data.num_train_classes)
        fit, seconds = timed_fit(model, data, max_steps=steps)
        rows = []
        for test_shots, finetune_steps in ((1, 200), (5, 700)):
            model.finetune_steps = finetune_steps
            test_data = NpzDataModule(path, shots=test_shots, **settings)
            result = fit.test(model, test_data, verbose=False)[0]
            rows.append((f"{name} 5w{test_shots}s", f"frozen backbone, {finetune_steps} head steps",
                         f"{steps} x 64 images", result["test/acc"], result["test/acc_ci95"],
                         pixel_accuracy(test_data), seconds))
        return rows
    return job


def dann(path: str, shots: int, steps: int, episodes: int) -> list[tuple]:
    rows = []
    for lambda_max, protocol in ((0.0, "source only"), (1.0, "adapted")):
        pl.seed_everything(0, verbose=False)
        data = DomainPairDataModule(path, shift="noise", shift_strength=0.5, batch_size=64, steps_per_epoch=steps)
        data.setup("fit")
        model = DomainAdversarial(Conv4(1, None, pooling="max", batch_norm_stats="running"),
                                  num_classes=data.num_classes, lambda_max=lambda_max)
        fit, seconds = timed_fit(model, data, max_steps=steps)
        result = fit.test(model, data, verbose=False)[0]
        rows.append(("dann noise 0.5", f"{protocol}, target (source {result['test/source_acc']:.1%})",
                     f"{steps} x 128 images", result["test/target_acc"], result["test/target_acc_ci95"], None, seconds))
    return rows


def timed_fit(model: pl.LightningModule, data: pl.LightningDataModule, **kwargs) -> tuple[pl.Trainer, float]:
    fit = trainer(**kwargs)
    start = time.perf_counter()
    fit.fit(model, data)
    return fit, time.perf_counter() - start


JOBS: dict[str, tuple[Callable[[str, int, int, int], list[tuple]], int, int]] = {
    # name: (job, shots, training steps)
    "reptile_5w1s": (reptile, 1, 500),
    "reptile_5w5s": (reptile, 5, 300),
    "baseline": (baseline(Baseline, "baseline"), 0, 2000),
    "baselinepp": (baseline(BaselinePlusPlus, "baseline++"), 0, 2000),
    "dann": (dann, 0, 3000),
    "snail_5w1s": (snail, 1, 1000),
    "snail_5w5s": (snail, 5, 600),
}


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hanzi", help="an .npz of uint8 [classes, samples, H, W], or a bundled"
                        " name (default: hanzi, 300 classes x 20 fonts, shipped with the package)")
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=list(JOBS))
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--steps", type=int, default=None, help="training steps of every job (default: each job's)")
    parser.add_argument("--tiny", action="store_true", help="a few steps and episodes: checks that it runs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    quiet(args.threads)
    rows = []
    for name in args.jobs:
        job, shots, steps = JOBS[name]
        steps = 3 if args.tiny else args.steps or steps
        rows += job(args.data, shots, steps, 8 if args.tiny else args.test_episodes)
        print(format_table(HEADERS, rows[-2:]), flush=True)
    print(TITLE)
    print(format_table(HEADERS, rows))
    return rows


if __name__ == "__main__":
    main()
