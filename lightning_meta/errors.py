"""Configuration errors that name the field and the fix, raised before training starts."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re
from typing import Any, Iterable, Optional, get_args

#: the prefixes of the model's and the data module's arguments, as a user writes them in a config
MODEL_ARGS = "model.init_args."
DATA_ARGS = "data.init_args."


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


def require_choice(field: str, value: Any, choices: Any) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is one of ``choices``: a ``Literal[...]`` type (as
    the argument is annotated, so the CLI checks it too) or an iterable of values.

    Example::

        Head = Literal["linear", "cosine"]
        require_choice(MODEL_ARGS + "head", head, Head)
    """
    options: Iterable[Any] = get_args(choices) or choices
    options = tuple(options)
    if value not in options:
        raise ConfigurationError(
            f"{field}={value!r} is unknown: choose one of {', '.join(str(o) for o in options)}")


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
        if type(cause).__name__ == "MisconfigurationException":  # Lightning's own refusals of a setting
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
    """jsonargparse's (nested, multi-line) message as one line that names the field and the fix."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    class_path = re.search(r"Problem with given class_path '([^']+)'", message)
    field = keys[0] if keys else ""
    if class_path and len(keys) > 1:
        field = f"{keys[0]}.init_args.{keys[1]}"
    option = re.search(r"Option '([^']+)' is not accepted", message)
    if option and class_path:
        name = option.group(1)
        close = difflib.get_close_matches(name, class_arguments(class_path.group(1)), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return (f"{keys[0]}.init_args.{name}: {class_path.group(1).rsplit('.', 1)[-1]} takes no argument {name!r}"
                f"{hint}; `fit --help` lists the arguments")
    literal = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)", message)
    if literal:  # the words of require_choice, which Python callers get
        choices = ", ".join(choice.strip(" '\"") for choice in literal.group(1).split(","))
        return f"{field}={literal.group(2).strip()!r} is unknown: choose one of {choices}"
    expected = re.search(r"Expected a <class '(\w+)'>\. Got value: (.*)", message)
    if expected:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
        return f"{field}: expected {kind.get(expected.group(1), expected.group(1))}, got {expected.group(2).strip()!r}"
    missing = re.search(r"Expected a path but (\S+) either not accessible or invalid", message)
    if missing:
        return (f"{field}: {missing.group(1)} is neither a class nor a file; give a class path such as"
                " lightning_meta.MAML (`lightning-meta list` shows them)")
    if "unrecognized arguments" in message:
        return f"{single_line(message)}: check the spelling; `fit --help` lists the options"
    lines = [line.strip(" -") for line in message.strip().splitlines() if line.strip(" -")]
    return single_line("; ".join(lines)) if lines else "invalid arguments"


def class_arguments(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` and its bases (``**kwargs`` passed up), or ``[]``."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in getattr(cls, "__mro__", ()):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break  # the arguments of the bases are not passed on
    return list(dict.fromkeys(names))
