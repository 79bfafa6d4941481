"""The judge metrics of few-shot generation (lightning_meta.generation_metrics) on cases whose answer is known.

The judge is a ProtoNet trained here on the bundled hanzi meta-train classes (module-scoped, ~100 episodes),
saved and reloaded as a user's ``judge_ckpt``; the cases use the held-out test classes.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_meta.algorithms.protonet import PrototypicalNetwork
from lightning_meta.data.npz import NpzDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.generation_metrics import (
    Judge,
    affine_jitter,
    generation_scores,
    kernel_inception_distance,
    mean_pairwise_distance,
)
from lightning_meta.metrics import mean_and_ci95
from lightning_meta.models.conv4 import Conv4

WAYS, SHOTS, QUERIES = 5, 4, 16


def train_judge(path, episodes: int = 100):
    """A ProtoNet (Conv4-32, 20-way 1-shot, ``episodes`` episodes) trained on the hanzi meta-train classes (the
    split of configs/protonet_hanzi_5w1s.yaml), saved to ``path``: what a user passes as FIGR's judge_ckpt."""
    torch.manual_seed(0)
    model = PrototypicalNetwork(Conv4(1, None, hidden_channels=32, pooling="max", image_size=28,
                                      batch_norm_stats="running"), outer_lr=1e-3)
    data = NpzDataModule("hanzi", ways=20, shots=1, queries=5, test_ways=WAYS, test_shots=SHOTS,
                         test_queries=QUERIES, rotations=[0, 90, 180, 270], meta_batch_size=1,
                         episodes_per_epoch=episodes, val_episodes=2, test_episodes=12)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, limit_val_batches=0)
    trainer.fit(model, data)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def judge_checkpoint(tmp_path_factory):
    return train_judge(tmp_path_factory.mktemp("judge") / "protonet.ckpt")


@pytest.fixture(scope="module")
def episodes():
    """12 test episodes (all 60 held-out classes): 5 classes x 4 supports x 16 real images."""
    data = NpzDataModule("hanzi", ways=WAYS, shots=SHOTS, queries=QUERIES, meta_batch_size=12, test_episodes=12)
    data.setup("test")
    return next(iter(data.test_dataloader()))


def per_class(batch, judge, generated_of):
    """Per-class metrics ``{name: [episodes * ways]}`` with ``generated_of(support [N,K,...], real [N,M,...])``."""
    values = []
    for task in batch:
        order = task.support_y.argsort(stable=True)
        support = task.support_x[order].unflatten(0, (WAYS, SHOTS))
        real = task.query_x[task.query_y.argsort(stable=True)].unflatten(0, (WAYS, QUERIES))
        generated = generated_of(support, real)
        embed = lambda x: judge(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # noqa: E731
        values.append(generation_scores(embed(generated), embed(real), embed(support)))
    return {name: torch.cat([v[name] for v in values]) for name in values[0]}


def test_real_held_out_images_score_the_judges_accuracy(judge_checkpoint, episodes):
    learner = PrototypicalNetwork.load_from_checkpoint(judge_checkpoint, map_location="cpu", weights_only=True).eval()
    judge = Judge.from_checkpoint(str(judge_checkpoint))
    accuracy = torch.stack([
        (learner.predict_task(t.support_x, t.support_y, t.query_x).argmax(1) == t.query_y).double().mean()
        for t in episodes]).mean()
    fidelity = per_class(episodes, judge, lambda support, real: real)["class_fidelity"].mean()
    assert accuracy > 0.8                          # the judge is a judge (README: 96.7% after 100-200 episodes)
    assert abs(float(fidelity) - float(accuracy)) < 1e-6
    # a generator that returns new real images of the class is as diverse and as far from the supports as they are
    halves = per_class(episodes, judge, lambda support, real: real.flip(1))
    assert torch.allclose(halves["diversity"], torch.ones(60, dtype=torch.float64))
    assert torch.allclose(halves["support_distance"], torch.ones(60, dtype=torch.float64))


def test_kid_of_two_disjoint_real_halves_is_zero_within_its_ci(judge_checkpoint, episodes):
    judge = Judge.from_checkpoint(str(judge_checkpoint))
    kids, other = [], []
    for task in episodes:
        for c in range(WAYS):
            real = judge(task.query_x[task.query_y == c])
            kids.append(kernel_inception_distance(real[:8], real[8:]))
            wrong = judge(task.query_x[task.query_y == (c + 1) % WAYS])
            other.append(kernel_inception_distance(real[:8], wrong[8:]))
    mean, ci = mean_and_ci95(torch.stack(kids))
    assert abs(mean) <= ci, (mean, ci)
    mean_other, ci_other = mean_and_ci95(torch.stack(other))
    assert mean_other - ci_other > 0 and mean_other > 5 * abs(mean)   # another class's images are far


def test_noise_scores_chance_and_the_supports_score_copying(judge_checkpoint, episodes):
    judge = Judge.from_checkpoint(str(judge_checkpoint))
    generator = torch.Generator().manual_seed(0)
    noise = per_class(episodes, judge, lambda support, real: torch.rand(real.shape, generator=generator))
    mean, ci = mean_and_ci95(noise["class_fidelity"])
    assert abs(mean - 1 / WAYS) <= max(ci, 0.05), (mean, ci)
    copies = per_class(episodes, judge, lambda support, real: support)
    assert copies["class_fidelity"].mean() >= 0.97
    assert (copies["support_distance"] < 1e-3).all()         # << 1: the metric exposes copying
    jitter = per_class(episodes, judge, lambda support, real: torch.stack(
        [affine_jitter(s, QUERIES, generator) for s in support]))
    # jittered supports are no copies to this judge (measured 1.2: further from the supports than other fonts)
    assert jitter["support_distance"].mean() > 0.5 and jitter["class_fidelity"].mean() >= 0.8


def test_the_metrics_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    assert torch.isclose(mean_pairwise_distance(x), torch.tensor((5 + 10 + 5) / 3, dtype=torch.float64))
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    def k(u, v):
        return (u @ v / 3 + 1) ** 3
    xx = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / 20
    assert torch.isclose(kernel_inception_distance(a, b), xx + yy - 2 * xy)
    # fidelity: class 0's images are nearest prototype 0, class 1's half nearest prototype 0
    support = torch.tensor([[[0.0], [0.0]], [[10.0], [10.0]]], dtype=torch.float64)
    generated = torch.tensor([[[1.0], [2.0]], [[9.0], [1.0]]], dtype=torch.float64)
    real = torch.tensor([[[1.0], [3.0]], [[8.0], [12.0]]], dtype=torch.float64)
    scores = generation_scores(generated, real, support)
    assert scores["class_fidelity"].tolist() == [1.0, 0.5]
    assert torch.allclose(scores["support_distance"], torch.tensor([1.5 / 2.0, 5.0 / 2.0], dtype=torch.float64))
    assert torch.allclose(scores["diversity"], torch.tensor([1 / 2, 8 / 4], dtype=torch.float64))


def test_affine_jitter_without_jitter_is_the_identity_and_judge_errors_name_the_field(tmp_path):
    images = torch.rand(3, 1, 8, 8)
    same = affine_jitter(images, 5, torch.Generator().manual_seed(0), degrees=0, translate=0, scale=(1, 1))
    assert torch.allclose(same, images[[0, 1, 2, 0, 1]], atol=1e-5)
    moved = affine_jitter(images, 3, torch.Generator().manual_seed(0))
    assert not torch.allclose(moved, images, atol=1e-2)
    with pytest.raises(ConfigurationError, match=r"^model.init_args.judge_ckpt='.*nowhere.ckpt': .* is not a file"):
        Judge.from_checkpoint(str(tmp_path / "nowhere.ckpt"), "model.init_args.judge_ckpt")
    pixels = Judge.pixels()
    assert pixels(images).shape == (3, 64)
