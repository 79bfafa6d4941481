"""Domain-adversarial training (DANN): a classifier whose features cannot tell the domains apart.

A feature extractor ``G_f`` feeds a label classifier ``G_y`` (trained on labelled *source* images)
and, through a gradient reversal layer, a domain classifier ``G_d`` (trained to tell source images
from unlabelled *target* images).  One optimiser step on ``L_y + L_d`` trains ``G_d`` to separate
the domains while the reversed gradient trains ``G_f`` to confuse it, so the label classifier
learns on features that carry over to the target domain.  The reversal coefficient follows the
paper's schedule ``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` (``p``: training progress, 0 to 1),
optionally with its learning-rate annealing ``mu_p = mu_0 / (1 + alpha p) ** beta``.

Nothing here is episodic, so the learner sits directly on the root
:class:`~lightning_meta.algorithms.learner.Learner`: its training batches are plain ``(x, y, domain)``,
and an evaluation item is a pair of held-out images, one per domain
(:class:`~lightning_meta.data.domains.DomainPairBatch`), scored per domain.

Reference:
    Y. Ganin and V. Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
    Y. Ganin, E. Ustinova, H. Ajakan, P. Germain, H. Larochelle, F. Laviolette, M. Marchand and
    V. Lempitsky, "Domain-Adversarial Training of Neural Networks", JMLR 17(59):1-35, 2016.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_meta.algorithms.learner import Learner
from lightning_meta.data.domains import DomainPairBatch
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_choice, require_positive
from lightning_meta.models.backbone import build_module
from lightning_meta.models.gradient_reversal import GradientReversal, dann_lambda, dann_learning_rate_factor
from lightning_meta.models.shapes import feature_width, input_shape_of

LambdaSchedule = Literal["dann", "constant"]
Selection = Literal["source", "target"]
OptimizerKind = Literal["sgd", "adam"]
DOMAINS = ("source", "target")


class DomainAdversarial(Learner):
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
    domain's held-out samples, ``eval()`` mode) and ``{stage}/source_loss``, ``{stage}/target_loss``,
    each with its ``_ci95`` over the samples.  ``val/acc`` is the model-selection score that
    ``BestCheckpoint`` follows: the *source* validation accuracy by default (``selection="source"``),
    since target labels are not available for model selection in unsupervised adaptation;
    ``selection="target"`` uses the target validation accuracy (the "small labelled target
    validation set" of the paper, an oracle otherwise).  ``test/acc`` is the target test accuracy,
    the figure of merit.

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
        schedule_steps: the outer steps over which ``p`` goes from 0 to 1 (default: the run's, from
            ``max_steps`` or ``max_epochs``; see :meth:`~lightning_meta.algorithms.learner.Learner.progress`).
        lr_annealing: anneal the learning rate as the paper: ``outer_lr / (1 + lr_alpha p) ** lr_beta``
            (a step-wise ``LambdaLR``; ``--lr_scheduler`` replaces it).
        lr_alpha, lr_beta: the annealing constants (10 and 0.75 in the paper).
        optimizer: ``"sgd"`` (momentum 0.9, as in the paper) or ``"adam"``; ``--optimizer`` on the
            command line replaces it.
        selection: what ``val/acc`` (and so the best checkpoint) follows: ``"source"`` or ``"target"``.
        input_shape: ``[C, H, W]`` of the images, to size the heads; default from the feature
            extractor's ``in_channels`` and ``image_size`` arguments.
        outer_lr: the learning rate (``mu_0``; 0.01 as in the paper).
        Remaining arguments (``gradient_clip_val``, ``accumulate_grad_batches``): see
            :class:`~lightning_meta.algorithms.learner.Learner`.

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

    selection_mode = "max"
    fractions = ("source_acc", "target_acc")
    summary_names = ("source_acc", "target_acc", "source_loss", "target_loss")
    throughput_unit = "samples"

    def __init__(
        self,
        feature_extractor: Union[nn.Module, dict],
        num_classes: int,
        domain_hidden: int = 100,
        domain_layers: int = 1,
        lambda_max: float = 1.0,
        lambda_schedule: LambdaSchedule = "dann",
        gamma: float = 10.0,
        schedule_steps: Optional[int] = None,
        lr_annealing: bool = True,
        lr_alpha: float = 10.0,
        lr_beta: float = 0.75,
        optimizer: OptimizerKind = "sgd",
        selection: Selection = "source",
        input_shape: Optional[Sequence[int]] = None,
        outer_lr: float = 0.01,
        **kwargs: Any,
    ):
        super().__init__(outer_lr=outer_lr, **kwargs)
        require_positive(MODEL_ARGS + "num_classes", num_classes)
        require_positive(MODEL_ARGS + "domain_hidden", domain_hidden)
        require_positive(MODEL_ARGS + "domain_layers", domain_layers)
        require_positive(MODEL_ARGS + "lambda_max", lambda_max, allow_zero=True, integer=False)
        require_positive(MODEL_ARGS + "gamma", gamma, integer=False)
        require_positive(MODEL_ARGS + "lr_alpha", lr_alpha, allow_zero=True, integer=False)
        require_positive(MODEL_ARGS + "lr_beta", lr_beta, allow_zero=True, integer=False)
        if schedule_steps is not None:
            require_positive(MODEL_ARGS + "schedule_steps", schedule_steps)
        require_choice(MODEL_ARGS + "lambda_schedule", lambda_schedule, LambdaSchedule)
        require_choice(MODEL_ARGS + "selection", selection, Selection)
        require_choice(MODEL_ARGS + "optimizer", optimizer, OptimizerKind)
        self.feature_extractor = build_module(feature_extractor)
        self.num_classes = num_classes
        self.lambda_max, self.lambda_schedule, self.gamma = float(lambda_max), lambda_schedule, float(gamma)
        self.schedule_steps = schedule_steps
        self.lr_annealing, self.lr_alpha, self.lr_beta = lr_annealing, float(lr_alpha), float(lr_beta)
        self.optimizer_kind, self.selection = optimizer, selection
        self.selection_metric = f"{selection}_acc"
        self.input_shape = input_shape_of(self.feature_extractor, input_shape, MODEL_ARGS + "feature_extractor",
                                          dims=3)
        width = feature_width(self.feature_extractor, self.input_shape, MODEL_ARGS + "feature_extractor")
        self.classifier = nn.Linear(width, num_classes)
        layers: list[nn.Module] = []
        for i in range(domain_layers):
            layers += [nn.Linear(width if i == 0 else domain_hidden, domain_hidden), nn.ReLU()]
        # source-only training has no domain classifier (a module that never receives a gradient would
        # need DDP's find_unused_parameters)
        self.domain_classifier = nn.Sequential(*layers, nn.Linear(domain_hidden, 1)) if lambda_max > 0 else None
        self.reversal = GradientReversal(0.0)

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

    # ------------------------------------------------------------------ the schedules
    def planned_batches(self) -> float:
        """The batches the schedules span: ``schedule_steps`` outer steps when given, else the run's."""
        if self.schedule_steps is not None:
            return float(self.schedule_steps * self.accumulate_grad_batches)
        return super().planned_batches()

    def schedule_position(self) -> float:
        """The paper's ``p`` for the batch being trained: the fraction of the schedule trained before it
        (0 at the first batch), where :meth:`progress` counts the batch in progress."""
        return min((self.batches_trained - 1) / self.planned_batches(), 1.0)

    def current_lambda(self) -> float:
        """The reversal coefficient of this step (see ``lambda_schedule``)."""
        if self.lambda_schedule == "constant":
            return self.lambda_max
        return dann_lambda(self.schedule_position(), self.gamma, self.lambda_max)

    def make_optimizer(self, group: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        """SGD with momentum 0.9 (the paper) or Adam, at ``outer_lr``."""
        if self.optimizer_kind == "sgd":
            return torch.optim.SGD(parameters, lr=self.outer_lr, momentum=0.9)
        return torch.optim.Adam(parameters, lr=self.outer_lr)

    def make_scheduler(self, group: str, optimizer: torch.optim.Optimizer) -> Optional[dict[str, Any]]:
        """The paper's annealing ``1 / (1 + lr_alpha p) ** lr_beta`` of the learning rate, stepped after each
        outer step with ``p`` = :meth:`progress` then (the fraction trained before the next step)."""
        if not self.lr_annealing:
            return None
        alpha, beta = self.lr_alpha, self.lr_beta
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda _: dann_learning_rate_factor(self.progress(), alpha, beta))
        return {"scheduler": scheduler, "interval": "step"}

    def on_train_start(self) -> None:
        """Refuse a schedule over a run without an end, before the first batch (:meth:`require_run_length`)."""
        super().on_train_start()
        if self.lr_annealing:
            self.require_run_length("lr_annealing",
                                    f", or {MODEL_ARGS}schedule_steps (or {MODEL_ARGS}lr_annealing: false)")
        if self.lambda_schedule != "constant" and not self.source_only:
            self.require_run_length("the lambda schedule", f", or {MODEL_ARGS}schedule_steps")

    # ------------------------------------------------------------------ training
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

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, domain = domain_batch(batch)
        lambda_ = self.current_lambda()
        terms = self.losses(x, y, domain, lambda_)
        self.outer_step(terms["loss"])
        values = {name: terms[name].detach() for name in ("loss", "class_loss", "domain_loss", "acc", "domain_acc")}
        self.log_values("train", {**values, "lambda": lambda_}, units=len(x), prog_bar=("loss", "acc"))
        return values["loss"]

    # ------------------------------------------------------------------ evaluation
    def evaluate_tasks(self, batch: DomainPairBatch) -> dict[str, Tensor]:
        """Per held-out pair: ``source_acc``/``source_loss`` of its source image and ``target_acc``/``target_loss``
        of its target image (plain classification, one forward of both)."""
        logits = self(torch.cat([batch.source_x, batch.target_x])).float()
        labels = torch.cat([batch.source_y, batch.target_y])
        correct, loss = (logits.argmax(1) == labels).float(), F.cross_entropy(logits, labels, reduction="none")
        count = len(batch.source_y)
        return {"source_acc": correct[:count], "source_loss": loss[:count],
                "target_acc": correct[count:], "target_loss": loss[count:]}

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        """Also log ``{stage}/acc`` (and its CI): the target accuracy at test, the ``selection`` domain's
        at validation."""
        summary = super().log_results(stage)
        chosen = "target_acc" if stage == "test" else self.selection_metric
        if chosen in summary:
            mean, ci95 = summary[chosen]
            self.log(f"{stage}/acc", mean, sync_dist=False)
            self.log(f"{stage}/acc_ci95", ci95, sync_dist=False)
        return summary

    def print_summary(self, stage: str, summary: dict[str, tuple[float, float]]) -> None:
        """One line per domain: ``test/target_acc = 35.20% ± 4.68% (95% CI over 400 target samples)``."""
        count = self.results[stage].count()
        for name in DOMAINS:
            if f"{name}_acc" in summary:
                mean, ci95 = summary[f"{name}_acc"]
                rank_zero_info(f"{stage}/{name}_acc = {100 * mean:.2f}% ± {100 * ci95:.2f}% (95% CI over {count}"
                               f" {name} samples)")

    # ------------------------------------------------------------------ checks
    def check_stage(self, datamodule: Any, stage: str) -> None:
        """Refuse ``predict`` (the root's refusal: no prediction writer), then check the data."""
        super().check_stage(datamodule, stage)
        self.check_data(datamodule)

    def check_data(self, datamodule: Any) -> None:
        """Fail before training when the data are not two domains of ``num_classes`` classes of
        images this model takes."""
        if not hasattr(datamodule, "load_domains"):
            raise ConfigurationError(
                f"DomainAdversarial trains on (x, y, domain) batches of two domains, but the data module is"
                f" {type(datamodule).__name__}: use lightning_meta.data.domains.DomainPairDataModule")
        if datamodule.num_classes != self.num_classes:
            raise ConfigurationError(
                f"{MODEL_ARGS}num_classes={self.num_classes} but the data have {datamodule.num_classes} classes: set"
                f" {MODEL_ARGS}num_classes to {datamodule.num_classes}")
        if list(datamodule.image_shape) != list(self.input_shape):
            raise ConfigurationError(
                f"the data's images are {list(datamodule.image_shape)} ([C, H, W]) but the feature extractor takes"
                f" {self.input_shape}: match its in_channels and image_size (or {MODEL_ARGS}input_shape) to the data")


def domain_batch(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, domain)`` of a training batch, with a clear error for anything else."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise TypeError("DomainAdversarial expects (x, y, domain) batches, as DomainPairDataModule serves; got "
                        f"{type(batch).__name__}")
    return batch[0], batch[1], batch[2]
