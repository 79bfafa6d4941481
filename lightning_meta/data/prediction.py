"""Prediction on new classes: a support folder of class sub-folders and a folder of query images.

* ``support_dir/<class>/<image>``: the labelled examples of the new classes; class names are the
  folder names, sorted, and class ``c`` is the ``c``-th of them;
* ``query_dir/<image>`` (sub-folders allowed): the images to classify, in sorted path order; generators
  (FIGR), which adapt to the support folder alone, take no query folder (:func:`read_support_set`).

:func:`read_prediction_set` lists both folders, checks every image's header against the data
module's :class:`~lightning_meta.data.preprocessing.ImagePreprocessing` (size and channels where it
does not resize or convert), then decodes them exactly as the module decodes its training images.
Every problem is a :class:`~lightning_meta.errors.ConfigurationError` naming
``data.init_args.support_dir`` or ``data.init_args.query_dir``, raised before any model runs.

Example::

    data = OmniglotDataModule("data", image_size=28)          # the data module of the training config
    rows = predict_folders(model, data, "my_support", "my_queries")
    rows[0]      # {"query": "a.png", "prediction": "cat", "p_cat": 0.91, "p_dog": 0.09}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from lightning_meta.data.image_files import GREY_MODES, IMAGE_EXTENSIONS, ImageHeaders, list_class_folders
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.errors import DATA_ARGS, ConfigurationError
from lightning_meta.tasks import PredictionBatch

SUPPORT, QUERY = "support_dir", "query_dir"


@dataclass
class PredictionSet:
    """One task to predict: decoded support and query images, and the names of classes and queries.

    ``support_y`` holds class indices into ``class_names``; ``query_files`` are the query paths
    relative to ``query_dir`` (as written to the CSV), in the order of ``query_x``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    class_names: list[str]
    query_files: list[str]

    @property
    def ways(self) -> int:
        return len(self.class_names)

    def batch(self) -> PredictionBatch:
        """The task as a one-task :class:`~lightning_meta.tasks.PredictionBatch` (placeholder query labels)."""
        placeholder = torch.zeros(len(self.query_x), dtype=torch.long)
        return PredictionBatch(self.support_x[None], self.support_y[None], self.query_x[None], placeholder[None],
                               index=torch.zeros(1, dtype=torch.long), class_names=[list(self.class_names)],
                               query_files=[list(self.query_files)])


# --------------------------------------------------------------------------- listing
def require_folder(field_name: str, value: Optional[str]) -> Path:
    """``value`` as an existing folder, or an error naming ``data.init_args.<field_name>``."""
    what = "class sub-folders of support images" if field_name == SUPPORT else "query images"
    if not value:
        raise ConfigurationError(
            f"{DATA_ARGS}{field_name} is not set: predict needs a folder of {what}; pass"
            f" --data.init_args.{field_name} PATH (support_dir: <class>/<image> per class; query_dir: images to"
            " classify)")
    folder = Path(value).expanduser()
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ConfigurationError(
            f"{DATA_ARGS}{field_name}={value!r}: {folder.resolve()} {state}: point --data.init_args.{field_name} at a"
            f" folder of {what}")
    return folder


def list_query_images(folder: Path, value: str) -> list[Path]:
    """Image files under ``folder`` (sub-folders included, hidden entries left out), by sorted relative path."""
    found = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found.extend(Path(parent) / name for name in files
                     if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise ConfigurationError(
            f"{DATA_ARGS}{QUERY}={value!r}: {folder.resolve()} holds no images ({', '.join(IMAGE_EXTENSIONS)}): put the"
            f" images to classify there (sub-folders allowed), or point --data.init_args.{QUERY} at them")
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


# --------------------------------------------------------------------------- checks
def check_headers(paths: Sequence[Path], preprocessing: ImagePreprocessing, field_name: str, value: str,
                  module: str) -> None:
    """Refuse images the module would not have taken in training: another size where it does not
    resize, another number of channels where it does not convert (read from the headers only)."""
    if preprocessing.resizes and preprocessing.converts_channels:
        return
    headers = ImageHeaders.read(paths)
    for path, size, mode in zip(headers.paths, headers.sizes, headers.modes):
        expected = preprocessing.stored_size
        if not preprocessing.resizes and expected is not None and tuple(size) != tuple(expected):
            raise ConfigurationError(
                f"{DATA_ARGS}{field_name}={value!r}: {path} is {size[0]}x{size[1]} but the model was trained on"
                f" {expected[0]}x{expected[1]} images and {module} does not resize them (no image_size): resize"
                f" every support and query image to {expected[0]}x{expected[1]}")
        grey = mode in GREY_MODES
        if not preprocessing.converts_channels and grey != (preprocessing.channels == 1):
            kind, need = ("greyscale", "colour (RGB)") if grey else ("colour", "greyscale")
            raise ConfigurationError(
                f"{DATA_ARGS}{field_name}={value!r}: {path} is {kind} (PIL mode {mode}) but the model was trained on"
                f" {preprocessing.channels}-channel images and {module} does not convert them: save every support"
                f" and query image as {need}")


# --------------------------------------------------------------------------- reading
def read_prediction_set(support_dir: Optional[str], query_dir: Optional[str], preprocessing: ImagePreprocessing,
                        module: str = "the data module", needs_queries: bool = True) -> PredictionSet:
    """List, check and decode ``support_dir`` and ``query_dir`` with the module's preprocessing.

    ``needs_queries=False`` (generators, which adapt to the support folder alone): ``query_dir`` may be
    unset, and the set then has no queries (``query_x`` of length 0)."""
    support_folder = require_folder(SUPPORT, support_dir)
    classes = list_class_folders(support_folder, SUPPORT, support_dir)
    check_headers(classes.flat(), preprocessing, SUPPORT, support_dir, module)
    support_x = preprocessing.load(classes.flat())
    support_y = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(classes.counts))
    if query_dir is None and not needs_queries:
        return PredictionSet(support_x=support_x, support_y=support_y, query_x=support_x[:0],
                             class_names=list(classes.names), query_files=[])
    query_folder = require_folder(QUERY, query_dir)
    queries = list_query_images(query_folder, query_dir)
    check_headers(queries, preprocessing, QUERY, query_dir, module)
    return PredictionSet(
        support_x=support_x, support_y=support_y, query_x=preprocessing.load(queries),
        class_names=list(classes.names), query_files=[p.relative_to(query_folder).as_posix() for p in queries])


def read_support_set(support_dir: Optional[str], preprocessing: ImagePreprocessing,
                     module: str = "the data module") -> PredictionSet:
    """A support folder alone (``support_dir/<class>/<image>``), for generators: the classes to generate.

    Example::

        task = read_support_set("my_glyphs", NpzDataModule("hanzi").preprocessing())
        task.class_names, task.support_x.shape           # ["a", "b"], (8, 1, 28, 28)
    """
    return read_prediction_set(support_dir, None, preprocessing, module, needs_queries=False)


# --------------------------------------------------------------------------- results
def prediction_rows(probabilities: Tensor, class_names: Sequence[str], query_files: Sequence[str]) -> list[dict]:
    """One row per query: ``query``, ``prediction`` (the most probable class name), ``p_<class>`` for each class."""
    probabilities = probabilities.detach().float().cpu()
    if probabilities.shape != (len(query_files), len(class_names)):
        raise ValueError(f"probabilities of shape {tuple(probabilities.shape)} do not match {len(query_files)} queries"
                         f" x {len(class_names)} classes")
    best = probabilities.argmax(1).tolist()
    rows = []
    for query, p, b in zip(query_files, probabilities.tolist(), best):
        row: dict[str, Any] = {"query": query, "prediction": class_names[b]}
        row.update({f"p_{name}": value for name, value in zip(class_names, p)})
        rows.append(row)
    return rows


def predict_folders(model: Any, datamodule: Any, support_dir: Optional[str] = None,
                    query_dir: Optional[str] = None) -> list[dict]:
    """Classify the images of ``query_dir`` among the classes of ``support_dir`` in one call.

    ``datamodule`` is the (image) data module the model was trained with: it decodes the images
    as in training; its own ``support_dir`` / ``query_dir`` are used when these are not given.
    Returns :func:`prediction_rows` (the rows of the CSV of ``python -m lightning_meta predict``).
    """
    support_dir = support_dir if support_dir is not None else getattr(datamodule, "support_dir", None)
    query_dir = query_dir if query_dir is not None else getattr(datamodule, "query_dir", None)
    task = read_prediction_set(support_dir, query_dir, datamodule.preprocessing(), type(datamodule).__name__)
    model.check_prediction_classes(task.support_x, task.ways, f"{DATA_ARGS}{SUPPORT}={support_dir!r}")
    probabilities = model.predict_task(task.support_x, task.support_y, task.query_x)
    return prediction_rows(probabilities, task.class_names, task.query_files)
