"""The fine-tuning baselines of Chen et al. (2019): Baseline (linear head) and Baseline++ (cosine head).

Pre-training is ordinary supervised learning: a backbone and a classifier over all meta-training
classes, trained on class-balanced batches ``(x, y)`` (the data module's
``train_batches="supervised"``), not on episodes.  Meta-test freezes the backbone (``eval()`` mode:
running BatchNorm statistics, so episodes are independent) and, for every task, trains a fresh
classifier of the same kind on the embedded support set, then classifies the query set.  Evaluation
is :class:`~lightning_meta.algorithms.base.MetaLearner`'s: the same fixed episodes, mean and 95% CI.

The point of the paper is that this simple recipe, with a cosine classifier (Baseline++), is
competitive with meta-learning at equal backbone and data, and wins under domain shift.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.errors import (
    DATA_ARGS,
    MODEL_ARGS,
    ConfigurationError,
    optional_positive,
    require_choice,
    require_positive,
)
from lightning_meta.models.backbone import build_module
from lightning_meta.models.norm import evaluation_mode, require_norm_statistics
from lightning_meta.models.shapes import infer_feature_dim
from lightning_meta.tasks import TaskBatch

#: the classifier of pre-training and of each task: linear (Baseline) or ``scale * cos`` (Baseline++)
Head = Literal["linear", "cosine"]


def cosine_logits(features: Tensor, weight: Tensor, scale: Tensor | float) -> Tensor:
    """``scale * cos(features_i, weight_c)``: features ``[..., M, D]``, weight ``[..., ways, D]`` -> ``[..., M, ways]``."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(x, w_c)`` against one weight vector per class (Baseline++'s head).

    Cosine similarities lie in [-1, 1], too flat for a softmax; ``scale`` sharpens them, learned
    (``learn_scale=True``) or fixed.

    Example::

        head = CosineClassifier(64, 10, scale=10.0)
        head(torch.randn(8, 64)).shape       # torch.Size([8, 10])
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0, learn_scale: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return cosine_logits(x, self.weight, self.scale)


class FineTuningBaseline(MetaLearner):
    """Pre-train a classifier on all meta-training classes; at meta-test, fine-tune a fresh head per task.

    Training takes the data module's supervised batches ``(x, y)`` (``data.init_args.train_batches:
    supervised``): cross-entropy of ``head(backbone(x))`` over the ``num_classes`` meta-training
    classes, one Adam step per batch (manual optimisation, as every :class:`MetaLearner`).
    Evaluation, per task: embed the support and query sets with the frozen backbone in ``eval()``
    mode, train a fresh head of the same kind (``ways`` outputs) on the support embeddings for
    ``finetune_steps`` SGD steps on mini-batches of ``finetune_batch_size`` (Chen et al.'s code:
    lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001, batch 4, 100 passes over the support
    set: 200 steps in 5-way 1-shot, 700 in 5-way 5-shot), then return the query logits.

    The fresh head's initial weights and the mini-batch order come from a generator seeded by
    ``finetune_seed`` for every task, so an episode's predictions depend on nothing but the
    episode and the backbone (not on the other episodes of its batch, nor on the global RNG).  The
    heads of a batch's tasks are fine-tuned together as one batched tensor (each task's own loss and
    gradient; SGD is element-wise, so it is the per-task update).  Fine-tuning runs in its own
    grad-enabled region on detached features, so evaluation works under ``torch.no_grad()`` and
    ``inference_mode=True`` Trainers alike; the backbone never receives a gradient.

    Args:
        backbone: the headless embedding network, e.g. ``Conv4(out_features=None, pooling="max",
            batch_norm_stats="running")`` (or a ``{"class_path", "init_args"}`` dict).  Its BatchNorm
            layers must keep running statistics (meta-test embeds in ``eval()`` mode).
        num_classes: classes of the pre-training head: the data module's ``num_train_classes``
            (meta-training classes, rotations included); checked before training.
        head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++: ``scale * cos``), used both in
            pre-training and for the fresh per-task head.
        scale: the cosine head's scale (its initial value when learned); ignored by the linear head.
            At meta-test the fresh cosine head uses the pre-trained head's (learned) scale, fixed.
        learn_scale: learn the cosine head's scale in pre-training (otherwise fixed at ``scale``).
        finetune_steps: SGD steps on each task's support set at meta-test (0: test the initial head).
        finetune_lr, finetune_momentum, finetune_dampening, finetune_weight_decay: the SGD of the
            per-task head (Chen et al.'s values by default).
        finetune_batch_size: support samples per fine-tuning step, taken in passes over a permutation
            of the support set (the last mini-batch of a pass may be smaller); ``None``: the whole
            support set every step.
        finetune_seed: seed of each task's head initialisation and mini-batch order.
        feature_dim: width of the backbone's output; ``None`` infers it with one forward pass on a
            dummy input built from the backbone's ``in_channels``/``image_size`` (or ``in_features``).
        Remaining arguments (``outer_lr``: the learning rate of the default Adam pre-training optimiser, which
            ``--optimizer`` replaces; ``gradient_clip_val``, ``accumulate_grad_batches``): see
            :class:`~lightning_meta.algorithms.learner.Learner`.

    Reference:
        Chen, Liu, Kira, Wang, Huang. "A Closer Look at Few-Shot Classification." ICLR 2019
        (code: github.com/wyharveychen/CloserLookFewShot).

    Example::

        from lightning_meta.algorithms.finetune import BaselinePlusPlus
        from lightning_meta.models import Conv4

        data = NpzDataModule("hanzi.npz", train_batches="supervised", batch_size=16, test_ways=5, test_shots=1)
        data.setup("fit")
        model = BaselinePlusPlus(Conv4(out_features=None, pooling="max", batch_norm_stats="running"),
                                 num_classes=data.num_train_classes)
        pl.Trainer(max_epochs=10, inference_mode=False).fit(model, data)
    """

    #: Fine-tuning takes gradients, but on detached features in its own grad-enabled region (see the
    #: class docstring): the base need not enable gradients nor refuse inference mode.
    evaluation_needs_grad = False
    throughput_unit = "samples"
    has_batching_choice = False

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: Head = "linear",
        scale: float = 10.0,
        learn_scale: bool = True,
        finetune_steps: int = 100,
        finetune_lr: float = 0.01,
        finetune_momentum: float = 0.9,
        finetune_dampening: float = 0.9,
        finetune_weight_decay: float = 1e-3,
        finetune_batch_size: Optional[int] = 4,
        finetune_seed: int = 0,
        feature_dim: Optional[int] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        require_choice(MODEL_ARGS + "head", head, Head)
        require_positive(MODEL_ARGS + "num_classes", num_classes)
        require_positive(MODEL_ARGS + "scale", scale, integer=False)
        require_positive(MODEL_ARGS + "finetune_steps", finetune_steps, allow_zero=True)
        require_positive(MODEL_ARGS + "finetune_lr", finetune_lr, integer=False)
        for name, value in (("finetune_momentum", finetune_momentum), ("finetune_dampening", finetune_dampening),
                            ("finetune_weight_decay", finetune_weight_decay)):
            require_positive(MODEL_ARGS + name, value, allow_zero=True, integer=False)
        optional_positive(MODEL_ARGS + "finetune_batch_size", finetune_batch_size)
        optional_positive(MODEL_ARGS + "feature_dim", feature_dim)
        if not isinstance(finetune_seed, int) or isinstance(finetune_seed, bool):
            raise ConfigurationError(f"{MODEL_ARGS}finetune_seed={finetune_seed!r} must be an integer")
        self.backbone = build_module(backbone)
        require_headless_running_backbone(self.backbone)
        self.num_classes, self.head = num_classes, head
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self.finetune_momentum, self.finetune_dampening = finetune_momentum, finetune_dampening
        self.finetune_weight_decay, self.finetune_batch_size = finetune_weight_decay, finetune_batch_size
        self.finetune_seed = finetune_seed
        self.feature_dim = feature_dim or infer_feature_dim(self.backbone)
        self.classifier: nn.Module = (nn.Linear(self.feature_dim, num_classes) if head == "linear"
                                      else CosineClassifier(self.feature_dim, num_classes, scale, learn_scale))

    # ------------------------------------------------------------------ pre-training
    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[n, num_classes]`` of the pre-training classifier."""
        return self.classifier(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = supervised_batch(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.outer_step(loss)
        accuracy = (logits.detach().argmax(1) == y).float().mean()
        self.log_values("train", {"loss": loss.detach(), "acc": accuracy}, units=len(y))
        return loss.detach()

    # ------------------------------------------------------------------ meta-test: fine-tune a fresh head
    def embed(self, x: Tensor) -> Tensor:
        """Features ``[n, D]`` of the frozen backbone (``eval()`` mode, no gradient)."""
        with torch.no_grad(), evaluation_mode(self.backbone) as backbone:
            return backbone(x).flatten(1)

    def evaluate_batch(self, batch: TaskBatch) -> tuple[Tensor, None]:
        """Query logits ``[B, M, ways]`` of every task after fine-tuning its own head."""
        support_x, support_y, query_x, _ = batch.tensors()
        support = torch.stack([self.embed(x) for x in support_x])  # one task's images at a time (memory)
        query = torch.stack([self.embed(x) for x in query_x])
        return self.finetune_heads(support, support_y, query), None

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, None]:
        logits = self.finetune_heads(self.embed(support_x)[None], support_y[None], self.embed(query_x)[None])
        return logits[0], None

    def finetune_heads(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        """Train one fresh head per task on support features ``[B, S, D]`` and return query logits
        ``[B, M, ways]`` (detached).  Tasks are independent: the loss is the sum of per-task means."""
        ways = int(support_y.max()) + 1  # labels checked by the data module or support_set_ways
        shots = support.shape[1]
        generator = torch.Generator().manual_seed(self.finetune_seed)
        with torch.inference_mode(False), torch.enable_grad():
            # clones leave inference mode: features computed under it cannot be saved for backward
            support, query, support_y = support.detach().clone(), query.detach().clone(), support_y.clone()
            params = self.fresh_head(support, support_y, ways, generator)
            optimizer = torch.optim.SGD(params.values(), lr=self.finetune_lr, momentum=self.finetune_momentum,
                                        dampening=self.finetune_dampening, weight_decay=self.finetune_weight_decay)
            for rows in self.minibatches(shots, generator):
                rows = rows.to(support.device)
                logits = self.head_logits(params, support[:, rows])
                loss = F.cross_entropy(logits.flatten(0, 1), support_y[:, rows].flatten(), reduction="sum") / len(rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                return self.head_logits(params, query).detach()

    def fresh_head(self, support: Tensor, support_y: Tensor, ways: int,
                   generator: torch.Generator) -> dict[str, Tensor]:
        """The initial per-task heads, ``{"weight": [B, ways, D]}`` (and ``"bias": [B, ways]`` for the
        linear head), leaves that require grad, for support features ``[B, S, D]`` with labels ``[B, S]``.

        Chen et al.'s: one fresh ``nn.Linear``-style draw from ``generator``, the same for every task
        (the support set is not looked at).  Override to start elsewhere, e.g. from class means.
        """
        tasks, width = support.shape[0], support.shape[-1]
        bound = 1.0 / math.sqrt(width)
        weight = (torch.rand(ways, width, generator=generator) * 2 - 1) * bound
        params = {"weight": weight}
        if self.head == "linear":
            params["bias"] = (torch.rand(ways, generator=generator) * 2 - 1) * bound
        return {name: p.to(support).expand(tasks, *p.shape).clone().requires_grad_() for name, p in params.items()}

    def head_logits(self, params: dict[str, Tensor], features: Tensor) -> Tensor:
        """Logits ``[B, n, ways]`` of features ``[B, n, D]`` under per-task heads ``params``."""
        if self.head == "cosine":
            return cosine_logits(features, params["weight"], self.classifier.scale.detach())
        return features @ params["weight"].transpose(-1, -2) + params["bias"].unsqueeze(1)

    def minibatches(self, shots: int, generator: torch.Generator) -> list[Tensor]:
        """The support rows of each of the ``finetune_steps`` steps: passes over a permutation of the
        support set in chunks of ``finetune_batch_size`` (Chen et al.'s loop)."""
        size = self.finetune_batch_size or shots
        steps: list[Tensor] = []
        while len(steps) < self.finetune_steps:
            order = torch.randperm(shots, generator=generator)
            steps.extend(order[i:i + size] for i in range(0, shots, size))
        return steps[:self.finetune_steps]

    # ------------------------------------------------------------------ checks
    def probe(self, x: Tensor) -> None:
        self.embed(x)  # the backbone must take the images; fresh heads fit any number of ways
        return None

    def check_data(self, datamodule: Any, split: str) -> None:
        """Pre-training needs supervised batches of exactly ``num_classes`` meta-training classes."""
        if split != "train":
            super().check_data(datamodule, split)
            return
        name = type(self).__name__
        if getattr(datamodule, "is_regression", False):
            raise ConfigurationError(
                f"{name} pre-trains a classifier on class-labelled images, but {type(datamodule).__name__} is a"
                " regression data module: use an image data module (Omniglot, MiniImageNet, Npz, ImageFolder) with"
                f" {DATA_ARGS}train_batches: supervised")
        if getattr(datamodule, "train_batches", "episodes") != "supervised":
            raise ConfigurationError(
                f"{name} pre-trains on ordinary batches of all meta-training classes, not on episodes: set"
                f" {DATA_ARGS}train_batches: supervised and {DATA_ARGS}batch_size (e.g. 16)")
        classes = datamodule.num_train_classes
        if classes != self.num_classes:
            raise ConfigurationError(
                f"{MODEL_ARGS}num_classes={self.num_classes} but the data's meta-training split has {classes} classes"
                f" ({DATA_ARGS}num_train_classes, rotations included): set {MODEL_ARGS}num_classes: {classes}")
        images = datamodule.source("train").sample(torch.Generator().manual_seed(0), 1, 1, 0).support_x
        try:
            self.probe(images.to(self.device))
        except RuntimeError as error:
            raise ConfigurationError(
                f"the backbone cannot take the 'train' images of shape {list(images.shape[1:])}: {error}. Match its "
                f"input arguments ({MODEL_ARGS}backbone.init_args.in_channels, image_size) to the data") from error


class Baseline(FineTuningBaseline):
    """Chen et al.'s Baseline: :class:`FineTuningBaseline` with a linear head (``head="linear"``).

    Example::

        model = Baseline(Conv4(out_features=None, pooling="max", batch_norm_stats="running"), num_classes=64)
    """

    def __init__(self, backbone: nn.Module, num_classes: int, **kwargs: Any):
        super().__init__(backbone, num_classes, head="linear", **kwargs)
        self.remove_ignored_hparams(["head"])  # fixed by the class (and not an argument of it)


class BaselinePlusPlus(FineTuningBaseline):
    """Chen et al.'s Baseline++: :class:`FineTuningBaseline` with a cosine head (``head="cosine"``,
    logits ``scale * cos(features, w_c)``), which reduces intra-class variation of the features.

    Example::

        model = BaselinePlusPlus(Conv4(out_features=None, pooling="max", batch_norm_stats="running"),
                                 num_classes=64, scale=10.0, learn_scale=True)
    """

    def __init__(self, backbone: nn.Module, num_classes: int, **kwargs: Any):
        super().__init__(backbone, num_classes, head="cosine", **kwargs)
        self.remove_ignored_hparams(["head"])  # fixed by the class (and not an argument of it)


def supervised_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a supervised batch, with a clear error for an episodic one."""
    if isinstance(batch, TaskBatch):
        raise TypeError("fine-tuning baselines pre-train on supervised (x, y) batches, got a TaskBatch of episodes: "
                        f"set {DATA_ARGS}train_batches: supervised")
    x, y = batch[0], batch[1]
    return x, y


def require_headless_running_backbone(backbone: nn.Module) -> None:
    """Refuse a backbone with a classifier head, or BatchNorm without running statistics."""
    head = getattr(backbone, "head", None)
    if head is not None and not isinstance(head, nn.Identity):
        raise ConfigurationError(
            f"the backbone has a head ({type(head).__name__}); the baseline adds its own classifier: set "
            f"{MODEL_ARGS}backbone.init_args.out_features: null")
    require_norm_statistics(backbone, running=True, field=MODEL_ARGS + "backbone",
                            why="meta-test embeds in eval() mode, so that an episode's predictions never depend on"
                                " the other images")
