"""Pictures of learned hyper-parameters: rate and momentum schedules, and example weights (no matplotlib).

A learned schedule is 100s of numbers (Maclaurin et al. 2015 plot them per layer against the step); learned
example weights are one per training example, and what matters is whether the flipped labels got the low
ones (Franceschi et al. 2017).  Scalars in a metrics table show neither.

Learners that expose ``evaluated_hyper_values(testing)`` (:class:`~lightning_meta.HyperparameterLearner`)
are drawn; the others are skipped without a word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor

from lightning_meta.callbacks.drawing import GREEN, PALETTE, RED, Series, line_chart, save_png
from lightning_meta.callbacks.fixed_episodes import STAGES, EvaluationPlot, wandb_loggers
from lightning_meta.callbacks.run_folder import output_dir

#: picture name -> (key of the learner's hyper-parameter values, y axis label)
SCHEDULES = {"lr_schedule": ("update.lr", "log10 learning rate"), "momentum_schedule": ("update.momentum", "momentum")}


class HyperparameterPlot(EvaluationPlot):
    """Draw the learned rate and momentum schedules and the histogram of learned example weights.

    At the end of each validation epoch (after every ``every_n_epochs``-th) and of the test, rank 0 asks the
    learner for the values that evaluation trains with (``evaluated_hyper_values``: the current ones at
    validation, the best on validation at test) and draws, for what is learned:

    * ``lr_schedule``: log10 of the inner rate against the inner step, one line per parameter tensor (a
      scalar or per-step rate: one line);
    * ``momentum_schedule``: the momentum, likewise;
    * ``example_weights``: a histogram of the per-example weights in ``bins`` bins over [0, 1], the examples
      whose labels were flipped (the data module's ``flipped`` mask, where it has one) apart from the clean.

    Each is written as ``<name>_<stage>_<epoch>.png`` in the run folder
    (:func:`~lightning_meta.callbacks.run_folder.output_dir`) and logged to each W&B logger as the image
    ``<stage>/<name>``; the weights also as W&B histograms ``<stage>/example_weights_clean`` and
    ``<stage>/example_weights_flipped``.

    Args:
        stages: ``"val"`` and/or ``"test"``.
        every_n_epochs: at validation, only after every ``n``-th epoch.
        bins: histogram bins of the example weights.
        size: picture size in pixels.

    Example::

        trainer = pl.Trainer(callbacks=[HyperparameterPlot()], logger=WandbLogger(), inference_mode=False)
        trainer.fit(HyperparameterLearner(MLP(64, 10, ()), learn_example_weights=True, learn_lr="fixed"),
                    DigitsDataModule(label_noise=0.5))
        # runs/.../example_weights_val_0.png, ...; W&B: val/example_weights
    """

    def __init__(self, stages: Sequence[str] = STAGES, every_n_epochs: int = 1, bins: int = 20,
                 size: tuple[int, int] = (640, 480)):
        super().__init__(stages, every_n_epochs, bins=bins)
        self.bins, self.size = bins, tuple(size)

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Draw, write and log ``stage``'s pictures (rank 0)."""
        values_of = getattr(pl_module, "evaluated_hyper_values", None)
        if stage not in self.stages or not trainer.is_global_zero or not callable(values_of):
            return
        hyper = {key: value.detach().double().cpu() for key, value in values_of(stage == "test").items()}
        names = list(getattr(pl_module, "tensor_names", []))
        steps = int(getattr(pl_module, "inner_steps", 1))
        pictures: dict[str, Image.Image] = {}
        for picture, (key, label) in SCHEDULES.items():
            if key in hyper:
                values = hyper[key].log10() if key == "update.lr" else hyper[key]
                pictures[picture] = self.schedule(values, names, steps, label, f"{stage}: learned {label}")
        flipped: Optional[Tensor] = None
        if "weights" in hyper:
            weights = hyper["weights"]
            mask = getattr(getattr(trainer, "datamodule", None), "flipped", None)
            flipped = mask.cpu().bool() if isinstance(mask, Tensor) and mask.shape == weights.shape else None
            pictures["example_weights"] = self.histogram(weights, flipped, f"{stage}: learned example weights")
        for name, image in pictures.items():
            path = output_dir(trainer) / f"{name}_{stage}_{trainer.current_epoch}.png"
            save_png(image, path)
            self.written.append(str(path))
            for logger in wandb_loggers(trainer):
                logger.log_image(key=f"{stage}/{name}", images=[image], step=trainer.global_step)
        if "weights" in hyper:
            self.log_weight_histograms(trainer, stage, hyper["weights"], flipped)

    def schedule(self, values: Tensor, names: list[str], steps: int, label: str, title: str) -> Image.Image:
        """A chart of ``values`` against the inner step: ``[T, P]`` one line per tensor, ``[T]`` one line,
        ``[]`` a constant (over ``steps``); ``[P]`` arrives expanded to ``[T, P]``."""
        if values.dim() == 0:
            columns, x = [("every tensor", [float(values)] * 2)], [1, steps]
        elif values.dim() == 1:
            columns, x = [("every tensor", values.tolist())], list(range(1, values.shape[0] + 1))
        else:
            labels = names if len(names) == values.shape[1] else [f"tensor {i}" for i in range(values.shape[1])]
            columns = [(labels[i], values[:, i].tolist()) for i in range(values.shape[1])]
            x = list(range(1, values.shape[0] + 1))
        series = [Series(x, y, label, PALETTE[i % len(PALETTE)]) for i, (label, y) in enumerate(columns)]
        return line_chart(series, title=title, x_label="inner step", y_label=label, size=self.size, integer_x=True)

    def histogram(self, weights: Tensor, flipped: Optional[Tensor], title: str) -> Image.Image:
        """Counts of ``weights`` per bin over [0, 1] as step lines: flipped labels apart from clean ones."""
        edges = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        groups = ([("clean labels", weights[~flipped], GREEN), ("flipped labels", weights[flipped], RED)]
                  if flipped is not None else [("all examples", weights, PALETTE[0])])
        series = []
        for label, group, colour in groups:
            counts = torch.histc(group, bins=self.bins, min=0, max=1).tolist()
            x = [float(e) for edge in zip(edges[:-1].tolist(), edges[1:].tolist()) for e in edge]
            y = [float(c) for c in counts for _ in range(2)]
            series.append(Series(x, y, f"{label} ({group.numel()})", colour))
        top = max(max(s.y) for s in series)
        return line_chart(series, title=title, x_label="weight", y_label="examples", size=self.size,
                          x_range=(0.0, 1.0), y_range=(0.0, max(1.0, math.ceil(1.05 * top))))

    @staticmethod
    def log_weight_histograms(trainer: pl.Trainer, stage: str, weights: Tensor, flipped: Optional[Tensor]) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        import wandb

        groups = {"clean": weights[~flipped], "flipped": weights[flipped]} if flipped is not None else {"all": weights}
        data = {f"{stage}/example_weights_{name}": wandb.Histogram(group.numpy()) for name, group in groups.items()}
        for logger in loggers:
            logger.experiment.log({**data, "trainer/global_step": trainer.global_step})
