"""Multi-source episodes (Triantafillou et al. 2020, Meta-Dataset): each episode from one of several data sets.

:class:`MultiSourceDataModule` takes a list of named *sources*, each an
:class:`~lightning_meta.data.EpisodicDataModule` config (any image data module: Omniglot, mini-ImageNet,
an ``.npz``, CUB, ...); it loads each source's splits and

* **trains** on episodes each drawn from one source, chosen by ``weights`` (uniform by default) from
  the episode's own generator: the episode's address decides its source, so DDP, workers and resume
  stay exact.  Each source's ``augment`` applies to its training episodes;
* **evaluates per source**: one validation (and test) loader per source, its fixed episodes from that
  source alone, logged as ``val/<source>/acc`` and ``val/<source>/acc_ci95`` (``test/...`` alike), and
  ``val/acc`` (``test/acc``) the unweighted mean over the sources, Meta-Dataset's average, on which
  model selection (``BestCheckpoint``) runs.

**Episode sizes.** Fixed ways, shots and queries (the module's own ``ways``/``shots``/``queries``,
``test_*``) are the default: all sources' episodes stack into meta-batches as usual.
``variable_episodes: true`` draws each episode as Meta-Dataset's sampler does
(``meta_dataset/data/sampling.py``; :func:`variable_episode`): ways uniform in ``[min_ways, min(max_ways,
classes)]``; queries per class ``min(max_query, half the smallest chosen class)``; a support set size
``min(max_support, sum_c ceil(beta * min(max_support_per_class, n_c - queries)))`` with ``beta``
uniform; shots per class proportional to ``n_c * exp(u_c)``, ``u_c`` uniform in ``[log 0.5, log 2]``, at
least one, at most ``n_c - queries``: classes get *unequal* shots.  Such episodes do not stack, so they
are batched **one episode per process per step** (``meta_batch_size`` must equal the number of processes,
as Meta-Dataset trains on one episode a step); average more episodes per update with
``model.init_args.accumulate_grad_batches``.  Learners that pool support embeddings by label
(ProtoNet's ``index_add`` prototypes) or take a loss over the support set (MAML) handle unequal shots;
validation and test episodes are variable too (Meta-Dataset's evaluation).

All sources must give images of one shape (Meta-Dataset resizes every source to 84x84: set each
source's ``image_size``).  Each source's own ``ways``/``shots``/``queries``/``meta_batch_size``/``seed``
are not used: the multi-source module's apply to every source.

Example (YAML, two sources)::

    data:
      class_path: lightning_meta.data.multi_source.MultiSourceDataModule
      init_args:
        sources:
          - class_path: lightning_meta.data.MiniImageNetDataModule
            init_args: {root: data, augment: true}
          - class_path: lightning_meta.data.OmniglotDataModule
            init_args: {root: data, image_size: 84, channels: 3}
        names: [mini_imagenet, omniglot]
        variable_episodes: true
        meta_batch_size: 1
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from lightning_meta.data.augmentation import EpisodeAugmentation
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import EpisodeStream
from lightning_meta.data.root import ItemLoader
from lightning_meta.errors import DATA_ARGS, ConfigurationError, require_positive
from lightning_meta.tasks import TaskBatch

#: Meta-Dataset's episode description defaults (its ``EpisodeDescriptionConfig``)
META_DATASET_SAMPLER = {"min_ways": 5, "max_ways": 50, "max_query": 10, "max_support": 500,
                        "max_support_per_class": 100, "min_log_weight": math.log(0.5),
                        "max_log_weight": math.log(2.0)}


def variable_episode(pool: ClassImages, generator: torch.Generator, min_ways: int = 5, max_ways: int = 50,
                     max_query: int = 10, max_support: int = 500, max_support_per_class: int = 100,
                     min_log_weight: float = math.log(0.5), max_log_weight: float = math.log(2.0),
                     augment: Optional[EpisodeAugmentation] = None) -> TaskBatch:
    """One episode of Meta-Dataset's variable-way variable-shot sampler from ``pool`` (see the module
    docstring), as a :class:`TaskBatch` of one task: support ordered by class (labels ``0 .. ways - 1`` in
    the order classes were drawn, ``shots_c`` samples each), then ``queries`` per class.

    Example::

        batch = variable_episode(pool, torch.Generator().manual_seed(0))
        batch.support_y[0].bincount()      # unequal shots per class
    """
    classes = pool.num_classes
    ways = int(torch.randint(min_ways, min(max_ways, classes) + 1, (), generator=generator))
    chosen = torch.randperm(classes, generator=generator)[:ways].tolist()
    sizes = torch.tensor([pool.class_sizes[c % pool.base_classes] for c in chosen])
    queries = int(min(max_query, int((sizes // 2).min())))
    remaining = sizes - queries
    beta = float(torch.rand((), generator=generator))
    support_size = min(int(torch.floor(beta * remaining.clamp(max=max_support_per_class).double() + 1).sum()),
                       max_support)
    log_weights = min_log_weight + (max_log_weight - min_log_weight) * torch.rand(ways, generator=generator,
                                                                                  dtype=torch.float64)
    proportions = sizes.double() * log_weights.exp()
    proportions = proportions / proportions.sum()
    shots = torch.minimum(torch.floor(proportions * (support_size - ways)).long() + 1, remaining).tolist()
    support_rows, query_rows, support_turns, query_turns = [], [], [], []
    for c, k in zip(chosen, shots):
        base = c % pool.base_classes
        picks = torch.randperm(pool.class_sizes[base], generator=generator)[:k + queries] + pool.first_sample[base]
        support_rows.append(picks[:k])
        query_rows.append(picks[k:])
        turn = pool.rotations[c // pool.base_classes]
        support_turns.append(torch.full((k,), turn))
        query_turns.append(torch.full((queries,), turn))
    rows = torch.cat(support_rows + query_rows)
    x = pool.select(rows, torch.cat(support_turns + query_turns), [generator], [len(rows)], augment)
    support_count = sum(shots)
    support_y = torch.repeat_interleave(torch.arange(ways), torch.tensor(shots))
    query_y = torch.arange(ways).repeat_interleave(queries)
    return TaskBatch(x[:support_count].unsqueeze(0), support_y.unsqueeze(0), x[support_count:].unsqueeze(0),
                     query_y.unsqueeze(0))


class MultiSourceEpisodes:
    """The episodes of one split drawn from several named :class:`ClassImages` (an episode source).

    Each episode's source is drawn first from its generator by ``weights`` (no draw with one source: a
    one-source view draws that source's own episodes), then the episode from that source with the same
    generator: fixed ways/shots through :meth:`ClassImages.sample_batch` (the sources' episodes of a batch
    drawn together), or :func:`variable_episode` when ``variable`` holds the sampler's settings.
    ``augmentations[s]`` augments source ``s``'s episodes (training only).

    Example::

        episodes = MultiSourceEpisodes([pool_a, pool_b], ["a", "b"], weights=[1.0, 1.0])
        batch = episodes.sample_batch(generators, ways=5, shots=1, queries=15)
    """

    def __init__(self, pools: Sequence[ClassImages], names: Sequence[str], weights: Optional[Sequence[float]] = None,
                 augmentations: Optional[Sequence[Optional[EpisodeAugmentation]]] = None,
                 variable: Optional[dict[str, Any]] = None):
        self.pools, self.names = list(pools), list(names)
        self.weights = torch.tensor(list(weights) if weights is not None else [1.0] * len(self.pools),
                                    dtype=torch.float64)
        self.augmentations = list(augmentations) if augmentations is not None else [None] * len(self.pools)
        self.variable = variable

    @property
    def num_classes(self) -> int:
        return min(pool.num_classes for pool in self.pools)

    @property
    def min_samples(self) -> int:
        return min(pool.min_samples for pool in self.pools)

    def part(self, index: int) -> "MultiSourceEpisodes":
        """Source ``index`` alone, not augmented: its evaluation episodes."""
        return MultiSourceEpisodes([self.pools[index]], [self.names[index]], variable=self.variable)

    def choose(self, generator: torch.Generator) -> int:
        if len(self.pools) == 1:
            return 0
        return int(torch.multinomial(self.weights, 1, generator=generator))

    def sample(self, generator: torch.Generator, ways: int, shots: int, queries: int):
        return self.sample_batch([generator], ways, shots, queries)[0]

    def sample_batch(self, generators: Sequence[torch.Generator], ways: int, shots: int, queries: int) -> TaskBatch:
        """One episode per generator, each from the source its generator chooses, stacked (fixed sizes).

        Variable-size episodes do not stack: the batch holds the first generator's episode alone (the loaders
        draw one episode per batch; a side evaluation that asks for several, such as a callback's fixed
        episodes, gets the first)."""
        if self.variable is not None:
            chosen = [self.choose(generators[0])]
            return variable_episode(self.pools[chosen[0]], generators[0], augment=self.augmentations[chosen[0]],
                                    **self.variable)
        chosen = [self.choose(g) for g in generators]
        parts: list[Optional[TaskBatch]] = [None] * len(generators)
        for s in sorted(set(chosen)):
            members = [i for i, c in enumerate(chosen) if c == s]
            batch = self.pools[s].sample_batch([generators[i] for i in members], ways, shots, queries,
                                               augment=self.augmentations[s])
            for j, i in enumerate(members):
                parts[i] = TaskBatch(batch.support_x[j], batch.support_y[j], batch.query_x[j], batch.query_y[j])
        return TaskBatch.stack([p.tensors() for p in parts])  # type: ignore[union-attr]


def data_spec(module: Any) -> Any:
    """A data module as ``{"class_path", "init_args"}`` (its saved arguments, nested modules likewise), so that
    checkpoints, which load with ``weights_only=True``, hold no module objects."""
    if isinstance(module, EpisodicDataModule):
        return {"class_path": f"{type(module).__module__}.{type(module).__qualname__}",
                "init_args": {k: data_spec(v) for k, v in module.hparams.items() if not k.startswith("_")}}
    if isinstance(module, (list, tuple)):
        return [data_spec(v) for v in module]
    return module


def default_names(sources: Sequence[Any]) -> list[str]:
    """A name per source from its class (``MiniImageNetDataModule`` -> ``miniimagenet``), numbered when repeated."""
    bases = [type(s).__name__.removesuffix("DataModule").lower() or "source" for s in sources]
    return [f"{b}{bases[:i].count(b)}" if bases.count(b) > 1 else b for i, b in enumerate(bases)]


class MultiSourceDataModule(EpisodicDataModule):
    """Episodes from several named sources, evaluated per source (see the module docstring).

    Args:
        sources: the data sets, each an :class:`~lightning_meta.data.EpisodicDataModule` (in YAML, a list of
            ``class_path``/``init_args``); their images must share one shape.
        names: a name per source, used in metric names (``test/<name>/acc``); default: from the classes.
        weights: the probability of drawing each source for a training episode (normalised; default uniform).
        variable_episodes: Meta-Dataset's variable-way variable-shot episodes (one per process per step)
            instead of fixed ``ways``/``shots``/``queries``.
        min_ways, max_ways, max_query, max_support, max_support_per_class: the variable sampler's bounds
            (Meta-Dataset's defaults: 5, 50, 10, 500, 100).
        Other arguments as :class:`~lightning_meta.data.EpisodicDataModule` (they apply to every source).

    Example::

        data = MultiSourceDataModule([NpzDataModule("hanzi"), MiniImageNetDataModule("data")],
                                     names=["hanzi", "mini"], variable_episodes=True, meta_batch_size=1)
    """

    def __init__(
        self,
        sources: list[EpisodicDataModule],
        names: Optional[list[str]] = None,
        weights: Optional[list[float]] = None,
        variable_episodes: bool = False,
        min_ways: int = 5,
        max_ways: int = 50,
        max_query: int = 10,
        max_support: int = 500,
        max_support_per_class: int = 100,
        **kwargs: Any,
    ):
        if kwargs.get("augment"):
            raise ConfigurationError(f"{DATA_ARGS}augment applies to each source: set augment in the source's"
                                     " init_args (data.init_args.sources[i].init_args.augment), not on the"
                                     " multi-source module")
        if kwargs.get("train_batches", "episodes") != "episodes":
            raise ConfigurationError(f"{DATA_ARGS}train_batches: MultiSourceDataModule trains on episodes only;"
                                     " remove train_batches")
        super().__init__(**kwargs)
        sources = list(sources or [])
        if not sources:
            raise ConfigurationError(f"{DATA_ARGS}sources is empty: give a list of data modules (class_path /"
                                     " init_args), at least one")
        for i, source in enumerate(sources):
            if not isinstance(source, EpisodicDataModule) or isinstance(source, MultiSourceDataModule):
                raise ConfigurationError(
                    f"{DATA_ARGS}sources[{i}] is a {type(source).__name__}: each source must be an episodic image"
                    " data module (OmniglotDataModule, MiniImageNetDataModule, NpzDataModule, ...)")
        names = default_names(sources) if names is None else [str(n) for n in names]
        if len(names) != len(sources) or len(set(names)) != len(names) or any(not n or "/" in n for n in names):
            raise ConfigurationError(f"{DATA_ARGS}names={names}: give one distinct name (no '/') per source, "
                                     f"{len(sources)} in all")
        if weights is not None:
            if len(weights) != len(sources) or any(not (float(w) > 0 and math.isfinite(float(w))) for w in weights):
                raise ConfigurationError(f"{DATA_ARGS}weights={list(weights)}: give one positive weight per source,"
                                         f" {len(sources)} in all")
        for field, value in (("min_ways", min_ways), ("max_ways", max_ways), ("max_query", max_query),
                             ("max_support", max_support), ("max_support_per_class", max_support_per_class)):
            require_positive(DATA_ARGS + field, value)
        if max_ways < min_ways:
            raise ConfigurationError(f"{DATA_ARGS}max_ways={max_ways} is below {DATA_ARGS}min_ways={min_ways}:"
                                     " raise max_ways")
        if max_support < max_ways:
            raise ConfigurationError(f"{DATA_ARGS}max_support={max_support} is below {DATA_ARGS}max_ways={max_ways}:"
                                     " every class needs a support sample; raise max_support")
        self.source_modules, self.names = sources, names
        self.weights = None if weights is None else [float(w) for w in weights]
        self.variable_episodes = bool(variable_episodes)
        self.sampler = None if not variable_episodes else {
            "min_ways": min_ways, "max_ways": max_ways, "max_query": max_query, "max_support": max_support,
            "max_support_per_class": max_support_per_class}
        # checkpoints load with weights_only=True: the sources as specs, not modules
        self.hparams["sources"] = [data_spec(s) for s in sources]

    @property
    def evaluation_names(self) -> list[str]:
        """The names of the evaluation loaders, in order: one per source (the learner logs ``val/<name>/...``)."""
        return list(self.names)

    def prepare_data(self) -> None:
        for source in self.source_modules:
            source.prepare_data()

    # ----------------------------------------------------------------- splits
    def load_split(self, split: str) -> MultiSourceEpisodes:
        pools = []
        for i, (name, source) in enumerate(zip(self.names, self.source_modules)):
            pool = source.load_split(split)
            if not isinstance(pool, ClassImages):
                raise ConfigurationError(f"{DATA_ARGS}sources[{i}] ({name}) serves {type(pool).__name__} episodes:"
                                         " multi-source episodes take image data modules (ClassImages)")
            self.check_source(split, i, pool)
            pools.append(pool)
        shapes = {name: pool.image_shape for name, pool in zip(self.names, pools)}
        if len(set(shapes.values())) > 1:
            raise ConfigurationError(f"{DATA_ARGS}sources: images of different shapes {shapes} in the '{split}' split:"
                                     " give every source the same image_size and channels (Meta-Dataset: 84x84 RGB)")
        augmentations = [s.augmentation if split == "train" else None for s in self.source_modules]
        return MultiSourceEpisodes(pools, self.names, self.weights, augmentations, self.sampler)

    def check_source(self, split: str, index: int, pool: ClassImages) -> None:
        """Reject a source whose ``split`` cannot supply the episodes asked for, naming the source and the field."""
        where = f"source {self.names[index]!r} (sources[{index}]) has"
        if self.sampler is not None:
            if pool.num_classes < self.sampler["min_ways"]:
                raise ConfigurationError(f"{DATA_ARGS}min_ways={self.sampler['min_ways']}: {where} {pool.num_classes}"
                                         f" classes in its '{split}' split: lower min_ways or drop the source")
            if pool.min_samples < 2:
                raise ConfigurationError(f"{DATA_ARGS}variable_episodes: {where} a class of {pool.min_samples} image(s)"
                                         f" in its '{split}' split; Meta-Dataset's sampler needs 2 per class (one"
                                         " support, one query)")
            return
        ways, shots, queries = self.setting(split)
        prefix = "" if split == "train" else "test_"
        if pool.num_classes < ways:
            raise ConfigurationError(f"{DATA_ARGS}{prefix}ways={ways}: {where} {pool.num_classes} classes in its"
                                     f" '{split}' split: set {prefix}ways <= {pool.num_classes}")
        if shots + queries > pool.min_samples:
            raise ConfigurationError(f"{DATA_ARGS}{prefix}shots + {prefix}queries = {shots + queries}: {where} a class"
                                     f" of {pool.min_samples} images in its '{split}' split: lower {prefix}shots or"
                                     f" {prefix}queries")

    def check_split(self, split: str, num_classes: int, min_samples: Optional[int]) -> None:
        """Each source is checked as it loads (:meth:`check_source`)."""

    def setup(self, stage: Optional[str] = None) -> None:
        self.per_process_batch()
        super().setup(stage)

    def per_process_batch(self) -> int:
        """Episodes per process and step; variable-size episodes need exactly one."""
        per_rank = self.items_per_rank()
        if self.variable_episodes and per_rank != 1:
            world = self.world[1]
            raise ConfigurationError(
                f"{DATA_ARGS}meta_batch_size={self.meta_batch_size}: variable-size episodes are batched one per process"
                f" and step: set meta_batch_size to the number of processes ({world}), and average more episodes"
                " per update with model.init_args.accumulate_grad_batches")
        return per_rank

    # ----------------------------------------------------------------- loaders
    def evaluation_loader(self, split: str, episodes: int) -> list[ItemLoader]:  # type: ignore[override]
        """One loader per source: that source's fixed ``episodes`` of ``split`` (a list, in :attr:`names` order)."""
        source = self.source(split)
        plan = self.evaluation_plan(episodes, self.per_process_batch())
        return [self.loader(EpisodeStream(source.part(i), split, plan, *self.setting(split), seed=self.seed),
                            self.num_workers) for i in range(len(self.names))]


class ClassPartDataModule(EpisodicDataModule):
    """Part ``part`` of ``parts`` of another image data module's classes: of every split, the classes whose
    index is ``part`` modulo ``parts`` (disjoint parts, the other module's splits kept as they are).

    It turns one data set into several sources of disjoint classes, e.g. the bundled hanzi characters into
    two sources for a multi-source run that needs no download (``configs/protonet_multisource_hanzi.yaml``).

    Example::

        half = ClassPartDataModule(NpzDataModule("hanzi"), part=1, parts=2)
    """

    def __init__(self, data: EpisodicDataModule, part: int = 0, parts: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        require_positive(DATA_ARGS + "parts", parts)
        if not 0 <= part < parts:
            raise ConfigurationError(f"{DATA_ARGS}part={part}: choose a part in 0 .. parts - 1 = {parts - 1}")
        if not isinstance(data, EpisodicDataModule):
            raise ConfigurationError(f"{DATA_ARGS}data is a {type(data).__name__}: give an episodic image data module")
        self.data, self.part, self.parts = data, part, parts
        self.hparams["data"] = data_spec(data)

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def load_split(self, split: str) -> ClassImages:
        pool = self.data.load_split(split)
        if not isinstance(pool, ClassImages):
            raise ConfigurationError(f"{DATA_ARGS}data serves {type(pool).__name__} episodes: ClassPartDataModule"
                                     " divides image classes (ClassImages)")
        return pool.subset(range(self.part, pool.base_classes, self.parts))

    def preprocessing(self):
        return self.data.preprocessing()
