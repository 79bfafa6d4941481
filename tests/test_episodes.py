"""Episodes are addressable, identical across meta-batch sizes, split across ranks and resumable."""

from __future__ import annotations

import torch

from lightning_meta.data import ClassImages, EpisodeStream, ItemLoader, SinusoidDataModule
from lightning_meta.data.root import eval_plan, train_plan


def make_pool(classes: int = 12, samples: int = 6) -> ClassImages:
    x = torch.arange(classes * samples * 4 * 4, dtype=torch.int64).remainder(251).to(torch.uint8)
    return ClassImages.from_array(x.view(classes, samples, 4, 4))


def test_training_episode_depends_only_on_its_address():
    pool = make_pool()
    a = EpisodeStream(pool, "train", [[0, 1, 2, 3]], 3, 1, 2, seed=7, epoch=2).batch(0)
    b = EpisodeStream(pool, "train", [[2], [3]], 3, 1, 2, seed=7, epoch=2).batch(0)
    assert torch.equal(a.support_x[2], b.support_x[0])
    other_epoch = EpisodeStream(pool, "train", [[2]], 3, 1, 2, seed=7, epoch=3).batch(0)
    assert not torch.equal(a.support_x[2], other_epoch.support_x[0])


def test_rank_batches_union_is_the_single_process_batch():
    single = train_plan(num_batches=3, items_per_step=8, rank=0, world_size=1)
    for step in range(3):
        union = sum((train_plan(3, 8, rank, 4)[step] for rank in range(4)), [])
        assert union == single[step]


def test_eval_plan_covers_each_episode_once_with_equal_batch_counts():
    plans = [eval_plan(items=10, per_batch=2, rank=r, world_size=4) for r in range(4)]
    assert len({len(p) for p in plans}) == 1
    real = sorted(i for p in plans for batch in p for i in batch if i >= 0)
    assert real == list(range(10))


def test_loader_resumes_mid_epoch():
    pool = make_pool()
    plan = train_plan(num_batches=5, items_per_step=2, rank=0, world_size=1)
    full = list(ItemLoader(EpisodeStream(pool, "train", plan, 3, 1, 2, seed=0, epoch=0), clock=lambda: (1, 0)))
    resumed_loader = ItemLoader(EpisodeStream(pool, "train", plan, 3, 1, 2, seed=0, epoch=0), clock=lambda: (1, 0))
    resumed_loader.load_state_dict({"epoch": 1, "batches_done": 3})
    resumed = list(resumed_loader)
    assert len(resumed) == 2
    assert torch.equal(resumed[0].query_x, full[3].query_x)
    assert torch.equal(resumed[1].index, full[4].index)


def test_workers_yield_batches_in_order():
    pool = make_pool()
    plan = train_plan(num_batches=6, items_per_step=2, rank=0, world_size=1)
    serial = list(ItemLoader(EpisodeStream(pool, "train", plan, 3, 1, 2, seed=0, epoch=0)))
    parallel = list(ItemLoader(EpisodeStream(pool, "train", plan, 3, 1, 2, seed=0, epoch=0), num_workers=2))
    assert [b.index.tolist() for b in serial] == [b.index.tolist() for b in parallel]
    assert all(torch.equal(s.support_x, p.support_x) for s, p in zip(serial, parallel))


def test_class_images_labels_and_rotations():
    pool = ClassImages.from_array(make_pool().images.view(12, 6, 4, 4), rotations=(0, 90, 180, 270))
    assert pool.num_classes == 48
    task = pool.sample(torch.Generator().manual_seed(0), ways=5, shots=2, queries=3)
    assert task.support_x.shape == (10, 1, 4, 4) and task.query_x.shape == (15, 1, 4, 4)
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    rotated = pool.class_samples(12 + 5, torch.tensor([0]))
    assert torch.equal(rotated, torch.rot90(pool.class_samples(5, torch.tensor([0])), 1, dims=(-2, -1)))


def test_a_meta_batch_of_class_image_tasks_draws_each_task_as_alone():
    """``sample_batch`` selects, rotates and scales the images of all tasks together: each task must be the
    one its generator draws alone, class by class (classes, then samples of each, in the generator's order)."""
    pool = ClassImages(make_pool().images, [6] * 12, rotations=(0, 90, 180, 270), mean=[0.3], std=[0.2])
    batch = pool.sample_batch([torch.Generator().manual_seed(seed) for seed in range(8)], ways=4, shots=2, queries=1)
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        classes = torch.randperm(pool.num_classes, generator=generator)[:4].tolist()
        images = [pool.class_samples(c, torch.randperm(6, generator=generator)[:3]) for c in classes]
        assert torch.equal(batch.support_x[seed], torch.cat([x[:2] for x in images]))
        assert torch.equal(batch.query_x[seed], torch.cat([x[2:] for x in images]))
    assert batch.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * 8 and batch.query_y.tolist() == [[0, 1, 2, 3]] * 8


def test_sinusoid_tasks_follow_finn_ranges():
    dm = SinusoidDataModule(meta_batch_size=4, episodes_per_epoch=40, val_episodes=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.is_regression and batch.support_x.shape == (4, 10, 1)
    assert batch.support_x.abs().max() <= 5 and batch.support_y.abs().max() <= 5
