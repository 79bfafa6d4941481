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


def one_line_error(error: BaseException) -> tuple[Optional[str], int]:
    """The one-line report of an error that ends a CLI run, and the exit status; ``(None, 1)`` for an
    error that is not the user's to fix (a bug: its traceback is kept).

    A :class:`ConfigurationError` anywhere in the chain of causes (jsonargparse wraps the errors of
    the classes it instantiates while validating a config) and jsonargparse's own parsing errors
    are configuration errors (status 2); a non-finite loss or metric is a failed run (status 1).
    """
    from jsonargparse import ArgumentError

    seen: set[int] = set()
    cause: Optional[BaseException] = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConfigurationError):
            return f"configuration error: {single_line(str(cause))}", 2
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, ArgumentError):
        return f"configuration error: {argument_error_line(str(error))}", 2
    if isinstance(error, FloatingPointError):
        return f"error: {single_line(str(error))}", 1
    return None, 1


def single_line(message: str) -> str:
    return " ".join(message.split())


def argument_error_line(message: str) -> str:
    """jsonargparse's (often nested, multi-line) message as one line naming the field."""
    lines = [line.strip(" -") for line in message.strip().splitlines() if line.strip(" -")]
    return single_line("; ".join(lines)) if lines else "invalid arguments"
