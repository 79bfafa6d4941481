"""Multi-source episodes: Meta-Dataset's variable sampler, sources by weight, per-source evaluation, the CLI."""

from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch
from cli_helpers import CONFIGS, cli, ok
from meta_helpers import quiet_trainer

from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.protonet import PrototypicalNetwork
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import EpisodeStream, episode_generator
from lightning_meta.data.multi_source import (
    ClassPartDataModule,
    MultiSourceDataModule,
    MultiSourceEpisodes,
    variable_episode,
)
from lightning_meta.errors import ConfigurationError
from lightning_meta.metrics import EpisodeResults, mean_over_groups
from lightning_meta.models import Conv4


def pool(classes: int, samples, size: int = 8, seed: int = 0, channels: int = 1) -> ClassImages:
    counts = [samples] * classes if isinstance(samples, int) else list(samples)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (sum(counts), channels, size, size), generator=g, dtype=torch.uint8)
    return ClassImages(images, counts)


class Tiny(EpisodicDataModule):
    """Random classes per split; ``offset`` shifts the pixel seed so that two sources differ."""

    def __init__(self, classes: int = 12, samples: int = 12, offset: int = 0, size: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.samples, self.offset, self.size = classes, samples, offset, size

    def load_split(self, split):
        return pool(self.classes, self.samples, self.size, seed=self.offset + ("train", "val", "test").index(split))


def test_variable_episode_follows_meta_datasets_sampler():
    images = pool(60, [20 + (c % 7) * 10 for c in range(60)])
    seen_ways, unequal = set(), 0
    for i in range(40):
        g = torch.Generator().manual_seed(i)
        batch = variable_episode(images, g)
        shots = batch.support_y[0].bincount()
        ways = len(shots)
        seen_ways.add(ways)
        assert 5 <= ways <= 50 and bool((shots >= 1).all())
        queries = batch.query_y[0].bincount()
        assert bool((queries == queries[0]).all()) and 1 <= int(queries[0]) <= 10
        assert batch.support_x.shape[1] == int(shots.sum()) <= 500
        # a class never gives more samples than it has, and support and query samples differ
        assert batch.support_x.shape[2:] == (1, 8, 8)
        unequal += int(shots.min() != shots.max())
        again = variable_episode(images, torch.Generator().manual_seed(i))
        assert torch.equal(again.support_x, batch.support_x) and torch.equal(again.query_y, batch.query_y)
    assert len(seen_ways) > 10 and unequal > 30
    # ways capped by the source's classes
    small = pool(7, 4)
    for i in range(10):
        batch = variable_episode(small, torch.Generator().manual_seed(i))
        assert 5 <= int(batch.support_y.max()) + 1 <= 7 and int(batch.query_y[0].bincount()[0]) == 2


def test_sources_are_drawn_by_weight_and_one_source_draws_its_own_episodes():
    a, b = pool(10, 6, seed=0), pool(10, 6, seed=1)
    episodes = MultiSourceEpisodes([a, b], ["a", "b"], weights=[3.0, 1.0])
    generators = [episode_generator(0, "train", i, 0) for i in range(400)]
    chosen = torch.tensor([episodes.choose(g) for g in generators])
    assert 0.68 < float((chosen == 0).float().mean()) < 0.82
    stream = EpisodeStream(episodes, "train", [list(range(8))], ways=3, shots=1, queries=2, seed=0, epoch=0)
    batch = stream.batch(0)
    for i in range(8):  # each episode is its chosen source's own episode from the generator after the choice
        g = episode_generator(0, "train", i, 0)
        source = [a, b][episodes.choose(g)]
        assert torch.equal(batch.query_x[i], source.sample(g, 3, 1, 2).query_x)
    alone = EpisodeStream(episodes.part(1), "val", [[0, 1]], 3, 1, 2, seed=0).batch(0)
    plain = EpisodeStream(b, "val", [[0, 1]], 3, 1, 2, seed=0).batch(0)
    assert torch.equal(alone.support_x, plain.support_x)


def test_protonet_prototypes_and_maml_handle_unequal_shots():
    """A variable episode's prototypes are the per-class means of unequal support sets, and MAML's support loss
    weighs every support sample once."""
    batch = variable_episode(pool(20, 30), torch.Generator().manual_seed(3))
    support_y = batch.support_y[0]
    assert support_y.bincount().min() != support_y.bincount().max()
    model = PrototypicalNetwork(torch.nn.Flatten(), outer_lr=1e-3)
    features = batch.support_x[0].flatten(1)
    ways = int(support_y.max()) + 1
    expected = torch.stack([features[support_y == c].mean(0) for c in range(ways)])
    assert torch.allclose(model.prototypes(features, support_y, ways), expected, atol=1e-6)
    logits = model.task_logits(features, support_y, batch.query_x[0].flatten(1))
    assert logits.shape == (batch.query_x.shape[1], ways)
    maml = MAML(Conv4(1, out_features=ways, hidden_channels=4, image_size=8), inner_lr=0.1, inner_steps=1)
    values = maml.evaluate_tasks(batch)
    assert values["acc"].shape == (1,) and math.isfinite(float(values["loss"][0]))


def two_sources(**kwargs) -> MultiSourceDataModule:
    settings = dict(ways=3, shots=1, queries=2, meta_batch_size=2, episodes_per_epoch=8, val_episodes=4,
                    test_episodes=4)
    settings.update(kwargs)
    return MultiSourceDataModule([Tiny(offset=0), Tiny(offset=10, augment=["flip"])], names=["left", "right"],
                                 **settings)


def test_per_source_evaluation_logs_each_source_and_their_mean():
    pl.seed_everything(0)
    model = PrototypicalNetwork(Conv4(1, out_features=None, hidden_channels=4, image_size=8,
                                      batch_norm_stats="running"))
    data = two_sources()
    trainer = quiet_trainer(max_steps=2, num_sanity_val_steps=0)
    trainer.fit(model, data)
    metrics = trainer.validate(model, data, verbose=False)[0]
    for name in ("val/left/acc", "val/left/acc_ci95", "val/right/acc", "val/right/acc_ci95", "val/acc"):
        assert name in metrics, sorted(metrics)
    assert metrics["val/acc"] == pytest.approx((metrics["val/left/acc"] + metrics["val/right/acc"]) / 2, abs=1e-6)
    rows = model.results["val"].rows()
    assert sorted({(r["group"], r["episode"]) for r in rows}) == [(g, e) for g in (0, 1) for e in range(4)]


def test_mean_over_groups_and_its_ci():
    results = EpisodeResults()
    results.update({"acc": torch.tensor([0.5, 0.7])}, torch.tensor([0, 1]), group=0)
    results.update({"acc": torch.tensor([0.9, 0.9, 0.6])}, torch.tensor([0, 1, 2]), group=1)
    groups = results.group_summaries()
    assert groups[0][1] == 2 and groups[1][1] == 3 and groups[0][0]["acc"][0] == pytest.approx(0.6)
    mean = mean_over_groups([groups[0][0], groups[1][0]])["acc"]
    assert mean[0] == pytest.approx(0.7)
    assert mean[1] == pytest.approx(math.hypot(groups[0][0]["acc"][1], groups[1][0]["acc"][1]) / 2)


def test_training_episodes_apply_each_sources_augmentation_only():
    data = two_sources(meta_batch_size=4, episodes_per_epoch=8)
    data.setup("fit")
    train = data.source("train")
    assert train.augmentations[0] is None and train.augmentations[1] is not None
    assert all(a is None for a in data.source("val").augmentations)
    loaders = data.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2 and data.evaluation_names == ["left", "right"]


def test_bad_multi_source_settings_are_refused_naming_the_field():
    with pytest.raises(ConfigurationError, match="data.init_args.names"):
        MultiSourceDataModule([Tiny(), Tiny()], names=["a", "a"])
    with pytest.raises(ConfigurationError, match="data.init_args.weights"):
        MultiSourceDataModule([Tiny(), Tiny()], weights=[1.0, -1.0])
    with pytest.raises(ConfigurationError, match="data.init_args.sources is empty"):
        MultiSourceDataModule([])
    with pytest.raises(ConfigurationError, match="augment applies to each source"):
        MultiSourceDataModule([Tiny()], augment=True)
    with pytest.raises(ConfigurationError, match=r"data.init_args.ways=20: source 'b' \(sources\[1\]\) has 12"):
        MultiSourceDataModule([Tiny(classes=30), Tiny()], names=["a", "b"], ways=20,
                              queries=2).setup("fit")
    with pytest.raises(ConfigurationError, match="images of different shapes"):
        MultiSourceDataModule([Tiny(), Tiny(size=10)], ways=3, shots=1, queries=2).setup("fit")
    with pytest.raises(ConfigurationError, match="data.init_args.meta_batch_size=2: variable-size episodes"):
        MultiSourceDataModule([Tiny()], variable_episodes=True, meta_batch_size=2).setup("fit")
    with pytest.raises(ConfigurationError, match="data.init_args.part=2"):
        ClassPartDataModule(Tiny(), part=2, parts=2)


def test_class_parts_are_disjoint_halves():
    whole = Tiny(classes=7).load_split("train")
    even = ClassPartDataModule(Tiny(classes=7), part=0).load_split("train")
    odd = ClassPartDataModule(Tiny(classes=7), part=1).load_split("train")
    assert (even.num_classes, odd.num_classes) == (4, 3)
    assert torch.equal(odd.images[:12], whole.images[12:24]) and torch.equal(even.images[12:24], whole.images[24:36])


@pytest.mark.slow
def test_multisource_hanzi_config_runs_end_to_end(tmp_path):
    """The YAML list of class_path/init_args sources parses; fit trains on variable episodes, validates and
    tests per source, and the metrics file holds test/<source>/acc and the mean."""
    run = ok(cli("fit", "--config", CONFIGS / "protonet_multisource_hanzi.yaml", "--trainer.max_epochs", "1",
                 "--data.init_args.episodes_per_epoch", "4", "--data.init_args.val_episodes", "3",
                 "--data.init_args.test_episodes", "3", "--trainer.log_every_n_steps", "1", cwd=tmp_path))
    assert "test/hanzi_even/acc" in run.stdout + run.stderr
    metrics = list((tmp_path / "runs").rglob("metrics.csv"))
    assert metrics, sorted(str(p) for p in tmp_path.rglob("*"))
    columns = set()
    for path in metrics:
        with open(path) as f:
            columns |= set(next(csv.reader(f)))
    for name in ("val/hanzi_even/acc", "val/hanzi_odd/acc_ci95", "val/acc", "test/hanzi_odd/acc",
                 "test/hanzi_even/acc_ci95", "test/acc"):
        assert name in columns, columns


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_learners_train_on_variable_episodes(learner):
    """ProtoNet and MAML (a head as wide as the most ways, max_ways) train and evaluate on variable-size episodes."""
    pl.seed_everything(0)
    if learner == "protonet":
        model = PrototypicalNetwork(Conv4(1, out_features=None, hidden_channels=4, image_size=8,
                                          batch_norm_stats="running"))
    else:
        model = MAML(Conv4(1, out_features=8, hidden_channels=4, image_size=8), inner_lr=0.1, inner_steps=1)
    data = MultiSourceDataModule([Tiny(classes=8), Tiny(classes=10, offset=10)], names=["a", "b"],
                                 variable_episodes=True, max_ways=8, meta_batch_size=1, episodes_per_epoch=3,
                                 val_episodes=2, test_episodes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_steps=3, num_sanity_val_steps=0)
    trainer.fit(model, data)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    metrics = trainer.test(model, data, verbose=False)[0]
    assert {"test/a/acc", "test/b/acc", "test/acc"} <= set(metrics)


def ddp_run(tmp_path, devices: int, mode: str) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / f"{devices}_{mode}.pt"
    script = Path(__file__).with_name("ddp_multisource_check.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(out), str(devices), mode], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fixed", "variable"])
def test_two_processes_match_one_on_multi_source_episodes(tmp_path, mode):
    """Fixed sizes: 2 processes x 2 episodes = 1 x 4.  Variable sizes (one episode per process and step):
    2 processes = 1 process accumulating 2 batches.  The per-source validation metrics agree too."""
    single, double = ddp_run(tmp_path, 1, mode), ddp_run(tmp_path, 2, mode)
    assert single["steps"] == double["steps"] == 3
    for name, value in single["params"].items():
        if "running_" in name or name.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(double["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert {"val/a/acc", "val/b/acc", "val/acc"} <= set(single["metrics"])
    for name, value in single["metrics"].items():
        assert double["metrics"][name] == pytest.approx(value, abs=1e-5), name
