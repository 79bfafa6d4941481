"""Per-episode evaluation results: mean and 95% confidence interval over episodes.

Few-shot results are reported as the mean over a fixed set of test episodes with a 95% confidence
interval, ``1.96 * std / sqrt(episodes)``.  :class:`EpisodeResults` keeps one row per episode (so
results can be written per episode and paired across algorithms) and gathers the rows of all
processes under DDP, as any torchmetrics ``Metric`` does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

if TYPE_CHECKING:
    from lightning_meta.data.sequences import LabelStream


def episode_scores(predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-episode loss and score of query predictions ``[B, M, C]`` against targets.

    Classification (integer targets ``[B, M]``): ``loss`` (cross-entropy) and ``acc`` (fraction
    correct).  Regression (float targets ``[B, M, D]``): ``loss`` and ``mse`` (the same number).
    """
    predictions = predictions.float()
    if targets.is_floating_point():
        mse = ((predictions - targets.float()) ** 2).flatten(1).mean(1)
        return {"loss": mse, "mse": mse}
    loss = F.cross_entropy(predictions.flatten(0, 1), targets.flatten(), reduction="none")
    acc = (predictions.argmax(-1) == targets).float().mean(1)
    return {"loss": loss.view(targets.shape).mean(1), "acc": acc}


def mean_and_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% confidence interval of the mean."""
    values = values.double()
    n = values.numel()
    if n == 0:
        return math.nan, math.nan
    mean = values.mean().item()
    if n < 2:
        return mean, 0.0
    return mean, 1.96 * values.std(unbiased=True).item() / math.sqrt(n)


class EpisodeResults(torchmetrics.Metric):
    """Named per-episode values (``acc``, ``loss``, ``acc_before``, ...) collected over an evaluation.

    Episodes may come in groups (``update(..., group=g)``: one per evaluation source of a multi-source data
    module, whose episode numbers restart in each); :meth:`summary` pools all episodes and
    :meth:`group_summaries` summarises each group.

    Example::

        results = EpisodeResults()
        results.update({"acc": torch.tensor([0.8, 0.6])}, index=torch.tensor([0, 1]))
        results.summary()      # {"acc": (0.7, 0.196), }
        results.rows()         # [{"episode": 0, "acc": 0.8}, {"episode": 1, "acc": 0.6}]
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.add_state("table", default=[], dist_reduce_fx="cat")
        self.add_state("episodes", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, values: dict[str, Tensor], index: Optional[Tensor] = None, group: int = 0) -> None:
        names = sorted(values)
        if self.names and names != self.names:
            raise ValueError(f"EpisodeResults got columns {names} after {self.names}")
        self.names = names
        column = torch.stack([values[name].detach().double().reshape(-1) for name in names], dim=1)
        if index is None:
            index = torch.full((column.shape[0],), -1, dtype=torch.long, device=column.device)
        self.table.append(column)
        self.episodes.append(index.to(column.device).long())
        self.groups.append(torch.full_like(self.episodes[-1], int(group)))

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor]:
        table, episodes, groups = self.table, self.episodes, self.groups
        if isinstance(table, list):  # not synced (single process) or nothing collected
            if not table:
                empty = torch.zeros(0, dtype=torch.long)
                return torch.zeros(0, len(self.names), dtype=torch.float64), empty, empty
            return torch.cat(table), torch.cat(episodes), torch.cat(groups)
        return table, episodes, groups

    def compute(self) -> dict[str, tuple[float, float]]:
        table = self._gathered()[0]
        return {name: mean_and_ci95(table[:, i]) for i, name in enumerate(self.names)}

    def group_summaries(self) -> dict[int, tuple[dict[str, tuple[float, float]], int]]:
        """``{group: ({name: (mean, ci95)}, episodes)}`` over each group's episodes (of all processes), in order."""
        with self.sync_context():
            table, _, groups = self._gathered()
        return {g: ({name: mean_and_ci95(table[groups == g, i]) for i, name in enumerate(self.names)},
                    int((groups == g).sum())) for g in groups.unique().tolist()}

    def summary(self) -> dict[str, tuple[float, float]]:
        """``{name: (mean, ci95)}`` over the episodes of all processes."""
        return self.compute()

    def rows(self) -> list[dict[str, float]]:
        """One dict per episode (of all processes), sorted by episode index (by ``group``, then episode, with
        ``group`` in each row, when there are several groups)."""
        with self.sync_context():
            table, episodes, groups = self._gathered()
        grouped = len(groups.unique()) > 1
        order = torch.argsort(episodes, stable=True)
        if grouped:
            order = order[torch.argsort(groups[order], stable=True)]
        return [
            {**({"group": int(groups[i])} if grouped else {}), "episode": int(episodes[i]),
             **{name: float(table[i, j]) for j, name in enumerate(self.names)}}
            for i in order.tolist()
        ]

    def count(self) -> int:
        """Episodes collected (of all processes)."""
        with self.sync_context():
            return int(self._gathered()[0].shape[0])


def mean_over_groups(summaries: Sequence[Mapping[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """The unweighted mean of several groups' ``{name: (mean, ci95)}`` (Meta-Dataset's average over sources),
    with the 95% CI of a mean of independent means, ``sqrt(sum ci95^2) / groups``."""
    names = [name for name in summaries[0] if all(name in summary for summary in summaries)]
    count = len(summaries)
    return {name: (sum(s[name][0] for s in summaries) / count,
                   math.sqrt(sum(s[name][1] ** 2 for s in summaries)) / count) for name in names}


#: the order in which :func:`format_summary` prints the usual results
SUMMARY_ORDER = ("acc_before", "acc", "mse_before", "mse", "loss")


def format_summary(stage: str, summary: dict[str, tuple[float, float]], episodes: int,
                   order: Sequence[str] = SUMMARY_ORDER,
                   is_fraction: Callable[[str], bool] = lambda name: name.startswith("acc"),
                   display_names: Optional[Mapping[str, str]] = None) -> str:
    """A one-line human summary; fractions (``is_fraction``, by default accuracies) in percent, others as
    they are; ``display_names`` renames values for the reader."""
    names = display_names or {}
    parts = []
    for name in order:
        if name not in summary:
            continue
        mean, ci = summary[name]
        label = f"{stage}/{names.get(name, name)}"
        if is_fraction(name):
            parts.append(f"{label} = {100 * mean:.2f}% ± {100 * ci:.2f}%")
        else:
            parts.append(f"{label} = {mean:.4f} ± {ci:.4f}")
    return f"{stage}: " + ", ".join(parts) + f" (95% CI over {episodes} episodes)"


def pixel_prototype_accuracy(batches: Iterable) -> Tensor:
    """Per-episode accuracy of the nearest class mean on raw pixels: the reference point of a data set.

    ``batches``: :class:`~lightning_meta.tasks.TaskBatch` es, e.g. a data module's ``test_dataloader()``
    (padding episodes, ``index < 0``, are skipped).  Any learner should beat this on the same episodes.

    Example::

        data.setup("test")
        pixels = pixel_prototype_accuracy(data.test_dataloader())    # [episodes]
        print(f"{pixels.mean():.1%}")
    """
    accuracies = []
    for batch in batches:
        keep = batch.index >= 0 if batch.index is not None else torch.ones(batch.num_tasks, dtype=torch.bool)
        ways = int(batch.support_y.max()) + 1
        prototypes = torch.stack([batch.support_x[:, batch.support_y[0] == c].mean(1) for c in range(ways)], 1)
        distances = ((batch.query_x.unsqueeze(2) - prototypes.unsqueeze(1)) ** 2).flatten(3).sum(-1)
        accuracies.append((distances.argmin(-1) == batch.query_y).float().mean(1)[keep])
    return torch.cat(accuracies)


def pixel_stream_accuracy(stream: "LabelStream", instances: Sequence[int] = (2, 3, 5, 10)) -> dict[str, Tensor]:
    """Per-stream accuracy of the nearest class mean of a stream's earlier labelled steps, on raw pixels:
    the reference point of a label-stream learner such as MANN.

    At step ``t`` each class already shown has a prototype, the mean of its instances at steps ``< t``
    (with their labels, which a stream learner sees one step later); the prediction is the nearest
    prototype in squared Euclidean distance.  Returns ``acc_inst{k}`` ``[B]``, the accuracy at the
    ``k``-th presentation of a class, for each ``k >= 2`` of ``instances`` that every stream holds (at the
    1st presentation the class has no prototype: nearest prototype cannot be right there, so no
    number is given for it).

    Example::

        stream = model.stream(batch, "test")                  # a MANN's streams of a TaskBatch
        pixel_stream_accuracy(stream)["acc_inst2"].mean()     # one labelled instance per class
    """
    x = stream.x.flatten(2).double()
    classes = F.one_hot(stream.y, int(stream.y.max()) + 1).double()                   # [B, T, C]
    earlier = torch.cumsum(classes, 1) - classes                                      # counts before t
    sums = torch.cumsum(classes.unsqueeze(-1) * x.unsqueeze(2), 1) - classes.unsqueeze(-1) * x.unsqueeze(2)
    prototypes = sums / earlier.clamp(min=1).unsqueeze(-1)                             # [B, T, C, D]
    distances = ((x.unsqueeze(2) - prototypes) ** 2).sum(-1).masked_fill(earlier == 0, float("inf"))
    correct = (distances.argmin(-1) == stream.y).double()
    return presentation_accuracy(correct, stream.presentation, [k for k in instances if k >= 2])


def presentation_accuracy(correct: Tensor, presentation: Tensor, instances: Sequence[int]) -> dict[str, Tensor]:
    """Per-stream ``acc_inst{k}`` ``[B]``: the mean of ``correct [B, T]`` over the steps where a class is
    shown for the ``k``-th time (``presentation [B, T]``, 1-based), for each ``k`` of ``instances`` that
    every stream holds (a ``k`` missing from some stream is left out)."""
    values = {}
    for k in instances:
        at_k = (presentation == k).double()
        count = at_k.sum(1)
        if bool((count > 0).all()):
            values[f"acc_inst{k}"] = (correct * at_k).sum(1) / count
    return values
