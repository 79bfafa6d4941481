"""What a network takes and gives: its input shape (declared or given) and the width of its features.

Learners that put their own layers after a user's network (DANN's classifiers, MANN's controller,
SNAIL's sequence model, the fine-tuning baselines' heads) size them from one ``eval()`` forward pass
on zeros, so the network's running statistics do not move.  Errors name the configuration field.

Example::

    shape = input_shape_of(Conv4(1, None, image_size=28), None, "model.init_args.embedding")   # [1, 28, 28]
    width = feature_width(Conv4(1, None, image_size=28), shape, "model.init_args.embedding")   # 64
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_meta.errors import ConfigurationError


def declared_input_shape(module: Optional[nn.Module], default_image_size: Optional[int] = None) -> Optional[list[int]]:
    """``[C, H, W]`` from the module's recorded ``in_channels`` and ``image_size`` (or ``default_image_size``),
    ``[in_features]`` from ``in_features``; ``None`` when it does not say."""
    args = getattr(module, "init_args", {})
    if "in_features" in args:
        return [int(args["in_features"])]
    size = args.get("image_size", default_image_size)
    if "in_channels" in args and size is not None:
        return [int(args["in_channels"]), int(size), int(size)]
    return None


def input_shape_of(module: Optional[nn.Module], input_shape: Optional[Sequence[int]], field: str,
                   dims: Optional[int] = None) -> list[int]:
    """``input_shape`` checked (``dims`` entries if given, all positive), or the module's declared shape.

    ``field``: the configuration field of the module (``model.init_args.embedding``); the error for a
    missing shape names ``input_shape`` beside it.
    """
    owner = field.rsplit(".", 1)[0]
    if input_shape is not None:
        shape = [int(s) for s in input_shape]
        if not shape or min(shape) < 1 or (dims is not None and len(shape) != dims):
            raise ConfigurationError(f"{owner}.input_shape={list(input_shape)!r} is invalid: give the input shape"
                                     " [C, H, W] (or [features]), all > 0")
        return shape
    declared = declared_input_shape(module)
    if declared is not None and (dims is None or len(declared) == dims):
        return declared
    what = "raw inputs" if module is None else f"{field} ({type(module).__name__}), which does not say its in_channels" \
                                               " and image_size,"
    raise ConfigurationError(f"{owner}.input_shape is needed for {what}: give [C, H, W], e.g. [1, 28, 28] for"
                             " Omniglot")


def feature_width(module: Optional[nn.Module], input_shape: Sequence[int], field: str,
                  forward: Optional[Callable[[Tensor], Tensor]] = None) -> int:
    """The width of ``forward(zeros(2, *input_shape))`` (default: the module), which must be ``[2, width]``."""
    forward = forward or module
    training = module.training if module is not None else False
    if module is not None:
        module.eval()  # a forward in training mode would move the running statistics
    try:
        with torch.no_grad():
            features = forward(torch.zeros(2, *input_shape))
    except RuntimeError as error:
        raise ConfigurationError(f"{field} cannot take inputs of shape {list(input_shape)}: {error}") from error
    finally:
        if module is not None:
            module.train(training)
    if features.dim() != 2:
        raise ConfigurationError(f"{field} returns {list(features.shape[1:])} per input; it must return a vector of"
                                 " features (e.g. Conv4 with out_features: null)")
    return int(features.shape[1])


def infer_feature_dim(module: nn.Module, field: str = "model.init_args.backbone") -> int:
    """The width of ``module``'s flattened output, from one ``eval()`` forward pass on zeros shaped by its
    recorded ``in_features`` or ``in_channels`` and ``image_size`` (84 when unrecorded)."""
    shape = declared_input_shape(module, default_image_size=84)
    if shape is None:
        owner = field.rsplit(".", 1)[0]
        raise ConfigurationError(f"cannot infer the width of the {type(module).__name__} features ({field}): set"
                                 f" {owner}.feature_dim")
    return feature_width(module, shape, field, forward=lambda x: module(x).flatten(1))
