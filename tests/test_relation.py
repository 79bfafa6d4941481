"""Relation networks: the paper's shapes, scores, the K-shot sum, invariances, independence of episodes,
the MSE objective, checkpoints, configs, learning on held-out hanzi, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from meta_helpers import (episode_alone_and_among_others, pixel_prototype_accuracy, quiet_trainer,
                          random_classification_batch)
from torch import nn
from torch.utils.data import DataLoader

from lightning_meta import ConfigurationError, NpzDataModule
from lightning_meta.algorithms.relation import RelationNetwork
from lightning_meta.models import Conv4, build_module
from lightning_meta.models.relation import RelationEmbedding

REPO = Path(__file__).resolve().parents[1]


def small_model(**kwargs) -> RelationNetwork:
    return RelationNetwork(RelationEmbedding(1, hidden_channels=8, image_size=28), relation_channels=8, **kwargs)


def warmed_up(model: RelationNetwork) -> RelationNetwork:
    """Move the running statistics of both networks away from their initial values, then eval()."""
    model.train()
    with torch.no_grad():
        features = model.embed(torch.randn(40, 1, 28, 28) * 3 + 1)
        model.relation(features[:5], features[5:])
    return model.eval()


def test_the_paper_feature_map_and_relation_sizes():
    omniglot, mini = RelationEmbedding(1, image_size=28), RelationEmbedding(3, image_size=84)
    assert omniglot(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 5, 5) and omniglot.output_shape == (64, 5, 5)
    assert mini(torch.zeros(2, 3, 84, 84)).shape == (2, 64, 19, 19) and mini.output_shape == (64, 19, 19)
    # official code: padded relation convolutions on Omniglot (5 -> 2 -> 1), unpadded on mini-ImageNet (19 -> 8 -> 3)
    assert RelationNetwork(omniglot).relation.fc1.in_features == 64
    assert RelationNetwork(mini).relation.fc1.in_features == 64 * 3 * 3
    assert RelationNetwork(mini).relation.fc2.out_features == 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in omniglot.modules()) == 2
    # running statistics, as MetricLearner requires
    assert all(m.track_running_stats for m in RelationNetwork(omniglot).modules() if isinstance(m, nn.BatchNorm2d))


def test_scores_are_in_the_unit_interval_and_probabilities_sum_to_one():
    torch.manual_seed(0)
    model = warmed_up(small_model())
    batch = random_classification_batch(1, 5, 2, 3, (1, 28, 28))
    model.process_support_set(batch.support_x[0], batch.support_y[0])
    logits = model(batch.query_x[0] * 4)  # classify gives logits; the paper's relation scores are their sigmoid
    scores = torch.sigmoid(logits)
    assert scores.shape == (15, 5)
    assert scores.min() >= 0 and scores.max() <= 1 and scores.std() > 0
    probabilities = model.probabilities(logits)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(15))
    torch.testing.assert_close(probabilities, scores / scores.sum(-1, keepdim=True))
    # evaluation predictions are the log scores: logits whose softmax is `probabilities`
    log_scores, before = model.evaluate_task(batch.support_x[0], batch.support_y[0], batch.query_x[0] * 4,
                                             batch.query_y[0])
    assert before is None
    torch.testing.assert_close(log_scores.exp(), scores.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_scores.softmax(-1), probabilities.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(log_scores.argmax(-1), scores.argmax(-1))


def test_predicted_probabilities_are_the_normalised_scores():
    """The generic prediction path (softmax of the evaluation predictions) gives `probabilities`."""
    torch.manual_seed(0)
    model = warmed_up(small_model())
    if not hasattr(model, "predict_task"):
        pytest.skip("MetaLearner.predict_task is not part of this checkout")
    batch = random_classification_batch(1, 4, 2, 3, (1, 28, 28), seed=3)
    predicted = model.predict_task(batch.support_x[0], batch.support_y[0], batch.query_x[0])
    model.process_support_set(batch.support_x[0], batch.support_y[0])
    torch.testing.assert_close(predicted, model.probabilities(model(batch.query_x[0])).detach(), rtol=1e-5, atol=1e-6)


def test_k_shot_class_maps_are_sums_and_scores_are_the_concatenated_pairs():
    torch.manual_seed(0)
    model = warmed_up(small_model()).double()
    support_x, query_x = torch.randn(9, 1, 28, 28, dtype=torch.float64), torch.randn(4, 1, 28, 28, dtype=torch.float64)
    support_y = torch.tensor([2, 0, 1, 1, 2, 0, 0, 1, 2])
    model.process_support_set(support_x, support_y)
    scores = torch.sigmoid(model(query_x))
    support, query = model.embedding(support_x), model.embedding(query_x)
    sums = torch.stack([support[support_y == c].sum(0) for c in range(3)])
    torch.testing.assert_close(model.support_state(support, support_y, 3), sums, rtol=1e-12, atol=1e-12)
    by_hand = torch.empty(4, 3, dtype=torch.float64)
    for q in range(4):
        for c in range(3):  # the paper's concatenation, class map first, one pair at a time
            pair = torch.cat([sums[c], query[q]]).unsqueeze(0)
            by_hand[q, c] = torch.sigmoid(model.relation.pair_logits(pair))[0]
    torch.testing.assert_close(scores, by_hand, rtol=1e-10, atol=1e-12)
    # a mean instead of a sum would change the scores: the rule is really the sum
    means = model.relation(sums / 3, query).sigmoid()
    assert (means - scores).abs().max() > 1e-4


def test_permuting_the_support_set_changes_nothing():
    torch.manual_seed(0)
    model = warmed_up(small_model())
    batch = random_classification_batch(1, 5, 3, 2, (1, 28, 28))
    order = torch.randperm(15)
    before, _ = model.evaluate_task(batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0])
    after, _ = model.evaluate_task(batch.support_x[0][order], batch.support_y[0][order], batch.query_x[0],
                                   batch.query_y[0])
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
    assert torch.equal(before.argmax(-1), after.argmax(-1))


def test_an_episode_is_evaluated_alone_whatever_its_batch():
    torch.manual_seed(0)
    model = warmed_up(small_model())
    alone, among_others = episode_alone_and_among_others(model, (1, 28, 28))
    assert torch.equal(alone[2], among_others[2])
    assert not torch.equal(alone[1], among_others[1])


def test_the_training_loss_is_the_mse_to_one_hot_relations():
    torch.manual_seed(0)
    model = small_model()
    batch = random_classification_batch(1, 4, 1, 3, (1, 28, 28))
    loss, logits = model.training_objective(model.meta_parameters(), *batch[0])
    scores = torch.sigmoid(logits)
    targets = torch.zeros(12, 4)
    targets[torch.arange(12), batch.query_y[0]] = 1
    torch.testing.assert_close(loss, ((scores - targets) ** 2).mean())
    assert scores.min() >= 0 and scores.max() <= 1
    loss.backward()
    assert model.relation.fc2.weight.grad.abs().sum() > 0 and model.embedding.features[0][0].weight.grad.abs().sum() > 0


def test_load_from_checkpoint_needs_no_arguments(tmp_path):
    torch.manual_seed(0)
    model = small_model(relation_features=6, gradient_clip_val=0.5)
    batches = [random_classification_batch(2, 3, 1, 2, (1, 28, 28), seed=s) for s in range(2)]
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    path = tmp_path / "relation.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]  # what `test --ckpt_path` does
    assert hparams["embedding"]["class_path"] == "lightning_meta.models.relation.RelationEmbedding"
    loaded = RelationNetwork.load_from_checkpoint(path)
    assert type(loaded) is RelationNetwork and loaded.relation.fc1.out_features == 6
    assert loaded.gradient_clip_val == 0.5 and loaded.feature_shape == model.feature_shape
    state = model.state_dict()
    assert set(loaded.state_dict()) == set(state)
    for name, value in state.items():
        assert torch.equal(loaded.state_dict()[name], value), name
    model.eval(), loaded.eval()
    batch = random_classification_batch(1, 3, 1, 2, (1, 28, 28), seed=9)
    assert torch.equal(model.evaluate_task(*batch[0])[0], loaded.evaluate_task(*batch[0])[0])


def test_an_embedding_without_output_shape_is_sized_from_its_arguments_or_input_shape():
    class Maps(nn.Module):  # no output_shape, no init_args
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            return self.conv(x)

    model = RelationNetwork(Maps(), input_shape=[1, 28, 28], relation_channels=4)
    assert model.feature_shape == (4, 13, 13) and model.relation.padding == 0
    with pytest.raises(ConfigurationError, match="model.init_args.input_shape"):
        RelationNetwork(Maps())
    with pytest.raises(ConfigurationError, match=r"model.init_args.input_shape=\[1, 28\]"):
        RelationNetwork(Maps(), input_shape=[1, 28])


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigurationError, match="compares feature maps.*RelationEmbedding"):
        RelationNetwork(Conv4(1, None, pooling="max", batch_norm_stats="running"))  # flattened output
    with pytest.raises(ConfigurationError, match="model.init_args.relation_channels=0"):
        small_model_with(relation_channels=0)
    with pytest.raises(ConfigurationError, match="model.init_args.relation_features"):
        small_model_with(relation_features=-1)
    with pytest.raises(ConfigurationError, match="model.init_args.relation_padding"):
        small_model_with(relation_padding=-1)
    with pytest.raises(ConfigurationError, match="vanish.*model.init_args.relation_padding"):
        small_model_with(relation_padding=0)  # 5x5 maps: 3 -> 1 -> nothing
    with pytest.raises(ValueError, match="image_size=8 is too small"):
        RelationEmbedding(1, image_size=8)


def small_model_with(**kwargs) -> RelationNetwork:
    return RelationNetwork(RelationEmbedding(1, hidden_channels=4, image_size=28), **kwargs)


def test_data_of_another_size_is_refused_before_training():
    model = RelationNetwork(RelationEmbedding(1, hidden_channels=4, image_size=84), relation_channels=4)
    data = NpzDataModule(path="hanzi", ways=5, shots=1, queries=1, meta_batch_size=1,
                         episodes_per_epoch=2, val_episodes=1, test_episodes=1)
    with pytest.raises(ConfigurationError, match=r"feature maps \[4, 5, 5\].*sized for \[4, 19, 19\]"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, data)


@pytest.mark.parametrize("name,shots,queries,size,fc_inputs", [
    ("relation_omniglot_5w1s", 1, 19, 28, 64), ("relation_omniglot_5w5s", 5, 15, 28, 64),
    ("relation_miniimagenet_5w1s", 1, 15, 84, 576)])
def test_configs_hold_the_paper_settings(name, shots, queries, size, fc_inputs):
    """The YAML values (parsing by the CLI is tests/test_data_configs.py's job) build the paper's model."""
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    data, model = config["data"]["init_args"], config["model"]
    assert config["model"]["class_path"] == "lightning_meta.algorithms.relation.RelationNetwork"
    assert (data["ways"], data["shots"], data["queries"], data["meta_batch_size"]) == (5, shots, queries, 1)
    assert data["test_episodes"] == 600 and data["image_size"] == size
    assert config["optimizer"]["class_path"] == "torch.optim.Adam" and config["optimizer"]["init_args"]["lr"] == 1e-3
    built = build_module(model)
    assert isinstance(built, RelationNetwork) and built.relation.fc1.in_features == fc_inputs
    assert built.embedding.init_args["image_size"] == size


@pytest.mark.slow
def test_relation_network_learns_held_out_hanzi():
    """5-way 1-shot with the paper's 19 queries per class, 200 episodes, on the 60 held-out classes."""
    pl.seed_everything(0)
    data = NpzDataModule(path="hanzi", ways=5, shots=1, queries=19, test_queries=5,
                         rotations=(0, 90, 180, 270), meta_batch_size=1, episodes_per_epoch=200,
                         val_episodes=4, test_episodes=200)
    model = RelationNetwork(RelationEmbedding(1, image_size=28))
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    ours = trainer.test(model, data, verbose=False)[0]
    pixels = pixel_prototype_accuracy(data).mean().item()
    assert 0.70 < pixels < 0.90  # the data set's reference point (about 81%)
    assert ours["test/acc"] >= 0.88
    assert ours["test/acc"] > pixels + 3 * ours["test/acc_ci95"]
