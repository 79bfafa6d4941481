"""Episodes: N-way K-shot tasks as the items of :class:`~lightning_meta.data.root.TaskDataModule`.

* Episode ``i`` of training epoch ``e`` is drawn from :func:`episode_generator` ``(seed, "train", i, e)``;
  validation and test episode ``i`` from ``(seed, split, i)``: a fixed set, identical whatever the
  meta-batch size, the number of workers or the number of processes.
* A meta-batch is ``B`` consecutive episodes, split across processes and padded in evaluation as the
  root data module splits any items (:func:`~lightning_meta.data.root.train_plan`,
  :func:`~lightning_meta.data.root.eval_plan`); a padding episode (index ``-1``) repeats episode 0.
* A training stream may augment its episodes (``augment``, an
  :class:`~lightning_meta.data.augmentation.EpisodeAugmentation`): each episode's augmentation is drawn
  from its own generator after its classes and samples, so it is addressable too.

Example::

    stream = EpisodeStream(ClassImages.from_array(x), "val", [[0, 1, 2, 3]], ways=5, shots=1, queries=15, seed=0)
    batch = stream.batch(0)            # TaskBatch of episodes 0..3, batch.index == [0, 1, 2, 3]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import torch

from lightning_meta.data.root import ItemStream, item_generator, item_generators
from lightning_meta.tasks import Task, TaskBatch

if TYPE_CHECKING:
    from lightning_meta.data.augmentation import EpisodeAugmentation

#: the generator of one episode: an episode is an item of the root data module
episode_generator = item_generator
#: the generators of several episodes of a split, hashed together
episode_generators = item_generators


class EpisodeSource(Protocol):
    """Anything that draws one N-way K-shot task from a seeded generator.

    ``num_classes`` and ``min_samples`` (the fewest samples of any class; ``None`` when unbounded,
    as for regression) let the data module reject impossible settings before training.  A source may
    also draw a whole meta-batch at once, ``sample_batch(generators, ways, shots, queries) -> TaskBatch``
    (the tasks ``sample`` would draw from each generator, stacked): :meth:`EpisodeStream.batch` uses it.
    A source that can augment its episodes takes ``augment=`` in ``sample_batch`` and says so with
    ``supports_augmentation = True`` (:class:`~lightning_meta.data.ClassImages` does).
    """

    num_classes: int
    min_samples: Optional[int]

    def sample(self, generator: torch.Generator, ways: int, shots: int, queries: int) -> Task: ...


class EpisodeStream(ItemStream):
    """The meta-batches of one split for one rank, as :class:`TaskBatch` objects.

    ``plan[position]`` lists the episodes of batch ``position``; ``epoch`` is ``None`` for the fixed
    validation/test sets; ``augment`` (training streams only) augments every episode.
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
        augment: Optional["EpisodeAugmentation"] = None,
    ):
        super().__init__(plan, epoch)
        self.source, self.split, self.augment = source, split, augment
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed

    def batch(self, position: int) -> TaskBatch:
        """The episodes ``plan[position]``, each drawn from its own generator: in one call of the source's
        ``sample_batch`` when it has one (``ClassImages``: the images of all episodes selected together),
        otherwise by ``sample`` per episode."""
        indices = self.plan[position]
        generators = episode_generators(self.seed, self.split, [max(i, 0) for i in indices], self.epoch)
        sample_batch = getattr(self.source, "sample_batch", None)
        if sample_batch is None:
            return TaskBatch.stack([self.source.sample(g, self.ways, self.shots, self.queries) for g in generators],
                                   index=indices)
        if self.augment is None:
            batch = sample_batch(generators, self.ways, self.shots, self.queries)
        else:
            batch = sample_batch(generators, self.ways, self.shots, self.queries, augment=self.augment)
        # a source of variable-size episodes may serve fewer tasks than asked (the first, alone)
        batch.index = torch.as_tensor(indices[:batch.num_tasks], dtype=torch.long)
        return batch
