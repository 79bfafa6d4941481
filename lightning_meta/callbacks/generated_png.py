"""Images of a generator as PNG files: ``predict``'s generated images per class, and the test's class grids."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from lightning_meta.callbacks.drawing import BLACK, font, grid, image_tile, save_png, stack_vertically
from lightning_meta.callbacks.fixed_episodes import wandb_loggers
from lightning_meta.callbacks.run_folder import output_dir


def image_file(image: Tensor) -> Image.Image:
    """One image ``[C, H, W]`` in ``[0, 1]`` as a PIL image at its own size (greyscale ``L`` or ``RGB``)."""
    array = image.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    if array.shape[0] == 1:
        return Image.fromarray(array[0].numpy(), "L")
    return Image.fromarray(array[:3].permute(1, 2, 0).numpy(), "RGB")


def safe_name(name: str) -> str:
    """A class name usable as a folder name (path separators and control characters replaced)."""
    cleaned = re.sub(r"[\\/\x00-\x1f]", "_", name).strip()
    return cleaned if cleaned not in ("", ".", "..") else "_"


class GeneratedPNG(BasePredictionWriter):
    """After ``predict``, write each class's generated images as ``<folder>/<class>/<000>.png``.

    The predictions are :meth:`~lightning_meta.algorithms.figr.FIGR.predict_step`'s images
    ``[B, N, S, C, H, W]`` in ``[0, 1]``; class ``c`` of task ``b`` is named by the batch's ``class_names``
    (the folder names of ``data.init_args.support_dir``), else by its index.  Images keep the data's size,
    greyscale or RGB.  ``folder`` defaults to ``generated/`` in the invocation's folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`); with several tasks each gets ``task_<b>/``.
    ``python -m lightning_meta predict`` adds this writer for FIGR.

    Example::

        trainer = pl.Trainer(callbacks=[GeneratedPNG("out")], inference_mode=False)
        trainer.predict(figr, datamodule=NpzDataModule("hanzi", queries=0, support_dir="my_classes"))
        # out/<class>/000.png ... 015.png
    """

    def __init__(self, folder: Optional[str] = None):
        super().__init__(write_interval="batch")
        self.folder = folder
        self.written: list[str] = []
        self.root: Optional[Path] = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = []
        self.root = Path(self.folder) if self.folder else output_dir(trainer) / "generated"

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Tensor,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if not trainer.is_global_zero:
            return
        names = getattr(batch, "class_names", None)
        root = self.root or Path("generated")
        for b, classes in enumerate(prediction):
            folder = root if prediction.shape[0] == 1 and batch_idx == 0 else root / f"task_{batch_idx}_{b}"
            for c, images in enumerate(classes):
                name = safe_name(names[b][c]) if names is not None else str(c)
                for i, image in enumerate(images):
                    path = folder / name / f"{i:03d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    image_file(image).save(path)
                    self.written.append(str(path))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.written and trainer.is_global_zero:
            rank_zero_info(f"{len(self.written)} generated images: {os.path.abspath(self.root or 'generated')}")


def class_grid(sample: dict[str, Any], tile: int = 42, columns: int = 16) -> Image.Image:
    """One class as a picture: a row of its support images, then the generated ones, then the real held-out ones,
    each row titled."""
    from PIL import ImageDraw

    rows = []
    for key, title in (("support", "support"), ("adapted", "generated"), ("real", "real (held out)")):
        images = sample[key]
        tiles = [image_tile(image, tile, 0.0, 1.0) for image in images[:columns]]
        picture = grid(tiles, min(columns, len(tiles)), gap=2)
        label = Image.new("RGB", (picture.width, 16), (255, 255, 255))
        ImageDraw.Draw(label).text((2, 1), title, fill=BLACK, font=font(11))
        rows.append(stack_vertically([label, picture], gap=1))
    return stack_vertically(rows, gap=6)


def write_class_grids(trainer: pl.Trainer, samples: Sequence[dict[str, Any]], stage: str) -> list[Path]:
    """A grid per class (support, generated, real) as ``<run folder>/generated_<stage>/episode<e>_class<c>.png``,
    and each W&B logger's ``<stage>/generated`` images, captioned."""
    folder = output_dir(trainer) / f"generated_{stage}"
    pictures, captions, paths = [], [], []
    for sample in samples:
        picture = class_grid(sample)
        caption = f"episode {sample['episode']} class {sample['class']}"
        paths.append(save_png(picture, folder / f"episode{sample['episode']}_class{sample['class']}.png"))
        pictures.append(picture)
        captions.append(caption)
    for logger in wandb_loggers(trainer):
        logger.log_image(key=f"{stage}/generated", images=pictures, step=trainer.global_step, caption=captions)
    return paths
