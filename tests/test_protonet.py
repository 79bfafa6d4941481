"""Prototypical networks and the MetricLearner base: logits, invariances, independence of episodes,
the meta-batch embedded at once, learning on held-out hanzi, errors."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from meta_helpers import (episode_alone_and_among_others, meta_gradient, pixel_prototype_accuracy,
                          quiet_trainer, random_classification_batch, relative_difference)
from torch import nn

from lightning_meta import ConfigurationError, NpzDataModule, PrototypicalNetwork
from lightning_meta.models import MLP, Conv4


def embedding_net() -> Conv4:
    return Conv4(1, None, hidden_channels=8, pooling="max", batch_norm_stats="running")


def test_logits_are_minus_squared_distances_to_class_means():
    torch.manual_seed(0)
    model = PrototypicalNetwork(MLP(6, None, (5,))).double().eval()
    support_x, query_x = torch.randn(6, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    support_y = torch.tensor([0, 1, 2, 0, 1, 2])
    logits, _ = model.evaluate_task(support_x, support_y, query_x, torch.zeros(4, dtype=torch.long))
    support, query = model.embedding(support_x), model.embedding(query_x)
    by_hand = torch.empty(4, 3, dtype=torch.float64)
    for c in range(3):
        prototype = support[support_y == c].mean(0)
        for q in range(4):
            by_hand[q, c] = -((query[q] - prototype) ** 2).sum()
    torch.testing.assert_close(logits, by_hand, rtol=1e-10, atol=1e-10)


def test_cosine_logits_are_scaled_cosine_similarities():
    torch.manual_seed(0)
    model = PrototypicalNetwork(MLP(6, None, (5,)), distance="cosine", temperature=3.0).double().eval()
    support_x, query_x = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    support_y = torch.tensor([0, 1, 0, 1])
    logits, _ = model.evaluate_task(support_x, support_y, query_x, torch.zeros(3, dtype=torch.long))
    support, query = model.embedding(support_x), model.embedding(query_x)
    prototypes = torch.stack([support[support_y == c].mean(0) for c in range(2)])
    by_hand = 3.0 * F.cosine_similarity(query.unsqueeze(1), prototypes.unsqueeze(0), dim=-1)
    torch.testing.assert_close(logits, by_hand)


def test_permuting_the_support_set_changes_nothing():
    torch.manual_seed(0)
    model = PrototypicalNetwork(embedding_net()).eval()
    batch = random_classification_batch(1, 5, 3, 2, (1, 28, 28))
    order = torch.randperm(15)
    before, _ = model.evaluate_task(batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0])
    after, _ = model.evaluate_task(batch.support_x[0][order], batch.support_y[0][order], batch.query_x[0],
                                   batch.query_y[0])
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-4)


def test_an_episode_is_evaluated_alone_whatever_its_batch():
    torch.manual_seed(0)
    model = PrototypicalNetwork(embedding_net())
    model.train()  # move the running statistics away from their initial values
    with torch.no_grad():
        model.embed(torch.randn(32, 1, 28, 28) * 3 + 1)
    model.eval()
    alone, among_others = episode_alone_and_among_others(model, (1, 28, 28))
    assert torch.equal(alone[2], among_others[2])


@pytest.mark.parametrize("batch_norm", [False, True])
def test_embedding_the_meta_batch_at_once_gives_the_per_episode_meta_gradient(batch_norm):
    """Without BatchNorm the two training modes are the same computation; with it the meta-batch
    shares its statistics, so they differ (the documented price of the speed option)."""
    torch.manual_seed(0)
    net = Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running") if batch_norm else \
        nn.Sequential(nn.Flatten(), nn.Linear(49, 8), nn.ReLU(), nn.Linear(8, 6))
    batch = random_classification_batch(3, 4, 2, 3, (1, 28, 28) if batch_norm else (1, 7, 7))
    together = meta_gradient(PrototypicalNetwork(copy.deepcopy(net), embed_together=True).double(), batch)
    apart = meta_gradient(PrototypicalNetwork(copy.deepcopy(net), embed_together=False).double(), batch)
    difference = relative_difference(together, apart)
    if batch_norm:
        assert difference > 1e-3
    else:
        assert difference < 1e-10


def test_support_set_then_forward_is_the_evaluation():
    torch.manual_seed(0)
    model = PrototypicalNetwork(embedding_net()).eval()
    batch = random_classification_batch(1, 3, 2, 2, (1, 28, 28))
    with pytest.raises(RuntimeError, match="process_support_set"):
        model(batch.query_x[0])
    model.process_support_set(batch.support_x[0], batch.support_y[0])
    expected, _ = model.evaluate_task(*batch[0])
    torch.testing.assert_close(model(batch.query_x[0]), expected)
    with pytest.raises(ValueError, match="missing \\[1\\]"):
        model.process_support_set(batch.support_x[0][:2], torch.tensor([0, 2]))


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigurationError, match="model.init_args.distance='manhattan'"):
        PrototypicalNetwork(embedding_net(), distance="manhattan")
    with pytest.raises(ConfigurationError, match="model.init_args.temperature"):
        PrototypicalNetwork(embedding_net(), distance="cosine", temperature=0.0)
    with pytest.raises(ConfigurationError, match="batch_norm_stats: running"):
        PrototypicalNetwork(Conv4(1, None, pooling="max"))  # BatchNorm without running statistics


def test_a_learning_rate_schedule_steps_once_per_epoch():
    class Scheduled(PrototypicalNetwork):
        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}

    model = Scheduled(MLP(4, None, (4,)))
    batches = [random_classification_batch(2, 2, 1, 1, (4,), seed=s) for s in range(3)]
    quiet_trainer(max_epochs=2, limit_val_batches=0).fit(
        model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert model.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)


@pytest.mark.slow
@pytest.mark.parametrize("shots,ways,steps,target", [(1, 20, 200, 0.90), (5, 10, 150, 0.97)])
def test_protonet_learns_held_out_hanzi(shots, ways, steps, target):
    """Higher-way training and 5-way tests on the 60 held-out classes of the hanzi subset."""
    pl.seed_everything(0)
    data = NpzDataModule(path="hanzi", ways=ways, test_ways=5, shots=shots, queries=5,
                         test_queries=5, rotations=(0, 90, 180, 270), meta_batch_size=1, episodes_per_epoch=steps,
                         val_episodes=4, test_episodes=200)
    model = PrototypicalNetwork(Conv4(1, None, pooling="max", batch_norm_stats="running"))
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    ours = trainer.test(model, data, verbose=False)[0]
    pixels = pixel_prototype_accuracy(data).mean().item()
    assert ours["test/acc"] >= target
    assert ours["test/acc"] > pixels + 3 * ours["test/acc_ci95"]


def test_gradient_equals_learn2learns_prototypical_network_in_float64():
    """The reference: learn2learn's ``LightningPrototypicalNetworks.meta_learn`` on the same episodes
    and weights (its layout: each class's shots, then its queries; placed so that its unstable sort by
    label puts them back there)."""
    l2l = pytest.importorskip("learn2learn")
    torch.manual_seed(0)
    embedding = Conv4(1, None, hidden_channels=8, pooling="max", batch_norm_stats="running").double()
    ways, shots, queries = 4, 2, 3
    batch = random_classification_batch(3, ways, shots, queries, (1, 28, 28))
    reference = l2l.algorithms.LightningPrototypicalNetworks(copy.deepcopy(embedding))
    for support_x, support_y, query_x, query_y in batch:
        intended = torch.cat([torch.cat([support_x[support_y == c], query_x[query_y == c]]) for c in range(ways)])
        labels = torch.arange(ways).repeat_interleave(shots + queries)
        data = torch.empty_like(intended)
        data[torch.sort(labels).indices] = intended
        loss, _ = reference.meta_learn((data.unsqueeze(0).double(), labels.unsqueeze(0)), 0, ways, shots, queries)
        (loss / batch.num_tasks).backward()
    expected = {f"embedding.{n}": p.grad for n, p in reference.features.named_parameters()}
    ours = meta_gradient(PrototypicalNetwork(copy.deepcopy(embedding)), batch)
    assert relative_difference(ours, expected) < 1e-10
