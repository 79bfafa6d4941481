"""Reptile: the outer update is epsilon * mean(phi - theta) through manual_backward (DDP: tests/test_ddp.py),
the transductive flag does what it says and is recorded, bad arguments name their field,
and Reptile beats the raw-pixel baseline on held-out hanzi characters (non-transductive)."""

from __future__ import annotations

import copy
import logging

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from meta_helpers import pixel_prototype_accuracy, quiet_trainer, random_classification_batch
from torch.utils.data import DataLoader

from lightning_meta import ConfigurationError, NpzDataModule, SinusoidDataModule
from lightning_meta.algorithms.reptile import INNER_BATCH_SEED, Reptile
from lightning_meta.data.episodes import episode_generator
from lightning_meta.inner_loop import adapt, example_order, supervised_loss
from lightning_meta.inner_updates import SGD, Adam, MomentumSGD
from lightning_meta.models import MLP, Conv4

def small_conv(ways: int = 3, **kwargs) -> Conv4:
    return Conv4(1, ways, hidden_channels=4, image_size=8, **kwargs)


def fit_one_step(model: Reptile, batch) -> None:
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, precision="64-true")
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))


# ---------------------------------------------------------------------------------------- the update
@pytest.mark.parametrize("inner_optimizer,inner_batch_size", [("sgd", None), ("sgd", 4), ("adam", 4)])
def test_one_task_update_is_epsilon_times_phi_minus_theta(inner_optimizer, inner_batch_size):
    """One task, SGD outer optimiser: theta' = theta + epsilon * (phi - theta), phi from torch.optim by hand."""
    torch.manual_seed(0)
    batch = random_classification_batch(1, 3, 2, 2, (1, 8, 8), seed=3)
    epsilon, steps = 0.3, 3
    model = Reptile(small_conv(), inner_optimizer=inner_optimizer, inner_lr=0.1 if inner_optimizer == "sgd" else 0.01,
                    inner_steps=steps, inner_batch_size=inner_batch_size, outer_lr=epsilon)
    net = copy.deepcopy(model.backbone).double()
    theta = {name: p.detach().clone() for name, p in net.named_parameters()}

    # by hand: torch.optim on a copy, on support + query pooled, mini-batches in the documented order
    x = torch.cat([batch.support_x[0], batch.query_x[0]]).double()
    y = torch.cat([batch.support_y[0], batch.query_y[0]])
    generator = episode_generator(INNER_BATCH_SEED, "train", 0, 0)
    order = example_order(len(x), steps, inner_batch_size, generator)
    size = len(order) // steps
    if inner_optimizer == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.0, 0.999))
    for step in range(steps):
        chosen = order[step * size:(step + 1) * size]
        optimizer.zero_grad()
        F.cross_entropy(net(x[chosen]), y[chosen]).backward()
        optimizer.step()
    phi = dict(net.named_parameters())

    fit_one_step(model, batch)
    after = dict(model.backbone.named_parameters())
    for name in theta:
        expected = theta[name] + epsilon * (phi[name].detach() - theta[name])
        torch.testing.assert_close(after[name].detach(), expected, rtol=1e-9, atol=1e-12, msg=name)
    assert not torch.equal(after["head.weight"], theta["head.weight"])


def test_mini_batches_shuffle_epoch_after_epoch():
    order = example_order(10, 7, 4, torch.Generator().manual_seed(0))
    assert order.shape == (28,)
    for start in (0, 10, 20):  # each block of 10 is a permutation of the set (the last one cut short)
        block = order[start:start + 10].tolist()
        assert len(set(block)) == len(block)
    assert torch.equal(example_order(10, 3, None, None), torch.arange(10).repeat(3))
    assert torch.equal(example_order(10, 3, 12, None), torch.arange(10).repeat(3))


def test_loop_and_vmap_give_the_same_update():
    batch = random_classification_batch(3, 1, 5, 5, (1,), seed=4)
    batch.support_y, batch.query_y = batch.support_x.sin(), batch.query_x.sin()
    results = []
    for batching in ("loop", "vmap"):
        torch.manual_seed(0)
        model = Reptile(MLP(1, 1, (8, 8)), inner_lr=0.01, inner_steps=3, inner_batch_size=4, outer_lr=0.5,
                        batching=batching)
        fit_one_step(model, batch)
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_outer_lr_anneals_linearly_to_its_final_value():
    lrs = []

    class RecordLR(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            lrs.append(optimizer.param_groups[0]["lr"])

    data = SinusoidDataModule(shots=5, queries=5, meta_batch_size=2, episodes_per_epoch=8, val_episodes=2)
    model = Reptile(MLP(1, 1, (8,)), inner_optimizer="sgd", inner_lr=0.01, inner_steps=2, outer_lr=1.0,
                    outer_lr_final=0.0)
    quiet_trainer(max_steps=4, limit_val_batches=0, callbacks=[RecordLR()]).fit(model, data)
    assert lrs == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert isinstance(model.optimizers().optimizer, torch.optim.SGD)


# ---------------------------------------------------------------------------------------- transduction
def query_predictions(model: Reptile, batch) -> torch.Tensor:
    with torch.enable_grad():
        return model.evaluate_batch(batch)[0]


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_non_transductive_queries_are_independent_and_transductive_ones_are_not(batching):
    torch.manual_seed(0)
    base = Reptile(small_conv(), inner_lr=0.01, inner_steps=2, test_inner_steps=3, test_inner_batch_size=2,
                   batching=batching)
    batch = random_classification_batch(2, 3, 1, 2, (1, 8, 8), seed=5)
    changed = copy.deepcopy(batch)
    changed.query_x[:, 1:] = torch.randn_like(changed.query_x[:, 1:]) * 3
    batch.index = changed.index = torch.tensor([7, 8])
    alone = copy.deepcopy(batch)
    alone.query_x, alone.query_y = batch.query_x[:, :1], batch.query_y[:, :1]

    plain = Reptile(**{**base.hparams, "backbone": base.backbone, "transductive": False})
    plain.load_state_dict(base.state_dict())
    first, other, single = (query_predictions(plain, b) for b in (batch, changed, alone))
    torch.testing.assert_close(other[:, 0], first[:, 0])   # query 0 ignores the other queries
    torch.testing.assert_close(single[:, 0], first[:, 0])  # = predicted with the support set alone

    transductive = Reptile(**{**base.hparams, "backbone": base.backbone, "transductive": True})
    transductive.load_state_dict(base.state_dict())
    first_t, other_t = query_predictions(transductive, batch), query_predictions(transductive, changed)
    assert (other_t[:, 0] - first_t[:, 0]).abs().max() > 1e-3  # BatchNorm over the query set
    assert (first_t - first).abs().max() > 1e-3


def test_transductive_flag_is_recorded_with_the_results(caplog):
    data = NpzDataModule(path="hanzi", ways=3, shots=1, queries=1, meta_batch_size=2,
                         episodes_per_epoch=2, val_episodes=2, test_episodes=4)
    for flag in (False, True):
        model = Reptile(Conv4(1, 3, hidden_channels=4), inner_lr=0.01, inner_steps=1, transductive=flag)
        with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
            results = quiet_trainer().test(model, data, verbose=False)[0]
        assert results["test/transductive"] == float(flag)
        assert model.hparams["transductive"] is flag
        assert f"transductive={flag}" in caplog.text


def test_without_batchnorm_the_flag_changes_nothing():
    torch.manual_seed(0)
    batch = random_classification_batch(2, 1, 5, 4, (1,), seed=6)
    batch.support_y, batch.query_y = batch.support_x.cos(), batch.query_x.cos()
    outputs = []
    for flag in (False, True):
        torch.manual_seed(0)
        outputs.append(query_predictions(Reptile(MLP(1, 1, (8,)), inner_steps=2, transductive=flag), batch))
    torch.testing.assert_close(outputs[0], outputs[1])


@pytest.mark.parametrize("inner_optimizer,before", [
    ("sgd", lambda: SGD(0.1)),
    ("adam", lambda: Adam(0.1, (0.0, 0.999), 1e-8)),
])
def test_the_inner_updates_are_bit_identical_to_the_rules_reptile_built_before(inner_optimizer, before):
    """Reptile builds its rule with the factory MAML shares (``inner_optimizer_rule``); before, it built
    ``SGD(inner_lr)`` or ``Adam(inner_lr, inner_betas, inner_eps)`` itself: the same points, bit for bit."""
    torch.manual_seed(0)
    model = Reptile(MLP(4, 3, (8,)), inner_optimizer=inner_optimizer, inner_lr=0.1, inner_steps=4,
                    inner_batch_size=3).double()
    batch = random_classification_batch(1, 3, 2, 2, (4,), seed=2)
    x, y = batch.support_x[0].double(), batch.support_y[0]
    theta = {name: p.detach() for name, p in model.backbone.named_parameters()}
    order = example_order(x.shape[0], 4, 3, torch.Generator().manual_seed(0))
    ours = model.adapt(theta, x, y, order, 4)
    support_loss = supervised_loss(model.forward_fn(), x, y, model.inner_loss, order.reshape(4, -1))
    reference = adapt(support_loss, theta, 4, before(), "none")[-1]
    for name, value in reference.items():
        assert torch.equal(ours[name], value), name
        assert not torch.equal(ours[name], theta[name]), name


def test_reptile_takes_momentum_and_nesterov_from_the_shared_factory():
    rule = Reptile(MLP(1, 1, (4,)), inner_optimizer="nesterov", inner_momentum=0.5, inner_weight_decay=0.1,
                   inner_lr=0.1).inner_update({})
    assert isinstance(rule, MomentumSGD) and rule.nesterov and rule.momentum == 0.5 and rule.weight_decay == 0.1


# ---------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs,field", [
    ({"inner_lr": 0.0}, "inner_lr"),
    ({"inner_steps": 0}, "inner_steps"),
    ({"test_inner_steps": -1}, "test_inner_steps"),
    ({"inner_batch_size": 0}, "inner_batch_size"),
    ({"test_inner_batch_size": 2.5}, "test_inner_batch_size"),
    ({"inner_optimizer": "rmsprop"}, "inner_optimizer"),
    ({"inner_betas": (0.9, 1.0)}, "inner_betas"),
    ({"inner_betas": (0.9,)}, "inner_betas"),
    ({"inner_optimizer": "momentum", "inner_momentum": 1.0}, "inner_momentum"),
    ({"inner_weight_decay": -0.1}, "inner_weight_decay"),
    ({"inner_eps": 0.0}, "inner_eps"),
    ({"outer_lr": -1.0}, "outer_lr"),
    ({"outer_lr_final": -0.1}, "outer_lr_final"),
    ({"outer_lr_final": 2.0}, "outer_lr_final"),
    ({"transductive": "yes"}, "transductive"),
])
def test_bad_arguments_name_their_field(kwargs, field):
    with pytest.raises(ConfigurationError, match=rf"model\.init_args\.{field}\b"):
        Reptile(MLP(1, 1, (4,)), **kwargs)


def test_running_batchnorm_statistics_are_refused():
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.backbone.*batch_norm_stats"):
        Reptile(small_conv(batch_norm_stats="running"))


def test_annealing_needs_a_finite_run():
    data = SinusoidDataModule(shots=5, queries=5, meta_batch_size=2, episodes_per_epoch=4, val_episodes=2)
    model = Reptile(MLP(1, 1, (4,)), outer_lr_final=0.0)
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.outer_lr_final"):
        quiet_trainer(max_epochs=-1, max_steps=-1, limit_val_batches=0).fit(model, data)



# ---------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_reptile_beats_the_pixel_baseline_on_held_out_hanzi():
    """5-way 1-shot on the 60 held-out classes, non-transductive evaluation (each query with the
    support set alone).  Meta-batch 10 and 10 inner SGD steps of 5 examples (support + query
    pooled): with 5 tasks or 5 steps, 150-300 outer steps stayed at 81-83%, at the pixel baseline."""
    pl.seed_everything(0)
    data = NpzDataModule(path="hanzi", ways=5, shots=1, queries=4, test_queries=5,
                         rotations=(0, 90, 180, 270), meta_batch_size=10, episodes_per_epoch=10 * 80,
                         val_episodes=4, test_episodes=200)
    model = Reptile(Conv4(1, 5, hidden_channels=32), inner_optimizer="sgd", inner_lr=0.3, inner_steps=10,
                    inner_batch_size=5, test_inner_steps=10, outer_lr=1.0)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    ours = trainer.test(model, data, verbose=False)[0]
    assert ours["test/transductive"] == 0.0
    pixels = pixel_prototype_accuracy(data)
    assert ours["test/acc"] > pixels.mean().item() + 3 * ours["test/acc_ci95"]
