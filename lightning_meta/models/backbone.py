"""The base class of lightning-meta's models: ``features`` then ``head``, constructor arguments recorded.

Every model is ``head(features(x))``: ANIL adapts the head on features computed once per task and
metric learners use the features alone.  The constructor arguments are recorded in ``init_args``
so a meta-learner can save its backbone as a primitive ``{"class_path", "init_args"}`` entry in its
hyper-parameters (checkpoints reload with ``weights_only=True``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Mapping, Optional, Union

from torch import Tensor, nn


class Backbone(nn.Module):
    """A network split into ``features`` (a module) and ``head`` (a module).

    Example::

        class TinyNet(Backbone):
            def __init__(self, out_features: int = 5):
                super().__init__()
                self.features = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU())
                self.head = nn.Linear(64, out_features)

        TinyNet(3).init_args      # {"out_features": 3}
    """

    features: nn.Module
    head: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: "Backbone", *args: Any, **kw: Any) -> None:
            if not hasattr(self, "_recording"):
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop("self")
                object.__setattr__(self, "_recording", arguments)
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    @property
    def init_args(self) -> dict[str, Any]:
        return dict(getattr(self, "_recording", {}))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def linear_head(width: int, out_features: Optional[int]) -> nn.Module:
    """The output layer: ``Linear(width, out_features)``, or ``Identity`` when ``out_features`` is
    ``None`` (an embedding network for metric learners, whose output is the ``width`` features)."""
    if out_features is None:
        return nn.Identity()
    if out_features < 1:
        raise ValueError(f"out_features must be positive (or None for an embedding network), got {out_features}")
    return nn.Linear(width, out_features)


def module_spec(module: nn.Module) -> Union[dict[str, Any], None]:
    """``{"class_path", "init_args"}`` for a :class:`Backbone` with primitive arguments, else None."""
    if not isinstance(module, Backbone):
        return None
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in module.init_args.items()}
    if not all(_is_primitive(v) for v in args.values()):
        return None
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}


def build_module(spec: Union[nn.Module, Mapping[str, Any]]) -> nn.Module:
    """The module itself, or a new one from a ``{"class_path", "init_args"}`` mapping."""
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise TypeError(f"expected an nn.Module or a {{'class_path', 'init_args'}} mapping, got {spec!r}")
    module_name, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls(**dict(spec.get("init_args", {})))


def _is_primitive(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_primitive(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_primitive(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))
