"""The data settings a checkpoint was trained with, and the check that a new config decodes images the same way.

LightningCLI rebuilds the model from a checkpoint's hyper-parameters but the data module from the
config given on the command line: a model evaluated through another data config would silently see
other pixels (inverted, resized, standardised).  Every checkpoint therefore carries the data
module's arguments (``datamodule_hyper_parameters``) and how it decoded images
(``data_decoding``, from :meth:`~lightning_meta.data.EpisodicDataModule.preprocessing`).
``test``/``validate``/``predict`` refuse a data config that decodes differently, naming each field;
other differing arguments (more test episodes, other ways) are listed and allowed.

Example::

    checkpoint = torch.load("runs/x/abc/checkpoints/best.ckpt", weights_only=True)
    compare_with_checkpoint(checkpoint, datamodule, "test", "best.ckpt")     # raises ConfigurationError
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lightning_meta.errors import ConfigurationError

#: what decides the pixels a model sees: ImagePreprocessing fields, with the size a model gets
DECODING_FIELDS = ("channels", "size", "invert", "mean", "std")
DECODING_KEY = "data_decoding"
HPARAMS_KEY = "datamodule_hyper_parameters"
#: arguments that only say where data live or how many episodes are drawn: never worth a notice
IGNORED_ARGUMENTS = ("_instantiator", "root", "path", "download", "num_workers", "support_dir", "query_dir")


def decoding_settings(datamodule: Any) -> Optional[dict[str, Any]]:
    """How ``datamodule`` turns images into model inputs (``None`` for data that are not images)."""
    preprocessing = getattr(datamodule, "preprocessing", None)
    if preprocessing is None or getattr(datamodule, "is_regression", False):
        return None
    try:
        settings = asdict(preprocessing())
    except (ConfigurationError, OSError, NotImplementedError):
        return None
    stored = settings.get("stored_size")
    settings["size"] = settings["image_size"] or (None if stored is None else max(stored))
    return {name: _plain(settings[name]) for name in DECODING_FIELDS}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def decoding_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: training value -> this config's value`` for each decoding field that differs."""
    return [f"{name}: {saved.get(name)!r} in training, {current.get(name)!r} here"
            for name in DECODING_FIELDS if saved.get(name) != current.get(name)]


def compare_with_checkpoint(checkpoint: dict[str, Any], datamodule: Any, stage: str, path: str) -> None:
    """Refuse (``test``/``validate``/``predict``) or warn (``fit``) when ``datamodule`` decodes images
    otherwise than the data module that wrote ``checkpoint``; list other differing arguments."""
    if datamodule is None:
        return
    saved_decoding = checkpoint.get(DECODING_KEY)
    current = decoding_settings(datamodule)
    if saved_decoding and current:
        differences = decoding_differences(saved_decoding, current)
        if differences:
            message = (f"data: {type(datamodule).__name__} would decode images otherwise than the data the checkpoint"
                       f" {path} was trained on ({'; '.join(differences)}): the model would see other pixels. Use"
                       " the training run's config.yaml (in its run folder), or set these data arguments to the"
                       " training values")
            if stage == "fit":
                rank_zero_warn(message)
            else:
                raise ConfigurationError(message)
    saved_hparams = checkpoint.get(HPARAMS_KEY) or {}
    current_hparams = dict(getattr(datamodule, "hparams", {}) or {})
    changed = sorted(name for name in set(saved_hparams) & set(current_hparams)
                     if name not in IGNORED_ARGUMENTS and saved_hparams[name] != current_hparams[name])
    if changed:
        listed = ", ".join(f"{name}={current_hparams[name]!r} (training: {saved_hparams[name]!r})" for name in changed)
        note = f"data.init_args differ from the checkpoint's training run: {listed}"
        (rank_zero_warn if stage == "fit" else rank_zero_info)(note)
