"""Episodes: N-way K-shot tasks as the items of :class:`~lightning_meta.data.root.TaskDataModule`.

* Episode ``i`` of training epoch ``e`` is drawn from :func:`episode_generator` ``(seed, "train", i, e)``;
  validation and test episode ``i`` from ``(seed, split, i)``: a fixed set, identical whatever the
  meta-batch size, the number of workers or the number of processes.
* A meta-batch is ``B`` consecutive episodes, split across processes and padded in evaluation as the
  root data module splits any items (:func:`~lightning_meta.data.root.train_plan`,
  :func:`~lightning_meta.data.root.eval_plan`); a padding episode (index ``-1``) repeats episode 0.

Example::

    stream = EpisodeStream(ClassImages.from_array(x), "val", [[0, 1, 2, 3]], ways=5, shots=1, queries=15, seed=0)
    batch = stream.batch(0)            # TaskBatch of episodes 0..3, batch.index == [0, 1, 2, 3]
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch

from lightning_meta.data.root import ItemStream, item_generator
from lightning_meta.tasks import Task, TaskBatch

#: the generator of one episode: an episode is an item of the root data module
episode_generator = item_generator


class EpisodeSource(Protocol):
    """Anything that draws one N-way K-shot task from a seeded generator.

    ``num_classes`` and ``min_samples`` (the fewest samples of any class; ``None`` when unbounded,
    as for regression) let the data module reject impossible settings before training.
    """

    num_classes: int
    min_samples: Optional[int]

    def sample(self, generator: torch.Generator, ways: int, shots: int, queries: int) -> Task: ...


class EpisodeStream(ItemStream):
    """The meta-batches of one split for one rank, as :class:`TaskBatch` objects.

    ``plan[position]`` lists the episodes of batch ``position``; ``epoch`` is ``None`` for the fixed
    validation/test sets.
    """

    def __init__(
        self,
        source: EpisodeSource,
        split: str,
        plan: Sequence[Sequence[int]],
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        epoch: Optional[int] = None,
    ):
        super().__init__(plan, epoch)
        self.source, self.split = source, split
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed

    def episode(self, index: int) -> Task:
        generator = episode_generator(self.seed, self.split, max(index, 0), self.epoch)
        return self.source.sample(generator, self.ways, self.shots, self.queries)

    def batch(self, position: int) -> TaskBatch:
        indices = self.plan[position]
        return TaskBatch.stack([self.episode(i) for i in indices], index=indices)
