"""Matching networks and Siamese networks: the attention and pair-scoring rules, independence of the
episodes, argument errors, and learning against the raw-pixel baseline on held-out hanzi."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from meta_helpers import pixel_prototype_accuracy, quiet_trainer, random_classification_batch

from lightning_meta import NpzDataModule
from lightning_meta.algorithms.matching import MatchingNetwork
from lightning_meta.algorithms.siamese import SiameseNetwork
from lightning_meta.errors import ConfigurationError
from lightning_meta.models import Conv4
from lightning_meta.tasks import TaskBatch


def embedding(hidden: int = 8) -> Conv4:
    return Conv4(1, None, hidden_channels=hidden, pooling="max", batch_norm_stats="running")


def matching(seed: int = 0, **kwargs) -> MatchingNetwork:
    torch.manual_seed(seed)
    if kwargs.get("full_context_embeddings"):
        kwargs.setdefault("feature_dim", 8)
    return MatchingNetwork(embedding(), **kwargs).double().eval()


def siamese(seed: int = 0) -> SiameseNetwork:
    torch.manual_seed(seed)
    model = SiameseNetwork(embedding(), feature_dim=8).double().eval()
    with torch.no_grad():  # a scorer far from its initialisation, so ties and symmetries are not accidental
        model.scorer.weight.normal_()
        model.scorer.bias.fill_(0.7)
    return model


def episode(ways: int = 5, shots: int = 2, queries: int = 3, seed: int = 0) -> TaskBatch:
    batch = random_classification_batch(1, ways, shots, queries, (1, 28, 28), seed=seed)
    return TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y,
                     index=batch.index)


def logits_of(model, batch: TaskBatch, task: int = 0) -> torch.Tensor:
    with torch.no_grad():
        model.process_support_set(batch.support_x[task], batch.support_y[task])
        return model(batch.query_x[task])


# ---------------------------------------------------------------------------------------------- matching
def test_matching_attention_sums_to_one_and_gives_the_class_probabilities():
    model, batch = matching(), episode(ways=4, shots=3, queries=5)
    with torch.no_grad():
        support = model.embed(batch.support_x[0])
        state = model.support_state(support, batch.support_y[0], 4)
        query = model.embed(batch.query_x[0])
        attention = model.attention(state, query).exp()
        logits = model.classify(state, query)
    assert attention.shape == (20, 12)
    torch.testing.assert_close(attention.sum(1), torch.ones(20, dtype=torch.float64))
    # by hand: softmax of 10 x cosine, summed per class (attention-weighted one-hot labels)
    cosine = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T
    expected = (10 * cosine).softmax(1) @ F.one_hot(batch.support_y[0], 4).double()
    torch.testing.assert_close(attention, (10 * cosine).softmax(1))
    torch.testing.assert_close(model.probabilities(logits), expected)
    torch.testing.assert_close(logits.exp(), expected)  # the logits are log-probabilities: the paper's loss
    assert not torch.allclose(expected, expected[:1].expand_as(expected))  # queries are told apart


def test_matching_predictions_do_not_depend_on_the_support_order_without_fce():
    model, batch = matching(), episode(ways=5, shots=2, queries=3)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    permuted = TaskBatch(batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y)
    torch.testing.assert_close(logits_of(model, permuted), logits_of(model, batch))


def test_fce_classifies_queries_independently_but_reads_the_support_set_in_order():
    model, batch = matching(full_context_embeddings=True), episode(ways=5, shots=2, queries=3)
    logits = logits_of(model, batch)
    # each query on its own: permuting the queries permutes the rows of the logits
    order = torch.randperm(15, generator=torch.Generator().manual_seed(2))
    queries = TaskBatch(batch.support_x, batch.support_y, batch.query_x[:, order], batch.query_y[:, order])
    torch.testing.assert_close(logits_of(model, queries), logits[order])
    # the bidirectional LSTM reads the support set as a sequence: its order matters (the paper accepts it)
    support_order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    shuffled = TaskBatch(batch.support_x[:, support_order], batch.support_y[:, support_order], batch.query_x,
                         batch.query_y)
    assert not torch.allclose(logits_of(model, shuffled), logits, atol=1e-6)
    torch.testing.assert_close(model.probabilities(logits_of(model, shuffled)).sum(1),
                               torch.ones(15, dtype=torch.float64))


def test_fce_runs_forward_and_backward_and_changes_the_embeddings():
    model, batch = matching(full_context_embeddings=True, fce_steps=3), episode(ways=5, shots=1, queries=4)
    model.train()
    support, query = model.embed(batch.support_x[0]), model.embed(batch.query_x[0])
    state = model.support_state(support, batch.support_y[0], 5)
    assert state.features.shape == support.shape
    assert (state.features - support).abs().max() > 1e-3  # g(x, S) != g'(x): the LSTM's outputs are added
    contextual = model.context_queries(query, state.features)
    assert contextual.shape == query.shape and (contextual - query).abs().max() > 1e-3
    loss, logits = model.episode_loss(support, batch.support_y[0], query, batch.query_y[0])
    assert logits.shape == (20, 5) and torch.isfinite(loss)
    loss.backward()
    for name in ("support_lstm.weight_ih_l0", "support_lstm.weight_ih_l0_reverse", "query_lstm.weight_ih",
                 "query_lstm.weight_hh", "embedding.features.0.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("fce", [False, True])
def test_matching_episode_predictions_do_not_depend_on_the_other_episodes_of_the_batch(fce):
    model = matching(full_context_embeddings=fce)
    target = episode(seed=0)
    first = TaskBatch(*(torch.cat([t, o]) for t, o in zip(target.tensors(), episode(seed=1).tensors())))
    second = TaskBatch(*(torch.cat([o2, o3, t]) for t, o2, o3 in zip(
        target.tensors(), episode(seed=2).tensors(), episode(seed=3).tensors())))
    with torch.no_grad():
        alone = model.evaluate_batch(target)[0][0]
        in_first = model.evaluate_batch(first)[0][0]
        in_second = model.evaluate_batch(second)[0][2]
        neighbour = model.evaluate_batch(first)[0][1]
    torch.testing.assert_close(in_first, alone)
    torch.testing.assert_close(in_second, alone)
    assert not torch.allclose(neighbour, alone)  # the neighbours are really different episodes


def test_learned_temperature_is_trained_and_the_model_rebuilds_from_its_hyperparameters():
    model = matching(full_context_embeddings=True, learn_temperature=True, temperature=5.0)
    assert "log_temperature" in dict(model.named_parameters())
    torch.testing.assert_close(model.temperature, torch.tensor(5.0, dtype=torch.float64))
    batch = episode()
    support, query = model.embed(batch.support_x[0]), model.embed(batch.query_x[0])
    model.episode_loss(support, batch.support_y[0], query, batch.query_y[0])[0].backward()
    assert model.log_temperature.grad.abs() > 0
    rebuilt = MatchingNetwork(**model.hparams)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters, from primitive hparams
    assert isinstance(model.hparams["embedding"], dict)
    fixed = matching()
    assert "log_temperature" not in fixed.state_dict() and not any("log_temperature" in n
                                                                   for n, _ in fixed.named_parameters())


# ---------------------------------------------------------------------------------------------- siamese
def test_siamese_pair_scores_are_symmetric():
    model = siamese()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g).double(), torch.randn(4, 8, generator=g).double()
    scores = model.pair_logits(a, b)
    assert scores.shape == (6, 4)
    torch.testing.assert_close(model.pair_logits(b, a), scores.T)
    # symmetric in the images too, through the twin embedding
    batch = episode(ways=3, shots=1, queries=2)
    with torch.no_grad():
        x, y = model.embed(batch.support_x[0]), model.embed(batch.query_x[0])
    torch.testing.assert_close(model.pair_logits(x, y), model.pair_logits(y, x).T)
    assert scores.std() > 0.1  # not a constant scorer


def test_siamese_argmax_is_the_class_of_the_most_similar_support_example():
    model = siamese()
    batch = episode(ways=5, shots=3, queries=4, seed=4)
    support_y = batch.support_y[0]
    logits = logits_of(model, batch)
    with torch.no_grad():
        support, query = model.embed(batch.support_x[0]), model.embed(batch.query_x[0])
    # by hand: one pair at a time, w . |h1 - h2| + b
    weight, bias = model.scorer.weight[0].detach(), model.scorer.bias[0].detach()
    scores = torch.tensor([[float(weight @ (q - s).abs() + bias) for s in support] for q in query],
                          dtype=torch.float64)
    nearest = support_y[scores.argmax(1)]
    assert torch.equal(logits.argmax(1), nearest)
    expected = torch.stack([scores[:, support_y == c].max(1).values for c in range(5)], 1)  # max over K shots
    torch.testing.assert_close(logits, expected)
    assert len(nearest.unique()) > 1


def test_siamese_trains_on_balanced_same_and_different_pairs():
    model = siamese()
    batch = episode(ways=4, shots=2, queries=3, seed=5)
    support, query = model.embed(batch.support_x[0]), model.embed(batch.query_x[0])
    loss, logits = model.episode_loss(support, batch.support_y[0], query, batch.query_y[0])
    pairs = model.pair_logits(query, support)
    same = batch.query_y[0].unsqueeze(1) == batch.support_y[0].unsqueeze(0)
    assert same.sum() == 12 * 2 and (~same).sum() == 12 * 6
    bce = F.binary_cross_entropy_with_logits(pairs, same.double(), reduction="none")
    torch.testing.assert_close(loss, 0.5 * (bce[same].mean() + bce[~same].mean()))
    assert not torch.allclose(loss, bce.mean())  # the weighting matters here
    torch.testing.assert_close(logits, model.classify(model.support_state(support, batch.support_y[0], 4), query))


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(full_context_embeddings=True), "model.init_args.feature_dim is required"),
    (dict(fce_steps=0), "model.init_args.fce_steps=0"),
    (dict(temperature=0.0), "model.init_args.temperature=0.0"),
    (dict(feature_dim=-3), "model.init_args.feature_dim=-3"),
    (dict(full_context_embeddings="yes"), "model.init_args.full_context_embeddings='yes'"),
    (dict(learn_temperature=1), "model.init_args.learn_temperature=1"),
])
def test_matching_bad_arguments(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        MatchingNetwork(embedding(), **kwargs)


def test_siamese_bad_arguments():
    with pytest.raises(ConfigurationError, match="model.init_args.feature_dim=0"):
        SiameseNetwork(embedding(), feature_dim=0)
    with pytest.raises(ConfigurationError, match="batch_norm_stats: running"):
        SiameseNetwork(Conv4(1, None, hidden_channels=8, pooling="max"), feature_dim=8)


@pytest.mark.parametrize("make", [
    lambda: MatchingNetwork(embedding(), full_context_embeddings=True, feature_dim=16),
    lambda: SiameseNetwork(embedding(), feature_dim=16),
])
def test_a_wrong_feature_dim_is_named_at_the_first_forward_pass(make):
    model = make().eval()
    message = "embedding outputs 8 features .* set model.init_args.feature_dim to 8"
    with pytest.raises(ConfigurationError, match=message):
        model.process_support_set(torch.randn(5, 1, 28, 28), torch.arange(5))


# ---------------------------------------------------------------------------------------------- Lightning
@pytest.mark.parametrize("make, embed_together", [
    (lambda together: MatchingNetwork(embedding(), full_context_embeddings=True, feature_dim=8,
                                      learn_temperature=True, embed_together=together), True),
    (lambda together: MatchingNetwork(embedding(), full_context_embeddings=True, feature_dim=8,
                                      embed_together=together), False),
    (lambda together: SiameseNetwork(embedding(), feature_dim=8, embed_together=together), True),
    (lambda together: SiameseNetwork(embedding(), feature_dim=8, embed_together=together), False),
])
def test_fit_and_test_through_the_trainer(make, embed_together):
    pl.seed_everything(0)
    data = NpzDataModule(path="hanzi", ways=5, shots=1, queries=2, test_queries=3,
                         meta_batch_size=2, episodes_per_epoch=6, val_episodes=2, test_episodes=4)
    model = make(embed_together)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters()), "every parameter trains"
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    result = trainer.test(model, data, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0 and result["test/loss"] > 0


def test_siamese_training_objective_is_the_pair_loss():
    model = siamese()
    batch = episode(ways=3, shots=1, queries=2, seed=6)
    loss, logits = model.training_objective(None, *(t[0] for t in batch.tensors()))
    features = model.embed(torch.cat([batch.support_x[0], batch.query_x[0]]))
    expected = model.episode_loss(features[:3], batch.support_y[0], features[3:], batch.query_y[0])
    torch.testing.assert_close(loss, expected[0])
    assert not torch.allclose(loss, F.cross_entropy(logits, batch.query_y[0]))


# ---------------------------------------------------------------------------------------------- learning
def hanzi(shots: int, steps: int) -> NpzDataModule:
    """20-way training episodes (higher way, as ProtoNet), 5-way test episodes on held-out characters."""
    return NpzDataModule(path="hanzi", ways=20, test_ways=5, shots=shots, queries=5,
                         test_queries=5, rotations=(0, 90, 180, 270), meta_batch_size=1, episodes_per_epoch=steps,
                         val_episodes=4, test_episodes=200)


def fit_and_test(model, data) -> tuple[dict, float]:
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    start = time.process_time()
    trainer.fit(model, data)
    seconds = time.process_time() - start
    result = trainer.test(model, data, verbose=False)[0]
    print(f"{type(model).__name__}: fit {seconds:.1f} s of CPU, test/acc {result['test/acc']:.4f} "
          f"+- {result['test/acc_ci95']:.4f}")
    return result, seconds


def beats_pixels(result: dict, data) -> None:
    pixels = pixel_prototype_accuracy(data)
    assert 0.70 < pixels.mean() < 0.90  # the data set's reference point (about 81% 5-way 1-shot)
    assert result["test/acc"] > pixels.mean().item() + 3 * result["test/acc_ci95"], (result, pixels.mean())


@pytest.mark.slow
def test_matching_network_beats_the_pixel_baseline_on_held_out_hanzi():
    pl.seed_everything(0)
    data = hanzi(shots=1, steps=100)
    model = MatchingNetwork(Conv4(1, None, hidden_channels=32, pooling="max", batch_norm_stats="running"))
    result, _ = fit_and_test(model, data)
    beats_pixels(result, data)


@pytest.mark.slow
def test_siamese_network_beats_the_pixel_baseline_on_held_out_hanzi():
    pl.seed_everything(0)
    data = hanzi(shots=1, steps=200)
    model = SiameseNetwork(Conv4(1, None, hidden_channels=64, pooling="max", batch_norm_stats="running"),
                           feature_dim=64, outer_lr=3e-3)
    result, _ = fit_and_test(model, data)
    beats_pixels(result, data)
