"""Prediction from a support set: one task's labelled examples in, class probabilities of its queries out.

What :meth:`MetaLearner.predict_task <lightning_meta.algorithms.base.MetaLearner.predict_task>` (Python)
and ``python -m lightning_meta predict`` do, for any episodic classifier: one call, no training loop.
Learners that adapt with gradients adapt on the support set, metric learners summarise it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_meta.errors import MODEL_ARGS, ConfigurationError

if TYPE_CHECKING:
    from lightning_meta.algorithms.base import MetaLearner


def support_set_ways(support_y: Tensor) -> int:
    """The number of classes of a support set, checking its labels are ``0..N-1`` with each present."""
    if support_y.is_floating_point() or support_y.dim() != 1 or support_y.numel() == 0:
        raise ValueError(f"support labels must be a non-empty 1-D tensor of class indices, got "
                         f"{tuple(support_y.shape)} {support_y.dtype} (prediction classifies; no regression)")
    ways = int(support_y.max()) + 1
    missing = sorted(set(range(ways)) - set(support_y.unique().tolist()))
    if missing or int(support_y.min()) < 0:
        raise ValueError(f"support labels must cover every class 0..{ways - 1} at least once; missing {missing}")
    return ways


def predict_task(learner: "MetaLearner", support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
    """Class probabilities ``[M, ways]`` of ``query_x`` given a labelled support set, the learner in
    ``eval()`` mode for the call (then restored), inputs moved to its device."""
    ways = support_set_ways(support_y)
    if len(support_x) != len(support_y):
        raise ValueError(f"{len(support_x)} support images but {len(support_y)} support labels")
    if query_x.shape[1:] != support_x.shape[1:]:
        raise ValueError(f"query images of shape {list(query_x.shape[1:])} differ from the support images'"
                         f" {list(support_x.shape[1:])}")
    support_x, support_y, query_x = (t.to(learner.device) for t in (support_x, support_y, query_x))
    learner.check_prediction_classes(support_x, ways, "the support set")
    training = learner.training
    learner.eval()
    try:
        return task_probabilities(learner, support_x, support_y, query_x, ways)
    finally:
        learner.train(training)


def task_probabilities(learner: "MetaLearner", support_x: Tensor, support_y: Tensor, query_x: Tensor,
                       ways: int) -> Tensor:
    """:meth:`evaluate_task`'s query predictions as probabilities over ``ways`` classes (gradients enabled
    for learners that adapt with them, refused under inference mode)."""
    name = type(learner).__name__
    if support_y.is_floating_point():
        raise ValueError(f"{name}: prediction classifies; float support targets mean regression")
    needs_grad = learner.evaluation_needs_grad
    if needs_grad and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{name} adapts to the support set with gradients, which inference mode forbids: build the Trainer with"
            " inference_mode=False (the lightning-meta CLI does this by default) and do not call predict_task under"
            " torch.inference_mode()")
    placeholder = torch.zeros(len(query_x), dtype=torch.long, device=query_x.device)
    with torch.enable_grad() if needs_grad else torch.no_grad():
        predictions, _ = learner.evaluate_task(support_x, support_y, query_x, placeholder)
    return learner.prediction_probabilities(predictions.detach(), ways)


def check_prediction_classes(learner: "MetaLearner", support_x: Tensor, ways: int, source: str) -> None:
    """Fail before predicting when the learner cannot take these images or output ``ways`` classes.

    Runs the learner's ``probe`` on the support images (learners whose output does not fix a number of
    classes, such as metric learners, return ``None`` and take any number).
    """
    try:
        with torch.no_grad():
            output = learner.probe(support_x.to(learner.device))
    except RuntimeError as error:
        raise ConfigurationError(
            f"{source}: the model cannot take images of shape {list(support_x.shape[1:])}: {error}. Give images"
            " decoded as the training images were (the data module of the training config does this)") from error
    if output is not None and output.shape[-1] < ways:
        raise ConfigurationError(
            f"{source} has {ways} classes but the model outputs {output.shape[-1]} (its classifier head,"
            f" {MODEL_ARGS}backbone.init_args.out_features, is fixed by training): give at most"
            f" {output.shape[-1]} classes, or train a model with out_features >= {ways}")
