"""Domain-adversarial training (DANN): a classifier whose features cannot tell the domains apart.

A feature extractor ``G_f`` feeds a label classifier ``G_y`` (trained on labelled *source* images)
and, through a gradient reversal layer, a domain classifier ``G_d`` (trained to tell source images
from unlabelled *target* images).  One optimiser step on ``L_y + L_d`` trains ``G_d`` to separate
the domains while the reversed gradient trains ``G_f`` to confuse it, so the label classifier
learns on features that carry over to the target domain.  The reversal coefficient follows the
paper's schedule ``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` (``p``: training progress, 0 to 1),
optionally with its learning-rate annealing ``mu_p = mu_0 / (1 + alpha p) ** beta``.

Why a :class:`~lightning_meta.algorithms.base.MetaLearner` subclass although nothing here is
episodic: the CLI (``python -m lightning_meta``) accepts subclasses of ``MetaLearner`` only, and
the base brings manual optimisation (``manual_backward``, clipping after AMP unscaling, schedulers
stepped by hand), checkpoints with RNG states and primitive hyper-parameters.  Its training and
evaluation steps are replaced: batches are plain ``(x, y, domain)`` (DESIGN.md, decision 1), and
evaluation is plain classification of each domain's held-out samples.

Reference:
    Y. Ganin and V. Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
    Y. Ganin, E. Ustinova, H. Ajakan, P. Germain, H. Larochelle, F. Laviolette, M. Marchand and
    V. Lempitsky, "Domain-Adversarial Training of Neural Networks", JMLR 17(59):1-35, 2016.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_meta.algorithms.base import FIELD, MetaLearner
from lightning_meta.errors import ConfigurationError, require_positive
from lightning_meta.metrics import EpisodeResults
from lightning_meta.models.backbone import build_module
from lightning_meta.models.gradient_reversal import GradientReversal, dann_lambda, dann_learning_rate_factor
from lightning_meta.models.shapes import feature_width, input_shape_of

LAMBDA_SCHEDULES = ("dann", "constant")
SELECTION = ("source", "target")
OPTIMIZERS = ("adam", "sgd")
DOMAINS = ("source", "target")


class DomainAdversarial(MetaLearner):
    """Domain-adversarial neural network (Ganin & Lempitsky 2015) on ``(x, y, domain)`` batches.

    Training batches hold source images (``domain == 0``, labels ``y``) and target images
    (``domain == 1``, whose ``y`` is ignored: the data module sends ``-1``).  The loss is the
    cross-entropy of the source labels plus the binary cross-entropy of the domain classifier on
    all images, whose gradient reaches the feature extractor reversed and scaled by ``lambda``.

    ``lambda_max = 0`` is the *source-only* baseline: target images are not forwarded at all (so
    BatchNorm statistics are the source's too) and there is no domain classifier.

    Metrics: ``train/loss``, ``train/class_loss``, ``train/domain_loss``, ``train/acc`` (source
    batch), ``train/domain_acc``, ``train/lambda``, ``train/samples_per_s``; for ``val`` and
    ``test``, ``{stage}/source_acc``, ``{stage}/target_acc`` (plain classification of each
    domain's held-out samples, ``eval()`` mode) with ``_ci95`` (per-sample Bernoulli interval) and
    ``{stage}/source_loss``, ``{stage}/target_loss``.  ``val/acc`` is the model-selection score
    that ``BestCheckpoint`` monitors: the *source* validation accuracy by default
    (``selection="source"``), since target labels are not available for model selection in
    unsupervised adaptation; ``selection="target"`` uses the target validation accuracy (the
    "small labelled target validation set" of the paper, an oracle otherwise).  ``test/acc`` is
    the target test accuracy, the figure of merit.

    Args:
        feature_extractor: ``x -> features [n, width]``, e.g. ``Conv4(out_features=None,
            pooling="max", batch_norm_stats="running")`` (or a ``{"class_path", "init_args"}``
            dict).  Evaluation runs in ``eval()`` mode: keep running BatchNorm statistics.
        num_classes: classes of the label classifier (a linear layer on the features); must equal
            the data's.
        domain_hidden: width of the domain classifier's hidden layers.
        domain_layers: hidden layers of the domain classifier (``Linear -> ReLU``, then a logit).
        lambda_max: the reversal coefficient reached at the end of the schedule; ``0`` is the
            source-only baseline.
        lambda_schedule: ``"dann"`` (``lambda_max * (2 / (1 + exp(-gamma p)) - 1)``) or
            ``"constant"`` (``lambda_max`` throughout).
        gamma: steepness of the ``"dann"`` schedule (10 in the paper).
        schedule_steps: the steps over which ``p`` goes from 0 to 1 (default: the Trainer's
            ``estimated_stepping_batches``, from ``max_steps`` or ``max_epochs``).
        lr_annealing: anneal the learning rate as the paper: ``outer_lr / (1 + lr_alpha p) ** lr_beta``
            (a step-wise ``LambdaLR``, stepped by hand).
        lr_alpha, lr_beta: the annealing constants (10 and 0.75 in the paper).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9, as in the paper); ``--optimizer`` on the
            command line replaces both (and the annealing).
        selection: what ``val/acc`` (and so the best checkpoint) follows: ``"source"`` or ``"target"``.
        outer_lr: the learning rate (``mu_0``).
        gradient_clip_val: clip the gradient norm before each step (after AMP unscaling).
        input_shape: ``[C, H, W]`` of the images, to size the heads; default from the feature
            extractor's ``in_channels`` and ``image_size`` arguments.

    Reference:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
        Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.

    Example::

        from lightning_meta.data.domains import DomainPairDataModule
        from lightning_meta.models import Conv4

        data = DomainPairDataModule("hanzi", shift="noise", classes=50)
        model = DomainAdversarial(Conv4(out_features=None, pooling="max", batch_norm_stats="running"),
                                  num_classes=50)
        trainer = pl.Trainer(max_steps=1000, inference_mode=False)
        trainer.fit(model, data)
        trainer.test(model, data)          # test/target_acc, test/source_acc
    """

    evaluation_needs_grad = False
    throughput_unit = "samples"
    has_batching_choice = False

    def __init__(
        self,
        feature_extractor: Union[nn.Module, dict],
        num_classes: int,
        domain_hidden: int = 100,
        domain_layers: int = 1,
        lambda_max: float = 1.0,
        lambda_schedule: str = "dann",
        gamma: float = 10.0,
        schedule_steps: Optional[int] = None,
        lr_annealing: bool = True,
        lr_alpha: float = 10.0,
        lr_beta: float = 0.75,
        optimizer: str = "sgd",
        selection: str = "source",
        outer_lr: float = 0.01,
        gradient_clip_val: Optional[float] = None,
        input_shape: Optional[Sequence[int]] = None,
    ):
        super().__init__(outer_lr=outer_lr, gradient_clip_val=gradient_clip_val)
        self.remove_ignored_hparams(["accumulate_grad_batches"])
        require_positive(FIELD + "num_classes", num_classes)
        require_positive(FIELD + "domain_hidden", domain_hidden)
        require_positive(FIELD + "domain_layers", domain_layers)
        require_positive(FIELD + "lambda_max", lambda_max, allow_zero=True, integer=False)
        require_positive(FIELD + "gamma", gamma, integer=False)
        require_positive(FIELD + "lr_alpha", lr_alpha, allow_zero=True, integer=False)
        require_positive(FIELD + "lr_beta", lr_beta, allow_zero=True, integer=False)
        if schedule_steps is not None:
            require_positive(FIELD + "schedule_steps", schedule_steps)
        for name, value, choices in (("lambda_schedule", lambda_schedule, LAMBDA_SCHEDULES),
                                     ("selection", selection, SELECTION), ("optimizer", optimizer, OPTIMIZERS)):
            if value not in choices:
                raise ConfigurationError(f"{FIELD}{name}={value!r} is unknown: choose one of {', '.join(choices)}")
        self.feature_extractor = build_module(feature_extractor)
        self.num_classes = num_classes
        self.lambda_max, self.lambda_schedule, self.gamma = float(lambda_max), lambda_schedule, float(gamma)
        self.schedule_steps = schedule_steps
        self.lr_annealing, self.lr_alpha, self.lr_beta = lr_annealing, float(lr_alpha), float(lr_beta)
        self.optimizer_name, self.selection = optimizer, selection
        self.input_shape = input_shape_of(self.feature_extractor, input_shape, FIELD + "feature_extractor", dims=3)
        width = feature_width(self.feature_extractor, self.input_shape, FIELD + "feature_extractor")
        self.classifier = nn.Linear(width, num_classes)
        layers: list[nn.Module] = []
        for i in range(domain_layers):
            layers += [nn.Linear(width if i == 0 else domain_hidden, domain_hidden), nn.ReLU()]
        # source-only training has no domain classifier (a module that never receives a gradient would
        # need DDP's find_unused_parameters)
        self.domain_classifier = nn.Sequential(*layers, nn.Linear(domain_hidden, 1)) if lambda_max > 0 else None
        self.reversal = GradientReversal(0.0)
        self.results = nn.ModuleDict({"val": EpisodeResults(), "test": EpisodeResults(),
                                      "val_source": EpisodeResults(), "test_source": EpisodeResults()})

    # ------------------------------------------------------------------ the model
    def features(self, x: Tensor) -> Tensor:
        """Features ``[n, width]`` of images ``x``."""
        return self.feature_extractor(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[n, num_classes]``."""
        return self.classifier(self.features(x))

    @property
    def source_only(self) -> bool:
        return self.lambda_max == 0

    def progress(self) -> float:
        """Training progress ``p`` in ``[0, 1]``: optimiser steps done over the schedule's steps."""
        total = self.total_steps()
        return min(self.global_step / total, 1.0) if total else 0.0

    def total_steps(self) -> int:
        if self.schedule_steps is not None:
            return self.schedule_steps
        trainer = self._trainer
        if trainer is None:
            return 0
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigurationError(
                f"the lambda schedule needs the length of training: set trainer.max_steps or trainer.max_epochs, or"
                f" {FIELD}schedule_steps")
        return max(int(total), 1)

    def current_lambda(self) -> float:
        """The reversal coefficient of this step (see ``lambda_schedule``)."""
        if self.lambda_schedule == "constant":
            return self.lambda_max
        return dann_lambda(self.progress(), self.gamma, self.lambda_max)

    def losses(self, x: Tensor, y: Tensor, domain: Tensor, lambda_: float) -> dict[str, Tensor]:
        """The loss terms of one batch: ``class_loss`` (source labels only), ``domain_loss``
        (source and target, through the reversal layer), their sum ``loss``, and detached
        ``acc`` (source) and ``domain_acc``.  Target labels are never read."""
        source = domain == 0
        if not bool(source.any()):
            raise ValueError("a DomainAdversarial training batch holds no source image (domain == 0)")
        if self.source_only:
            logits = self(x[source])
            class_loss = F.cross_entropy(logits, y[source])
            zero = class_loss.new_zeros(())
            return {"loss": class_loss, "class_loss": class_loss.detach(), "domain_loss": zero,
                    "acc": (logits.argmax(1) == y[source]).float().mean(), "domain_acc": zero}
        features = self.features(x)
        logits = self.classifier(features[source])
        class_loss = F.cross_entropy(logits, y[source])
        self.reversal.lambda_ = lambda_
        domain_logits = self.domain_classifier(self.reversal(features)).squeeze(1)
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits.float(), domain.float())
        return {"loss": class_loss + domain_loss, "class_loss": class_loss.detach(),
                "domain_loss": domain_loss.detach(), "acc": (logits.argmax(1) == y[source]).float().mean(),
                "domain_acc": ((domain_logits > 0).long() == domain).float().mean()}

    # ------------------------------------------------------------------ Lightning: training
    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(self.parameters(), lr=self.outer_lr, momentum=0.9)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=self.outer_lr)
        if not self.lr_annealing:
            return optimizer
        total = self.total_steps() or 1
        alpha, beta = self.lr_alpha, self.lr_beta
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: dann_learning_rate_factor(step / total, alpha, beta))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, domain = self._unpack(batch)
        lambda_ = self.current_lambda()
        terms = self.losses(x, y, domain, lambda_)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"loss is not finite at global step {self.global_step}; training stopped before the update. Lower"
                f" {FIELD}outer_lr or lambda_max, or set {FIELD}gradient_clip_val")
        self.outer_step(terms["loss"])
        size = int((domain == 0).sum())
        for name in ("loss", "class_loss", "domain_loss", "acc", "domain_acc"):
            self.log(f"train/{name}", terms[name].detach(), prog_bar=name in ("loss", "acc"), on_step=True,
                     on_epoch=False, batch_size=size)
        self.log("train/lambda", lambda_, on_step=True, on_epoch=False, batch_size=size)
        self.log_values("train", {}, units=len(x))
        return terms["loss"].detach()

    @staticmethod
    def _unpack(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise TypeError("DomainAdversarial expects (x, y, domain) batches, as DomainPairDataModule serves; got "
                            f"{type(batch).__name__}")
        return batch[0], batch[1], batch[2]

    # ------------------------------------------------------------------ Lightning: evaluation
    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluate_plain(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluate_plain(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self.results["val"].reset()
        self.results["val_source"].reset()

    def on_test_epoch_start(self) -> None:
        self.results["test"].reset()
        self.results["test_source"].reset()

    def _evaluate_plain(self, batch: Sequence[Tensor], stage: str) -> None:
        x, y, domain = self._unpack(batch)
        logits = self(x).float()
        correct = (logits.argmax(1) == y).double()
        loss = F.cross_entropy(logits, y, reduction="none").double()
        for index, name in enumerate(DOMAINS):
            keep = domain == index
            if keep.any():
                key = stage if name == "target" else f"{stage}_source"
                self.results[key].update({"acc": correct[keep], "loss": loss[keep]})

    def domain_summary(self, stage: str) -> dict[str, tuple[float, float]]:
        """``{"source_acc": (mean, ci95), "target_acc": ..., "source_loss": ..., ...}`` of ``stage``."""
        summary: dict[str, tuple[float, float]] = {}
        for name in DOMAINS:
            results = self.results[stage if name == "target" else f"{stage}_source"]
            if results.names:
                for metric, value in results.compute().items():
                    summary[f"{name}_{metric}"] = value
        return summary

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        summary = self.domain_summary(stage)
        for name, (mean, ci95) in summary.items():
            self.log(f"{stage}/{name}", mean, prog_bar=name.endswith("acc"), sync_dist=False)
            if name.endswith("acc"):
                self.log(f"{stage}/{name}_ci95", ci95, sync_dist=False)
        chosen = "target_acc" if stage == "test" or self.selection == "target" else "source_acc"
        if chosen in summary:
            mean, ci95 = summary[chosen]
            self.log(f"{stage}/acc", mean, sync_dist=False)
            self.log(f"{stage}/acc_ci95", ci95, sync_dist=False)
        return summary

    def on_test_epoch_end(self) -> None:
        summary = self.log_results("test")
        for name in DOMAINS:
            if f"{name}_acc" in summary:
                count = self.results["test" if name == "target" else "test_source"].count()
                mean, ci95 = summary[f"{name}_acc"]
                rank_zero_info(f"test/{name}_acc = {100 * mean:.2f}% ± {100 * ci95:.2f}% (95% CI over {count}"
                               f" {name} samples)")

    # ------------------------------------------------------------------ checks
    def check_stage(self, datamodule: Any, stage: str) -> None:
        if stage == "predict":
            raise ConfigurationError("DomainAdversarial does not support predict: load the checkpoint and call the"
                                     " model on images (model(x).argmax(1)) instead")
        self.check_data(datamodule, stage)

    def check_data(self, datamodule: Any, split: str) -> None:
        """Fail before training when the data are not two domains of ``num_classes`` classes of
        images this model takes."""
        if not hasattr(datamodule, "load_domains"):
            raise ConfigurationError(
                f"DomainAdversarial trains on (x, y, domain) batches of two domains, but the data module is"
                f" {type(datamodule).__name__}: use lightning_meta.data.domains.DomainPairDataModule")
        if datamodule.num_classes != self.num_classes:
            raise ConfigurationError(
                f"{FIELD}num_classes={self.num_classes} but the data have {datamodule.num_classes} classes: set"
                f" {FIELD}num_classes to {datamodule.num_classes}")
        if list(datamodule.image_shape) != list(self.input_shape):
            raise ConfigurationError(
                f"the data's images are {list(datamodule.image_shape)} ([C, H, W]) but the feature extractor takes"
                f" {self.input_shape}: match its in_channels and image_size (or {FIELD}input_shape) to the data")
