"""Meta-Learner LSTM (Ravi & Larochelle 2017): an LSTM learns the learner's update rule and its initialisation."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.base import Batching, MetaLearner
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, optional_positive, require_positive
from lightning_meta.inner_loop import Params, Update, adapt, example_order, sub_params, supervised_loss
from lightning_meta.models.backbone import build_module
from lightning_meta.models.meta_lstm_cell import (
    CoordinateMetaLSTM,
    FlatLayout,
    MetaLSTMState,
    MetaLSTMUpdate,
    preprocess_gradient,
)
from lightning_meta.models.norm import require_norm_statistics


class MetaLearnerLSTM(MetaLearner):
    """Meta-Learner LSTM: a coordinate-wise LSTM trains the learner on each task's support set.

    The learner (a ``Conv4``) is run functionally through the inner-loop engine
    (``functional_call`` on a dict of fast weights; the module is never mutated).  Its parameters are
    flattened to a vector of ``n`` coordinates, which is the cell state of a two-layer LSTM
    (:class:`~lightning_meta.models.meta_lstm_cell.CoordinateMetaLSTM`) shared by all coordinates:

    * ``c_0`` is the learned initialisation: the learner module's own parameters (``backbone.*``), a
      meta-parameter like the LSTM weights;
    * each inner step computes the support loss ``L_t`` and gradient ``grad_t`` of the learner at
      ``c_{t-1}``, feeds ``[preprocess(L_t), preprocess(grad_t)]`` (:meth:`preprocess`, Andrychowicz
      et al.'s ``p = 10`` rule) to layer 1, and layer 2 writes ``c_t = f_t * c_{t-1} - i_t * grad_t``
      with learned forget and input gates (``f ~ 0.99``, ``i ~ 0.01`` at the start: the LSTM starts
      as SGD with a small learning rate, as in the paper);
    * the meta-loss is the query cross-entropy of the learner with the final parameters ``c_T``.

    **Dropped gradients (as the paper and its code do):** ``grad_t`` and ``L_t`` are inputs computed at
    ``c_{t-1}`` *detached*, so the meta-gradient ignores how they depend on the meta-parameters (no
    second derivatives of the learner).  It still flows through ``c_t``'s dependence on
    ``c_{t-1}``, ``f_t`` and ``i_t`` (hence through both LSTM layers and ``c_0``) and through the
    query loss at the end.  The meta-optimiser is Adam (``outer_lr``) with the gradient norm clipping
    of 0.25 of the paper (``gradient_clip_val``).

    BatchNorm in the learner uses the statistics of the batch it sees in the inner loop and at
    evaluation (``batch_norm_stats="batch"``), as the paper does at meta-test time; queries are
    predicted in one batch (transductive, as MAML's evaluation).  Evaluation returns the query
    predictions after ``test_inner_steps`` LSTM updates and before them (with ``c_0``).

    Differences from the authors' Lua code, deliberate: the layer-2 gates read the previous *gate
    values* ``f_{t-1}``, ``i_{t-1}`` (the paper's equations; the code feeds their pre-activations);
    the gate biases start at the midpoints of the code's U(4, 5) / U(-5, -4) (``forget_bias``,
    ``inner_lr`` = sigmoid of the input bias); the learner's gradient is that of the mean support
    loss (the code divides it once more by the batch size).

    Args:
        backbone: the learner, e.g. ``Conv4(3, 5, hidden_channels=32, pooling="max", image_size=84)``
            (or a ``{"class_path", "init_args"}`` dict).  BatchNorm must use batch statistics.
        inner_steps: LSTM updates per task in meta-training (authors' code: 12 for 5-way 1-shot, 8 for 5-shot).
        test_inner_steps: updates at validation, test and prediction (default: ``inner_steps``).
        inner_batch_size: support examples per update (``None``: the whole support set, as the
            authors' code for 5-way 1- and 5-shot).  Smaller batches walk the support set in order, cyclically.
        test_inner_batch_size: the same at evaluation (default: ``inner_batch_size``).
        hidden_size: layer 1's hidden size (20 in the paper).
        inner_lr: initial input gate ``sigmoid(b_i)``, the learning rate the LSTM starts with.
        forget_bias: initial forget gate bias ``b_f`` (``sigmoid(4.5) = 0.989``).
        init_range: LSTM weights start uniform in ``[-init_range, init_range]`` (0.01 in the code).
        preprocess_p: the ``p`` of the gradient/loss preprocessing (10 in both papers).
        gradient_clip_val: meta-gradient norm clipping (0.25 in the paper; ``None`` turns it off).
        batching: ``"loop"`` by default: the paper's meta-batch is one task and Conv4 runs slower vmapped
            on CPU (see :class:`~lightning_meta.algorithms.base.MetaLearner`).
        Remaining arguments (``outer_lr``: Adam's learning rate, 1e-3 as in the paper; ``chunk_size``,
        ``accumulate_grad_batches``): see :class:`~lightning_meta.algorithms.base.MetaLearner`.

    The learner is ``self.backbone`` (checkpoints from before it was renamed from ``learner`` load:
    :attr:`renamed_prefixes`); the inner loop runs through :func:`lightning_meta.inner_loop.adapt` with
    the LSTM as its update rule (:class:`~lightning_meta.models.meta_lstm_cell.MetaLSTMUpdate`).

    Hooks to override: :meth:`preprocess` (the input encoding), :meth:`lstm_inputs` (what layer 1
    reads), :meth:`inner_loss` (the support loss), :meth:`inner_update` (the update rule),
    :meth:`on_inner_step` (called after every update with the gates, e.g. to log them).

    References:
        Ravi, Larochelle. "Optimization as a Model for Few-Shot Learning." ICLR 2017.
        Andrychowicz et al. "Learning to learn by gradient descent by gradient descent." NeurIPS 2016.
        Authors' code: https://github.com/twitter-research/meta-learning-lstm

    Example::

        import pytorch_lightning as pl
        from lightning_meta.algorithms.meta_lstm import MetaLearnerLSTM
        from lightning_meta.data import MiniImageNetDataModule
        from lightning_meta.models import Conv4

        model = MetaLearnerLSTM(Conv4(3, 5, hidden_channels=32, pooling="max", image_size=84), inner_steps=12)
        data = MiniImageNetDataModule("data", ways=5, shots=1, queries=15, meta_batch_size=1)
        pl.Trainer(max_steps=75_000, inference_mode=False).fit(model, data)
    """

    renamed_prefixes = {"learner.": "backbone."}

    def __init__(
        self,
        backbone: nn.Module,
        inner_steps: int = 12,
        test_inner_steps: Optional[int] = None,
        inner_batch_size: Optional[int] = None,
        test_inner_batch_size: Optional[int] = None,
        hidden_size: int = 20,
        inner_lr: float = 0.011,
        forget_bias: float = 4.5,
        init_range: float = 0.01,
        preprocess_p: float = 10.0,
        gradient_clip_val: Optional[float] = 0.25,
        batching: Batching = "loop",
        **kwargs: Any,
    ):
        super().__init__(gradient_clip_val=gradient_clip_val, batching=batching, **kwargs)
        require_positive(MODEL_ARGS + "inner_steps", inner_steps)
        optional_positive(MODEL_ARGS + "test_inner_steps", test_inner_steps)
        optional_positive(MODEL_ARGS + "inner_batch_size", inner_batch_size)
        optional_positive(MODEL_ARGS + "test_inner_batch_size", test_inner_batch_size)
        require_positive(MODEL_ARGS + "hidden_size", hidden_size)
        require_positive(MODEL_ARGS + "inner_lr", inner_lr, integer=False)
        if inner_lr >= 1:
            raise ConfigurationError(
                f"{MODEL_ARGS}inner_lr={inner_lr!r} is invalid: it is the initial input gate sigmoid(b_i), which lies "
                "in (0, 1); the paper starts near 0.01")
        if not isinstance(forget_bias, (int, float)) or isinstance(forget_bias, bool) or not math.isfinite(forget_bias):
            raise ConfigurationError(f"{MODEL_ARGS}forget_bias={forget_bias!r} is invalid: it must be a finite number "
                                     "(the paper starts near 4.5, a forget gate of 0.99)")
        require_positive(MODEL_ARGS + "init_range", init_range, allow_zero=True, integer=False)
        require_positive(MODEL_ARGS + "preprocess_p", preprocess_p, integer=False)
        self.backbone = build_module(backbone)
        require_norm_statistics(self.backbone, running=False, field=MODEL_ARGS + "backbone",
                                why="the inner loop would update running statistics in place and mix them across "
                                    "tasks; the Meta-Learner LSTM normalises with batch statistics")
        self.layout = FlatLayout.of(self.backbone)
        if not self.layout.shapes:
            raise ConfigurationError(f"{MODEL_ARGS}backbone has no parameters for the Meta-Learner LSTM to train")
        self.update_rule = CoordinateMetaLSTM(input_size=4, hidden_size=hidden_size, forget_bias=forget_bias,
                                              input_bias=math.log(inner_lr / (1 - inner_lr)), init_range=init_range)
        self.inner_steps = inner_steps
        self.test_inner_steps = test_inner_steps or inner_steps
        self.inner_batch_size = inner_batch_size
        self.test_inner_batch_size = test_inner_batch_size or inner_batch_size
        self.preprocess_p = preprocess_p

    # ------------------------------------------------------------------ hooks
    def preprocess(self, x: Tensor) -> Tensor:
        """Andrychowicz et al.'s encoding ``x -> [..., 2]`` with ``p = preprocess_p`` (see
        :func:`~lightning_meta.models.meta_lstm_cell.preprocess_gradient`)."""
        return preprocess_gradient(x, self.preprocess_p)

    def lstm_inputs(self, grad: Tensor, loss: Tensor) -> Tensor:
        """Layer 1's input ``[n, 4]``: the preprocessed loss (the same for every coordinate) and gradient.

        An override that changes the width also replaces ``self.update_rule`` with a
        :class:`~lightning_meta.models.meta_lstm_cell.CoordinateMetaLSTM` of that ``input_size``.
        """
        encoded_loss = self.preprocess(loss.reshape(1)).expand(grad.shape[0], 2)
        return torch.cat([encoded_loss, self.preprocess(grad)], dim=-1)

    def inner_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The support loss the learner is trained on (cross-entropy)."""
        return self.loss(predictions, targets)

    def on_inner_step(self, step: int, loss: Tensor, state: MetaLSTMState) -> None:
        """Called after update ``step`` (0-based) with the support loss it descended and the new LSTM
        state (``state.forget`` / ``state.input``: the gates of every coordinate, ``[n]``).  No-op."""

    def inner_update(self, params: Params) -> Update:
        """The inner-loop update rule given the meta-parameters ``params`` (``named_parameters`` keys): the
        LSTM with the weights ``update_rule.*`` of ``params`` (passed functionally, so they get
        meta-gradients), reading :meth:`lstm_inputs`, then :meth:`on_inner_step`."""
        rule = MetaLSTMUpdate(self.update_rule, sub_params(params, "update_rule"), self.layout, self.lstm_inputs)

        def update(params: Params, grads: Params, loss: Tensor, state: Optional[MetaLSTMState],
                   step: int) -> tuple[Params, MetaLSTMState]:
            params, state = rule(params, grads, loss, state, step)
            self.on_inner_step(step, loss, state)
            return params, state

        return update

    # ------------------------------------------------------------------ the learner run functionally
    def forward_learner(self, params: Params, x: Tensor) -> Tensor:
        """The learner run with the weights ``params`` (no mutation)."""
        return functional_call(self.backbone, params, (x,))

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor, steps: int,
              batch_size: Optional[int]) -> Params:
        """Train the learner on the support set with ``steps`` LSTM updates.

        ``params`` holds the meta-parameters (``backbone.*`` = ``c_0`` and ``update_rule.*``); returns the
        learner's final weights ``c_T`` as a dict, differentiable w.r.t. them (see the class docstring
        for what the meta-gradient ignores: the engine's ``graph="first_order"``).  Update ``t`` takes
        the batch ``t`` of :func:`~lightning_meta.inner_loop.example_order` (no generator: the support set
        in order, cyclically).
        """
        order = example_order(support_x.shape[0], steps, batch_size).to(support_x.device)
        support_loss = supervised_loss(self.forward_learner, support_x, support_y, self.inner_loss,
                                       order.reshape(steps, -1))
        update = self.inner_update(params)
        # c_0 in the memory layout every later update gives the weights, so that each update runs the same kernels
        start = self.layout.unflatten(self.layout.flatten(sub_params(params, "backbone")))
        return adapt(support_loss, start, steps, update, "first_order", self.inner_loss_scale)[-1]

    # ------------------------------------------------------------------ the MetaLearner contract
    def training_objective(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor) -> tuple[Tensor, Tensor]:
        final = self.adapt(params, support_x, support_y, self.inner_steps, self.inner_batch_size)
        predictions = self.forward_learner(final, query_x)
        return self.loss(predictions, query_y), predictions

    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, Tensor]:
        params = {name: p.detach() for name, p in self.named_parameters()}
        final = self.adapt(params, support_x, support_y, self.test_inner_steps, self.test_inner_batch_size)
        after = self.forward_learner({k: v.detach() for k, v in final.items()}, query_x).detach()
        before = self.forward_learner(sub_params(params, "backbone"), query_x).detach()
        return after, before

    def probe(self, x: Tensor) -> Union[Tensor, None]:
        return self.backbone(x)
