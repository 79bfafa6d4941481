"""A gallery of a few fixed image episodes: the support set, and each query with its predicted and true class.

Seeing which queries a learner gets wrong (and what they were confused with) tells more than a
number when a run goes wrong: a data set decoded upside down, labels shuffled, a learner that
predicts one class for everything.
"""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from lightning_meta.callbacks.drawing import BLACK, GREEN, GREY, RED, WHITE, font, image_tile, save_png, \
    stack_vertically, text_size
from lightning_meta.callbacks.fixed_episodes import STAGES, FixedEpisodeCallback, check_settings, wandb_loggers
from lightning_meta.callbacks.run_folder import output_dir
from lightning_meta.tasks import Task, TaskBatch


def is_image_classification(batch: TaskBatch) -> bool:
    """Integer labels and inputs that are images (``[B, M, C, H, W]`` with 1 or 3 channels, or ``[B, M, H, W]``)."""
    if batch.is_regression:
        return False
    x = batch.support_x
    return (x.dim() == 5 and x.shape[2] in (1, 3)) or (x.dim() == 4 and min(x.shape[2:]) >= 4)


class EpisodeGallery(FixedEpisodeCallback):
    """Draw a few fixed image episodes with each query's predicted and true class.

    At the end of each validation epoch (and of the test), the first ``episodes`` episodes of the
    split (the same ones every time) are predicted with the learner's
    :meth:`~lightning_meta.algorithms.base.MetaLearner.predict_task` (adapting or summarising the support
    set as at test time, in ``eval()`` mode, the RNG states restored after, nothing logged as a
    metric).  Each episode is one picture: a title line (``val episode 3: 11/15 correct``), the support
    images in a row with their class, then the queries with a green (right) or red (wrong) border
    and ``predicted/true``.  Image episodes only: regression and non-image data are skipped
    without error, as are modules without ``predict_task``.

    Writes ``gallery_<stage>_<epoch>.png`` (the episodes one below the other) in the run folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`), and logs the episodes' pictures to
    each W&B logger with ``WandbLogger.log_image(key="<stage>/gallery", ...)``, captioned.

    Args:
        episodes: fixed episodes drawn (the split's first ones).
        max_queries: queries drawn per episode at most (the first ones).
        tile: size in pixels of an image's longer side.
        columns: images per row (at least the number of support images up to this).
        stages: ``"val"`` and/or ``"test"``.
        every_n_epochs: at validation, only after every ``n``-th epoch.

    Example::

        trainer = pl.Trainer(callbacks=[EpisodeGallery(episodes=2)], logger=WandbLogger(), inference_mode=False)
        trainer.fit(PrototypicalNetwork(Conv4(out_features=None)), OmniglotDataModule("data"))
        # runs/.../gallery_val_0.png, gallery_val_1.png, ...; W&B: val/gallery
    """

    def __init__(self, episodes: int = 2, max_queries: int = 20, tile: int = 56, columns: int = 10,
                 stages: Sequence[str] = STAGES, every_n_epochs: int = 1):
        super().__init__(episodes, stages, every_n_epochs)
        check_settings(stages, max_queries=max_queries, tile=tile, columns=columns)
        self.max_queries, self.tile, self.columns = max_queries, tile, columns
        self.written: list[str] = []

    def visualise(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, batch: TaskBatch) -> None:
        if not is_image_classification(batch):
            self.say_once("not-images", "the episodes are not image classification: no gallery")
            return
        if not callable(getattr(pl_module, "predict_task", None)):
            self.say_once("no-predict", f"{type(pl_module).__name__} has no predict_task: no gallery")
            return
        pictures, captions = [], []
        for b, task in enumerate(batch):
            predicted = pl_module.predict_task(task.support_x, task.support_y, task.query_x).argmax(-1)
            episode = int(batch.index[b]) if batch.index is not None else b
            correct = int((predicted == task.query_y).sum())
            caption = f"{stage} episode {episode}: {correct}/{len(task.query_y)} correct"
            pictures.append(self.draw_episode(task, predicted, caption))
            captions.append(caption)
        path = output_dir(trainer) / f"gallery_{stage}_{trainer.current_epoch}.png"
        save_png(stack_vertically(pictures, gap=12, background=GREY), path)
        self.written.append(str(path))
        for logger in wandb_loggers(trainer):
            logger.log_image(key=f"{stage}/gallery", images=pictures, step=trainer.global_step, caption=captions)

    def draw_episode(self, task: Task, predicted: Tensor, title: str) -> Image.Image:
        """One episode's picture: ``title``, the support row(s), then the query rows."""
        small, large = font(11), font(13)
        support, queries = task.support_x.cpu(), task.query_x[: self.max_queries].cpu()
        both = torch.cat([support, queries])
        low, high = float(both.min()), float(both.max())   # one scale for the whole episode
        border, label_h, gap = 3, 15, 4
        cell_w, cell_h = self.tile + 2 * border, self.tile + 2 * border + label_h
        columns = max(1, min(self.columns, max(len(support), 1)))
        columns = max(columns, min(self.columns, len(queries)))
        rows_s = -(-len(support) // columns)
        rows_q = -(-len(queries) // columns)
        header = 22
        section = 16
        width = columns * (cell_w + gap) + gap
        height = header + section + rows_s * (cell_h + gap) + section + rows_q * (cell_h + gap) + gap
        image = Image.new("RGB", (max(width, 260), height), WHITE)
        draw = ImageDraw.Draw(image)
        draw.text((gap, 4), title, fill=BLACK, font=large)

        def cell(i: int, top: int, x: Tensor, label: str, colour) -> None:
            left = gap + (i % columns) * (cell_w + gap)
            y = top + (i // columns) * (cell_h + gap)
            draw.rectangle([left, y, left + cell_w - 1, y + self.tile + 2 * border - 1], fill=colour)
            picture = image_tile(x, self.tile, low, high)
            image.paste(picture, (left + border + (self.tile - picture.width) // 2,
                                  y + border + (self.tile - picture.height) // 2))
            w, _ = text_size(draw, label, small)
            draw.text((left + (cell_w - w) / 2, y + self.tile + 2 * border + 1), label,
                      fill=BLACK if colour in (WHITE, GREY) else colour, font=small)

        top = header
        draw.text((gap, top), "support (class)", fill=GREY, font=small)
        top += section
        for i, (x, y) in enumerate(zip(support, task.support_y.tolist())):
            cell(i, top, x, str(y), GREY)
        top += rows_s * (cell_h + gap)
        draw.text((gap, top), "queries (predicted/true)", fill=GREY, font=small)
        top += section
        for i, (x, p, y) in enumerate(zip(queries, predicted.tolist(), task.query_y.tolist())):
            cell(i, top, x, f"{p}/{y}", GREEN if p == y else RED)
        return image
