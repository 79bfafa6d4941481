"""MAMLPolicyGradient: its meta-gradient and TRPO's curvature product against independent references, the
loop against vmap, a training run through a Trainer, and the settings it refuses."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_meta.algorithms.maml_rl import MAMLPolicyGradient
from lightning_meta.data.env_tasks import EnvTaskDataModule, EnvTaskStream
from lightning_meta.envs import BernoulliBandits, Navigation2D
from lightning_meta.errors import ConfigurationError
from lightning_meta.models.policies import CategoricalMLPPolicy, GaussianMLPPolicy, GRUPolicy

FAMILY = Navigation2D(horizon=8)


def small_model(**kwargs) -> MAMLPolicyGradient:
    torch.manual_seed(0)
    return MAMLPolicyGradient(GaussianMLPPolicy(2, 2, hidden_sizes=(8, 8)), **kwargs).double()


def explored(model: MAMLPolicyGradient, steps: int = 1, tasks: int = 3, n: int = 4):
    batch = EnvTaskStream(FAMILY, [list(range(tasks))], seed=0, split="train", epoch=0, rollouts=n).batch(0)
    return model.explore(batch, [model.inner_lr] * steps)


def meta_gradient(model: MAMLPolicyGradient, support, query) -> dict[str, torch.Tensor]:
    theta = {k: v.detach().clone().requires_grad_() for k, v in model.policy.named_parameters()}
    loss = model.batch_terms(theta, support, query)[0]
    return dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))


def test_the_meta_gradient_equals_a_hand_written_second_order_reference():
    """One inner LVC step and the TRPO surrogate written out with plain autograd (create_graph), task by
    task, against the learner's vmapped meta-gradient (float64).  Finite differences cannot serve: the
    surrogates' stop-gradients make their derivatives differ from those of their values, by design."""
    model = small_model(inner_lr=0.3)
    support, query = explored(model)
    gradient = meta_gradient(model, support, query)
    policy = model.policy
    theta = [p.detach().clone().requires_grad_() for p in policy.parameters()]
    names = [n for n, _ in policy.named_parameters()]

    def log_probs(params, observations, actions):
        return torch.func.functional_call(policy, dict(zip(names, params)), (observations,)).log_prob(actions)

    total = 0
    for b in range(3):
        s, q = support[0], query
        lp = log_probs(theta, s.observations[b], s.actions[b])
        inner = -((torch.exp(lp - lp.detach()) * s.advantages[b] * s.masks[b]).sum() / s.masks[b].sum())
        adapted = [p - 0.3 * g for p, g in zip(theta, torch.autograd.grad(inner, theta, create_graph=True))]
        ratio = torch.exp(log_probs(adapted, q.observations[b], q.actions[b]) - q.log_probs[b])
        total = total - (ratio * q.advantages[b] * q.masks[b]).sum() / q.masks[b].sum() / 3
    reference = torch.autograd.grad(total, theta)
    for name, r in zip(names, reference):
        torch.testing.assert_close(gradient[name], r, rtol=1e-10, atol=1e-13)


def test_first_order_drops_the_second_order_term():
    model = small_model(inner_lr=0.3)
    support, query = explored(model)
    exact = meta_gradient(model, support, query)
    model.first_order = True
    first = meta_gradient(model, support, query)
    # FOMAML: the gradient of the post-adaptation surrogate at the adapted weights, per task, averaged
    adapted = model.batch_adapt({k: v.detach() for k, v in model.policy.named_parameters()}, support,
                                [model.inner_lr], "none", 3)
    leaves = {k: v.clone().requires_grad_() for k, v in adapted.items()}
    fomaml = torch.autograd.grad(model.per_task_terms(leaves, query)[:, 0].mean(), list(leaves.values()))
    for (name, g), reference in zip(first.items(), fomaml):
        torch.testing.assert_close(g, reference.sum(0), rtol=1e-10, atol=1e-12)
    assert any((exact[n] - first[n]).abs().max() > 1e-6 for n in exact)


@pytest.mark.parametrize("steps,first_order", [(0, False), (1, False), (2, False), (2, True)])
def test_trpo_curvature_product_equals_the_kl_double_backward(steps, first_order):
    """The J^T F J v product equals the Hessian-vector product of the mean post-adaptation KL by double
    backward through the inner steps, at the sampling weights."""
    model = small_model(inner_lr=0.3, inner_steps=steps, first_order=first_order)
    support, query = explored(model, steps)
    theta = {k: v.detach().clone() for k, v in model.policy.named_parameters()}
    vector = {k: torch.randn_like(v, generator=torch.Generator().manual_seed(2)) for k, v in theta.items()}
    product = model.kl_hvp(theta, support, query)(vector)
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    kl = model.batch_terms(leaves, support, query)[1]
    assert abs(float(kl.detach())) < 1e-12  # the sampling weights: KL 0, so the product is the exact Hessian
    kl_gradient = torch.autograd.grad(kl, list(leaves.values()), create_graph=True)
    directional = sum((g * vector[k]).sum() for g, k in zip(kl_gradient, leaves))
    reference = torch.autograd.grad(directional, list(leaves.values()))
    for name, r in zip(leaves, reference):
        torch.testing.assert_close(product[name], r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("discrete", [False, True])
def test_the_fisher_product_equals_the_kl_hessian_at_the_adapted_weights(discrete, monkeypatch):
    """``fisher_product``'s Gauss-Newton form G^T K G u (Gaussian) and its double-backward fallback
    (categorical, whose KL gradient in the normalised log-probabilities is not 0) against each task's KL
    Hessian-vector product by plain double backward through the network, float64, per-task vectors."""
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(1, 3, hidden_sizes=(8, 8)) if discrete else GaussianMLPPolicy(2, 2, hidden_sizes=(8, 8))
    model = MAMLPolicyGradient(policy, inner_lr=0.3).double()
    family = BernoulliBandits(3) if discrete else FAMILY
    batch = EnvTaskStream(family, [[0, 1, 2]], seed=0, split="train", epoch=0, rollouts=4).batch(0)
    support, query = model.explore(batch, [0.3])
    theta = {k: v.detach() for k, v in model.policy.named_parameters()}
    adapted = model.batch_adapt(theta, support, [0.3], "none", 3)
    generator = torch.Generator().manual_seed(3)
    vector = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in adapted.items()}
    if not discrete:  # the Gaussian takes the Gauss-Newton form
        monkeypatch.setattr(MAMLPolicyGradient, "kl_double_backward", lambda *args: pytest.fail("double backward"))
    product = model.fisher_product(adapted, query)(vector)
    for b in range(3):
        leaves = {k: v[b].clone().requires_grad_() for k, v in adapted.items()}
        new = torch.func.functional_call(model.policy, leaves, (query.observations[b],))
        old = type(new)(*(field[b] for field in query.old))
        kl = (old.kl(new) * query.masks[b]).sum() / query.masks[b].sum()
        assert abs(float(kl.detach())) < 1e-12
        gradient = torch.autograd.grad(kl, list(leaves.values()), create_graph=True)
        directional = sum((g * vector[k][b]).sum() for g, k in zip(gradient, leaves))
        reference = torch.autograd.grad(directional, list(leaves.values()))
        for name, r in zip(leaves, reference):
            torch.testing.assert_close(product[name][b], r, rtol=1e-9, atol=1e-12)


def test_the_loop_equals_vmap():
    model = small_model(inner_lr=0.3, inner_steps=2)
    support, query = explored(model, 2)
    by_vmap = meta_gradient(model, support, query)
    theta = {k: v.detach().clone() for k, v in model.policy.named_parameters()}
    vector = {k: torch.ones_like(v) for k, v in theta.items()}
    model.curvature_batching = "vmap"  # the curvature product's own graphs vmapped too (the default loops them)
    product_vmap = model.kl_hvp(theta, support, query)(vector)
    model.batching, model.curvature_batching = "loop", "loop"
    by_loop = meta_gradient(model, support, query)
    product_loop = model.kl_hvp(theta, support, query)(vector)
    for name in by_vmap:
        torch.testing.assert_close(by_loop[name], by_vmap[name], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(product_loop[name], product_vmap[name], rtol=1e-10, atol=1e-13)


def test_rollouts_are_a_function_of_the_task_key():
    """A task's episodes do not depend on the other tasks of its batch."""
    model = small_model()
    batch = EnvTaskStream(FAMILY, [[0, 1, 2]], seed=0, split="train", epoch=0, rollouts=4).batch(0)
    alone = EnvTaskStream(FAMILY, [[1]], seed=0, split="train", epoch=0, rollouts=4).batch(0)
    support, query = model.explore(batch, [0.3])
    support1, query1 = model.explore(alone, [0.3])
    torch.testing.assert_close(query.rewards[1:2], query1.rewards, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(support[0].actions[1:2], support1[0].actions, rtol=0, atol=0)


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_a_trainer_fits_and_tests_it(outer):
    pl.seed_everything(0)
    model = MAMLPolicyGradient(GaussianMLPPolicy(2, 2, hidden_sizes=(16, 16)), outer=outer, ppo_epochs=2,
                               test_inner_steps=2, test_inner_lrs=[0.1, 0.05], max_kl=0.01)
    data = EnvTaskDataModule(Navigation2D(horizon=10), rollouts=4, meta_batch_size=4, episodes_per_epoch=8,
                             val_episodes=4, test_episodes=6)
    logged = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    before = {k: v.detach().clone() for k, v in model.policy.named_parameters()}
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, callbacks=[Record()])
    trainer.fit(model, data)
    results = trainer.test(model, data, verbose=False)[0]
    assert {"test/return_before", "test/return_step1", "test/return_step2", "test/return",
            "test/return_ci95"} <= set(results)
    assert results["test/return"] == results["test/return_step2"]
    assert {"train/loss", "train/return_before", "train/return", "train/kl", "train/entropy",
            "train/env_steps_per_s", "train/tasks_per_s"} <= set(logged[-1])
    if outer == "trpo":
        assert all(entry["train/kl"] <= 0.01 + 1e-6 for entry in logged)
    assert any((before[k] - v).abs().max() > 0 for k, v in model.policy.named_parameters())


@pytest.mark.parametrize("policy,named", [
    (GaussianMLPPolicy(3, 2), "observation_size to 2"),
    (GaussianMLPPolicy(2, 3), "action size to 2"),
    (CategoricalMLPPolicy(2, 2), "use a Gaussian policy"),
    (GRUPolicy(2, action_size=2), "is recurrent"),
])
def test_a_policy_that_does_not_fit_the_family_is_refused(policy, named):
    model = MAMLPolicyGradient(policy)
    data = EnvTaskDataModule(Navigation2D())
    with pytest.raises(ConfigurationError, match=f"model.init_args.policy: .*{named}"):
        model.check_stage(data, "fit")


def test_a_gaussian_policy_on_discrete_actions_is_refused():
    with pytest.raises(ConfigurationError, match="takes 5 discrete actions: use a categorical policy"):
        MAMLPolicyGradient(GaussianMLPPolicy(1, 5)).check_stage(EnvTaskDataModule(BernoulliBandits(5)), "fit")


@pytest.mark.parametrize("args,named", [
    ({"inner_lr": 0}, "model.init_args.inner_lr=0"),
    ({"max_kl": -1.0}, "model.init_args.max_kl=-1.0"),
    ({"gamma": 1.5}, "model.init_args.gamma=1.5"),
    ({"ppo_clip": 1.0}, "model.init_args.ppo_clip=1.0"),
    ({"estimator": "reinforce"}, "model.init_args.estimator"),
    ({"outer": "sgd"}, "model.init_args.outer"),
    ({"test_inner_steps": 2, "test_inner_lrs": [0.1]}, "model.init_args.test_inner_lrs"),
    ({"gradient_clip_val": 1.0}, "model.init_args.gradient_clip_val"),
])
def test_bad_settings_name_the_field(args, named):
    with pytest.raises(ConfigurationError, match=named.replace("[", r"\[")):
        MAMLPolicyGradient(GaussianMLPPolicy(2, 2), **args)
