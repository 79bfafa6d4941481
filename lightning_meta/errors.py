"""Configuration errors that name the field and the fix, raised before training starts."""

from __future__ import annotations

import math
from typing import Any, Optional


class ConfigurationError(ValueError):
    """A setting that cannot work, found before any training or decoding.

    The message names the field as a user sets it (``data.init_args.ways``) and says what to do.
    """


def require_positive(field: str, value: Any, *, allow_zero: bool = False, integer: bool = True) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is a positive (or non-negative) number."""
    kind = "an integer" if integer else "a finite number"
    numeric = (int,) if integer else (int, float)
    valid = isinstance(value, numeric) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or (value < 0 if allow_zero else value <= 0):
        need = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{field}={value!r} is invalid: it must be {kind} {need}")


def optional_positive(field: str, value: Optional[Any], **kwargs: Any) -> None:
    if value is not None:
        require_positive(field, value, **kwargs)
