"""``SequenceLearner``: the supervised episodic learners that read an episode as a sequence (SNAIL, MANN).

A black-box meta-learner has no inner loop and no metric: a sequence model reads an episode's
examples one after another, each with its label (or a null label where it must predict), and the
labels are inputs.  What such a learner needs besides :class:`~lightning_meta.algorithms.base.MetaLearner`:

* **a label space**: ``ways`` label slots, the width of the one-hot label input and of the output.
  It is fixed by training, so an episode may have fewer classes, never more: :meth:`check_data`
  refuses such data before anything runs (every split the stage reads), and
  :meth:`check_prediction_classes` such a prediction support set; nothing is checked again per batch.
* **episode orders**: the order of an episode's examples is an input, so it is drawn per episode
  from the episode's address (``order_seed``, split, index and, in training, epoch; see
  :mod:`lightning_meta.data.sequences`): the same sequence whatever its batch, process or resume, in
  training and evaluation alike.  A single task (``predict_task``) is read in the order test episode 0
  would be.  Without a shuffle the data module's class-by-class listing would be a label code.
* **an embedding in the right BatchNorm mode**: its BatchNorm layers keep running statistics
  (checked at construction); in training each episode is embedded on its own (BatchNorm over one
  episode, so an episode never depends on the others of its meta-batch); in ``eval()`` mode every image
  is embedded independently, so a whole batch goes in one pass.

Subclasses: :class:`~lightning_meta.algorithms.snail.SNAIL` (support sequence, then each query alone)
and :class:`~lightning_meta.algorithms.mann.MANN` (support and queries pooled into one stream).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.data.episodes import episode_generator
from lightning_meta.data.sequences import episode_permutations
from lightning_meta.errors import DATA_ARGS, MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.internals import is_norm_layer
from lightning_meta.models.backbone import build_module
from lightning_meta.models.norm import evaluation_mode, require_norm_statistics
from lightning_meta.tasks import TaskBatch

Split = Literal["train", "val", "test"]


class SequenceLearner(MetaLearner):
    """Base class of the learners that read an episode as a sequence (see the module docstring).

    A subclass implements :meth:`training_step` or :meth:`outer_backward` (or the per-task
    :meth:`training_objective`), :meth:`evaluate_task` (one task's query logits ``[M, ways]``, which
    ``predict_task`` and :meth:`probe` use) and, when it scores episodes otherwise than by their
    queries, :meth:`evaluate_tasks`; it reads sequences in :meth:`episode_orders`, embeds them with
    :meth:`embed_episodes` and codes labels with :meth:`label_inputs`.

    Args:
        ways: the label space: label slots of the one-hot label input and of the output (fixed by
            training; episodes may have fewer classes, never more).
        embedding: the embedding network, headless, with running BatchNorm statistics (or a
            ``{"class_path", "init_args"}`` dict); ``None``: the flattened inputs.
        Remaining arguments: see :class:`~lightning_meta.algorithms.base.MetaLearner`.

    Example::

        class LastLabel(SequenceLearner):        # predicts the label of the support's last example
            def evaluate_task(self, support_x, support_y, query_x, query_y):
                last = support_y[self.task_order(len(support_y), support_y.device)][-1]
                return self.label_inputs(last.expand(len(query_x)), torch.float32), None
    """

    evaluation_needs_grad = False
    has_batching_choice = False
    #: salt of the episode orders, with each episode's address
    order_seed: int = 0

    def __init__(self, ways: int, embedding: Optional[nn.Module] = None, **kwargs: Any):
        super().__init__(**kwargs)
        require_positive(MODEL_ARGS + "ways", ways)
        self.ways = ways
        self.embedding: Optional[nn.Module] = None if embedding is None else build_module(embedding)
        if self.embedding is not None:
            require_norm_statistics(self.embedding, running=True, field=MODEL_ARGS + "embedding",
                                    why="episodes are evaluated in eval() mode, each independently of its batch")

    # ------------------------------------------------------------------ the label space
    def label_inputs(self, labels: Tensor, dtype: torch.dtype) -> Tensor:
        """One-hot label inputs ``[..., ways]`` of ``labels [...]``; a label ``-1`` (none) is all zeros."""
        known = (labels >= 0).unsqueeze(-1).to(dtype)
        return F.one_hot(labels.clamp(min=0), self.ways).to(dtype) * known

    def check_data(self, datamodule: Any, split: str) -> None:
        """Fail before a stage runs when the ``split`` episodes cannot be read: regression targets,
        supervised training batches, more classes than the label space, inputs the model cannot take."""
        name = type(self).__name__
        if getattr(datamodule, "is_regression", False):
            raise ConfigurationError(f"{name} classifies, but {type(datamodule).__name__} serves regression tasks:"
                                     " use an image data module")
        if split == "train" and getattr(datamodule, "train_batches", "episodes") != "episodes":
            raise ConfigurationError(f"{name} trains on episodes read as sequences, not on supervised batches: set "
                                     f"{DATA_ARGS}train_batches: episodes")
        ways = datamodule.setting(split)[0]
        if ways > self.ways:
            prefix = "" if split == "train" else "test_"
            raise ConfigurationError(
                f"{DATA_ARGS}{prefix}ways={ways} exceeds {MODEL_ARGS}ways={self.ways}, the label space {name} reads"
                f" and predicts (fixed by training): set {prefix}ways <= {self.ways}, or train with"
                f" {MODEL_ARGS}ways >= {ways}")
        super().check_data(datamodule, split)

    def check_prediction_classes(self, support_x: Tensor, ways: int, source: str) -> None:
        """Refuse a support set of more classes than the label space, then check its images (:meth:`probe`)."""
        if ways > self.ways:
            raise ConfigurationError(
                f"{source} has {ways} classes but the label space of {type(self).__name__} has {self.ways}"
                f" ({MODEL_ARGS}ways, fixed by training): give at most {self.ways} classes, or train a model with"
                f" {MODEL_ARGS}ways >= {ways}")
        super().check_prediction_classes(support_x, ways, source)

    # ------------------------------------------------------------------ episode orders
    def episode_orders(self, batch: TaskBatch, size: int, split: Split) -> Tensor:
        """One permutation of ``range(size)`` per task of ``batch``, ``[B, size]``, a function of the task's
        address: ``order_seed``, ``split``, ``batch.index`` and, in training, the epoch (a batch without an
        index numbers its tasks from ``global_step * B`` in training, from 0 otherwise)."""
        training = split == "train"
        return episode_permutations(batch, size, self.order_seed, split,
                                    epoch=self.current_epoch if training else None,
                                    fallback_start=self.global_step * batch.num_tasks if training else 0)

    def task_order(self, size: int, device: torch.device) -> Tensor:
        """The order of a single task's ``size`` examples (``predict_task``): test episode 0's."""
        return torch.randperm(size, generator=episode_generator(self.order_seed, "test", 0)).to(device)

    def evaluation_split(self) -> Split:
        """The split an evaluation batch comes from: ``"val"`` while the Trainer validates (or sanity-checks),
        otherwise ``"test"`` (also for direct calls)."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer
            return "test"
        return "val" if trainer.validating or trainer.sanity_checking else "test"

    # ------------------------------------------------------------------ the embedding
    def embed(self, x: Tensor) -> Tensor:
        """Features ``[n, features]`` of inputs ``[n, ...]`` (flattened; the inputs themselves without an embedding)."""
        return (x if self.embedding is None else self.embedding(x)).flatten(1)

    def embed_episodes(self, x: Tensor) -> Tensor:
        """Features ``[G, T, features]`` of the examples ``x [G, T, ...]`` of ``G`` episodes: each episode on
        its own while a BatchNorm-style layer of the embedding is in training mode (statistics of one
        episode, and one running-statistics update per episode), otherwise all in one pass: every image
        is then embedded independently, so one pass gives the same features for a fraction of the calls
        (hundreds of small episodes per meta-batch make the per-episode calls the dearest part of a step)."""
        if self.embedding is not None and any(is_norm_layer(m) and m.training for m in self.embedding.modules()):
            return torch.stack([self.embed(episode) for episode in x])
        return self.embed(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def probe(self, x: Tensor) -> Tensor:
        """Logits of the inputs ``x`` read as one task (``x`` as support set, labelled ``0, 1, ...`` in turn,
        and as queries) in ``eval()`` mode: the forward pass that :meth:`check_data` and the prediction
        checks run."""
        labels = torch.arange(len(x), device=x.device) % self.ways
        with evaluation_mode(self):
            return self.evaluate_task(x, labels, x, labels)[0]
