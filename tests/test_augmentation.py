"""Training-time augmentation: seeded by the episode's address, batched, training episodes only."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_meta.algorithms.protonet import PrototypicalNetwork
from lightning_meta.data.augmentation import EpisodeAugmentation, make_augmentation
from lightning_meta.data.class_images import ClassImages
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import EpisodeStream, episode_generator
from lightning_meta.data.root import train_plan
from lightning_meta.errors import ConfigurationError
from lightning_meta.models import Conv4


def rgb_pool(classes: int = 10, samples: int = 8, size: int = 12, seed: int = 0) -> ClassImages:
    g = torch.Generator().manual_seed(seed)
    return ClassImages.from_array(torch.randint(0, 256, (classes, samples, 3, size, size), generator=g,
                                                dtype=torch.uint8))


class RGBTasks(EpisodicDataModule):
    """Tiny random RGB classes per split (disjoint images), drawn as episodes."""

    def load_split(self, split):
        return rgb_pool(seed={"train": 0, "val": 1, "test": 2}[split])


def settings(**kwargs):
    base = dict(ways=3, shots=2, queries=2, meta_batch_size=4, episodes_per_epoch=16, val_episodes=6,
                test_episodes=6)
    return {**base, **kwargs}


def batches(loader):
    return [(b.support_x.clone(), b.query_x.clone(), b.support_y.clone(), b.index.clone()) for b in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


def test_augmentation_off_is_the_plain_episode_bit_for_bit():
    """With augment off, an episode is the classes and samples its generator draws, scaled, nothing more
    (a reference drawn here by hand, class by class, through class_samples)."""
    pool = rgb_pool()
    stream = EpisodeStream(pool, "train", [[0, 1]], ways=3, shots=2, queries=2, seed=5, epoch=0)
    batch = stream.batch(0)
    for b, index in enumerate([0, 1]):
        g = episode_generator(5, "train", index, 0)
        classes = torch.randperm(pool.num_classes, generator=g)[:3].tolist()
        x = torch.stack([pool.class_samples(c, torch.randperm(8, generator=g)[:4]) for c in classes])
        assert torch.equal(batch.support_x[b], x[:, :2].flatten(0, 1))
        assert torch.equal(batch.query_x[b], x[:, 2:].flatten(0, 1))


def test_augmented_episode_keeps_classes_and_changes_pixels():
    pool = rgb_pool()
    plain = EpisodeStream(pool, "train", [[0, 1]], 3, 2, 2, seed=5, epoch=0).batch(0)
    augmented = EpisodeStream(pool, "train", [[0, 1]], 3, 2, 2, seed=5, epoch=0,
                              augment=EpisodeAugmentation()).batch(0)
    assert torch.equal(plain.support_y, augmented.support_y) and torch.equal(plain.query_y, augmented.query_y)
    assert augmented.support_x.shape == plain.support_x.shape
    assert augmented.support_x.min() >= 0 and augmented.support_x.max() <= 1
    changed = (augmented.support_x != plain.support_x).flatten(2).any(-1).float().mean()
    assert changed > 0.9


def test_flip_alone_mirrors_about_half_the_images_exactly():
    pool = rgb_pool(samples=20)
    images = pool.images[:200]
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    out = EpisodeAugmentation(["flip"])(images, generators, [50] * 4)
    mirrored = torch.tensor([torch.equal(o, i.flip(-1).float()) for o, i in zip(out, images)])
    same = torch.tensor([torch.equal(o, i.float()) for o, i in zip(out, images)])
    assert bool((mirrored | same).all()) and 60 < int(mirrored.sum()) < 140


def test_full_crop_without_flip_is_the_identity():
    """A crop box of the whole image resamples every pixel centre onto itself."""
    images = rgb_pool().images[:5]
    out = EpisodeAugmentation(["crop"], scale=(1.0, 1.0), ratio=(1.0, 1.0))(images, [torch.Generator()], [5])
    assert torch.equal(out.round(), images.float()) and float((out - images).abs().max()) < 1e-3


def test_jitter_of_a_grey_image_leaves_it_grey_and_brightness_scales():
    grey = torch.full((4, 1, 6, 6), 100, dtype=torch.uint8)
    out = EpisodeAugmentation(["jitter"])(grey, [torch.Generator().manual_seed(0)], [4])
    assert out.shape == grey.shape
    # one value per image: uniform images stay uniform (contrast around their own mean), brightness in 1 +- 0.4
    assert float((out.flatten(1).max(1).values - out.flatten(1).min(1).values).max()) < 1e-3
    assert bool(((out >= 60) & (out <= 140)).all()) and out.std() > 1
    # a grey RGB image stays grey (saturation pulls towards grey); a colour's saturation changes
    rgb = torch.zeros(64, 3, 4, 4, dtype=torch.uint8)
    rgb[:32] = 120
    rgb[32:, 0] = 200
    out = EpisodeAugmentation(["jitter"])(rgb, [torch.Generator().manual_seed(1)], [64])
    assert float((out[:32].max(1).values - out[:32].min(1).values).max()) < 1e-3
    spread = (out[32:, 0] - out[32:, 1]).flatten(1).mean(1)
    assert spread.max() - spread.min() > 40


def test_bad_augmentation_names_are_refused_naming_the_field():
    with pytest.raises(ConfigurationError, match=r"data.init_args.augment=.*'rotate'"):
        RGBTasks(**settings(augment=["flip", "rotate"]))
    assert make_augmentation(False) is None and make_augmentation([]) is None
    assert make_augmentation(True).names == ("crop", "flip", "jitter")


def test_same_address_same_episode_across_workers_and_ranks():
    data = RGBTasks(**settings(augment=True))
    data.setup("fit")
    single = batches(data.train_dataloader())
    workers = RGBTasks(**settings(augment=True, num_workers=2))
    workers.setup("fit")
    assert_same(single, batches(workers.train_dataloader()))
    # two ranks: each draws its half of every step; the union is the single-process batch
    source, augment = data.source("train"), data.augmentation
    ranks = [list(EpisodeStream(source, "train", train_plan(4, 4, r, 2), 3, 2, 2, seed=0, epoch=0, augment=augment))
             for r in range(2)]
    for step, whole in enumerate(single):
        joined = [torch.cat([ranks[0][step].support_x, ranks[1][step].support_x]),
                  torch.cat([ranks[0][step].query_x, ranks[1][step].query_x])]
        assert torch.equal(joined[0], whole[0]) and torch.equal(joined[1], whole[1])


def test_epochs_draw_other_augmentations_and_evaluation_is_never_augmented():
    data = RGBTasks(**settings(augment=True))
    plain = RGBTasks(**settings())
    data.setup("fit")
    plain.setup("fit")
    loader = data.train_dataloader()
    first = next(iter(loader)).support_x
    loader.stream.epoch = 1
    stream = loader.stream
    stream.start = 0
    assert not torch.equal(first, stream.batch(0).support_x)
    assert_same(batches(data.val_dataloader()), batches(plain.val_dataloader()))
    assert_same(batches(data.test_dataloader()), batches(plain.test_dataloader()))
    assert data.val_dataloader().stream.augment is None and data.train_dataloader().stream.augment is not None


class NotImages:
    """An episode source that draws tasks one by one and cannot augment them."""

    num_classes, min_samples = 10, 8

    def sample(self, generator, ways, shots, queries):
        return rgb_pool().sample(generator, ways, shots, queries)


class NotImageTasks(EpisodicDataModule):
    def load_split(self, split):
        return NotImages()


def test_augmentation_of_a_source_that_cannot_augment_is_refused():
    with pytest.raises(ConfigurationError, match="data.init_args.augment=True: NotImageTasks"):
        NotImageTasks(**settings(augment=True)).setup("fit")
    NotImageTasks(**settings()).setup("fit")


def fresh():
    pl.seed_everything(0)
    model = PrototypicalNetwork(Conv4(3, out_features=None, hidden_channels=8, image_size=12,
                                                batch_norm_stats="running"), outer_lr=1e-2)
    return model, RGBTasks(**settings(augment=True, episodes_per_epoch=20))


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """5 steps an epoch: stopped at 7 (mid-epoch) and resumed to 10, the weights of 10 steps in one go."""
    model, data = fresh()
    quiet_trainer(max_steps=10, limit_val_batches=0, default_root_dir=tmp_path / "a").fit(model, data)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}
    model, data = fresh()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1, filename="{step}")
    quiet_trainer(max_steps=7, limit_val_batches=0, callbacks=[saver], enable_checkpointing=True,
                  default_root_dir=tmp_path / "b").fit(model, data)
    model, data = fresh()
    torch.manual_seed(1234)
    trainer = quiet_trainer(max_steps=10, limit_val_batches=0, default_root_dir=tmp_path / "c")
    trainer.fit(model, data, ckpt_path=tmp_path / "ckpt" / "step=7.ckpt")
    for name, value in uninterrupted.items():
        assert torch.equal(model.state_dict()[name], value), name


@pytest.mark.slow
def test_data_loading_benchmark_smoke_mode_prints_its_table():
    """benchmarks/data_loading.py --tiny runs end to end (no timing asserted: the machine is shared)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.data_loading", "--tiny", "--threads", "1"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for text in ("Data loading: augmented 84x84 RGB episodes/s", "episodes/s", "vs step", "augment"):
        assert text in done.stdout, done.stdout
