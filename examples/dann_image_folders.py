"""Domain-adversarial training between any two image folders, against the same model trained on the source alone.

    python examples/dann_image_folders.py               # about 40 s on 2 CPU cores: target accuracy 17% -> 28%
    python examples/dann_image_folders.py --steps 20    # a quick look

The source and target domains are two ImageFolder trees with the same class folders (here written
from the hanzi renders shipped with the tests: the source as they are, the target as dark glyphs on
a noisy bright background; point ``source``/``target`` at your own folders instead).  Target labels
(the folder names) are used only to report ``test/target_acc``; training sees target images only.
``lambda_max=0`` is the source-only baseline.  The same from the command line:
``python -m lightning_meta fit --config configs/dann_hanzi.yaml --data.init_args.source SRC
--data.init_args.target TGT --data.init_args.classes null --model.init_args.num_classes N``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_meta import DomainAdversarial
from lightning_meta.data import bundled_path
from lightning_meta.data.domains import DomainPairDataModule
from lightning_meta.models import Conv4

HANZI = bundled_path("hanzi")  # the hanzi set shipped with the package: 300 characters x 20 fonts


def write_domains(root: Path, classes: int) -> tuple[Path, Path]:
    """Two folder trees ``root/source/<class>/<i>.png`` and ``root/target/<class>/<i>.png``."""
    images = torch.from_numpy(np.load(HANZI)["X"][:classes])                # uint8 [classes, 20, 28, 28]
    thick = F.max_pool2d(images.flatten(0, 1).unsqueeze(1).float(), 3, stride=1, padding=1).view(images.shape)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)) * 80
    shifted = (thick + noise).clamp(0, 255).round().to(torch.uint8)
    for domain, pixels in (("source", images.numpy()), ("target", shifted.numpy())):
        for c, renders in enumerate(pixels):
            folder = root / domain / f"char{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(renders):
                Image.fromarray(image).save(folder / f"{i:02d}.png")
    return root / "source", root / "target"


def run(source: Path, target: Path, classes: int, steps: int, lambda_max: float) -> dict[str, float]:
    pl.seed_everything(0)
    data = DomainPairDataModule(str(source), str(target), image_size=28, channels=1, batch_size=64,
                                steps_per_epoch=steps)
    model = DomainAdversarial(Conv4(1, None, hidden_channels=32, pooling="max", batch_norm_stats="running"),
                              num_classes=classes, lambda_max=lambda_max)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, data)
    return trainer.test(model, data)[0]


def main(steps: int, classes: int = 100) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = write_domains(Path(tmp), classes)
        source_only = run(source, target, classes, steps, lambda_max=0.0)
        adapted = run(source, target, classes, steps, lambda_max=1.0)
    print(f"target accuracy: source only {source_only['test/target_acc']:.1%}, "
          f"adapted {adapted['test/target_acc']:.1%} (source: {adapted['test/source_acc']:.1%})")
    return {**adapted, **{f"source_only/{name}": value for name, value in source_only.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of each run")
    main(parser.parse_args().steps)
