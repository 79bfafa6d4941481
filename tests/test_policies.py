"""Policies and their tensor-only distributions: agreement with torch.distributions, inverse-CDF sampling
with the right law (statistical bounds), and vmap over per-task weights equal to a loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Independent, Normal
from torch.func import functional_call, grad, vmap

from lightning_meta.errors import ConfigurationError
from lightning_meta.models.distributions import Categorical, DiagonalGaussian
from lightning_meta.models.policies import (CategoricalMLPPolicy, GaussianMLPPolicy, GRUCell, GRUPolicy,
                                            rl2_input, unroll)

DTYPE = torch.float64


def gaussian_pair(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [DiagonalGaussian(torch.randn(5, 3, generator=generator, dtype=DTYPE),
                             0.5 * torch.randn(5, 3, generator=generator, dtype=DTYPE)) for _ in range(2)]


def test_gaussian_matches_torch_distributions():
    p, q = gaussian_pair()
    tp, tq = (Independent(Normal(d.mean, d.log_std.exp()), 1) for d in (p, q))
    action = torch.randn(5, 3, dtype=DTYPE)
    torch.testing.assert_close(p.log_prob(action), tp.log_prob(action))
    torch.testing.assert_close(p.entropy(), tp.entropy())
    torch.testing.assert_close(p.kl(q), torch.distributions.kl_divergence(tp, tq))
    assert torch.equal(p.mode(), p.mean)


def test_categorical_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    p, q = (Categorical.from_logits(torch.randn(5, 4, generator=generator, dtype=DTYPE)) for _ in range(2))
    tp, tq = TorchCategorical(logits=p.logits), TorchCategorical(logits=q.logits)
    action = torch.randint(0, 4, (5,), generator=generator)
    torch.testing.assert_close(p.log_prob(action), tp.log_prob(action))
    torch.testing.assert_close(p.entropy(), tp.entropy())
    torch.testing.assert_close(p.kl(q), torch.distributions.kl_divergence(tp, tq))
    assert torch.equal(p.mode(), tp.probs.argmax(-1))


def test_gaussian_inverse_cdf_samples_have_the_right_law():
    """Kolmogorov-Smirnov distance of the standardised samples to N(0, 1), below the 0.1% critical value."""
    n = 20_000
    dist = DiagonalGaussian(torch.tensor([1.5, -2.0], dtype=DTYPE), torch.log(torch.tensor([0.3, 2.0], dtype=DTYPE)))
    u = torch.rand(n, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    z = ((dist.sample(u) - dist.mean) / dist.log_std.exp()).sort(0).values
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    ranks = torch.arange(1, n + 1, dtype=DTYPE).unsqueeze(1)
    ks = torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max(0).values
    assert (ks < 1.95 / math.sqrt(n)).all()
    assert dist.sample(torch.zeros(2, dtype=DTYPE)).isfinite().all()


def test_categorical_inverse_cdf_samples_have_the_right_law():
    """Pearson's chi-square of the counts, below the 0.1% critical value (3 degrees of freedom: 16.27)."""
    n = 20_000
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DTYPE)
    dist = Categorical.from_logits(probs.log())
    actions = dist.sample(torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=DTYPE))
    counts = torch.bincount(actions, minlength=4).to(DTYPE)
    assert ((counts - n * probs) ** 2 / (n * probs)).sum().item() < 16.27
    impossible_first = Categorical.from_logits(torch.tensor([float("-inf"), 0.0, 0.0]))
    assert impossible_first.sample(torch.tensor([0.0, 1 - 1e-7])).tolist() == [1, 2]


def stacked(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([dict(m.named_parameters())[name].detach() for m in modules])
            for name, _ in modules[0].named_parameters()}


def task(params: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    return {name: value[index] for name, value in params.items()}


def assert_trees_close(a, b):
    leaves_a, leaves_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: GaussianMLPPolicy(3, 2, hidden_sizes=(8, 8)),
                                  lambda: GaussianMLPPolicy(3, 2, hidden_sizes=(8, 8), activation="relu"),
                                  lambda: CategoricalMLPPolicy(3, 4, hidden_sizes=(8,))])
def test_mlp_policies_vmap_over_task_weights_equals_a_loop(make):
    torch.manual_seed(0)
    policies = [make().double() for _ in range(3)]
    params, policy = stacked(policies), policies[0]
    observations = torch.randn(3, 5, 3, dtype=DTYPE)
    batched = vmap(lambda p, x: functional_call(policy, p, (x,)))(params, observations)
    looped = [functional_call(policy, task(params, b), (observations[b],)) for b in range(3)]
    assert_trees_close(batched, type(looped[0])(*(torch.stack(fields) for fields in zip(*looped))))
    assert_trees_close(looped[1], policies[1](observations[1]))

    def loss(p, x):
        dist = functional_call(policy, p, (x,))
        return dist.log_prob(dist.mode().detach()).sum() + dist.entropy().sum()

    grads = vmap(grad(loss))(params, observations)
    looped_grads = [grad(loss)(task(params, b), observations[b]) for b in range(3)]
    assert_trees_close(grads, {name: torch.stack([g[name] for g in looped_grads]) for name in grads})


@pytest.mark.parametrize("kind", [{"num_actions": 3}, {"action_size": 2}])
def test_gru_policy_unrolled_under_vmap_equals_a_loop_of_steps(kind):
    torch.manual_seed(0)
    policies = [GRUPolicy(4, hidden_size=6, **kind).double() for _ in range(2)]
    params, policy = stacked(policies), policies[0]
    inputs = torch.randn(2, 5, 7, policy.input_size, dtype=DTYPE)            # [B, n, T, input]
    hidden = policy.initial_hidden((2, 5))

    def run(p, x, h):
        return unroll(lambda xt, ht: functional_call(policy, p, (xt, ht)), x, h)

    batched = vmap(run)(params, inputs, hidden)
    for b in range(2):
        h = hidden[b]
        dists, values = [], []
        for t in range(7):
            dist, value, h = functional_call(policies[b], task(params, b), (inputs[b, :, t], h))
            dists.append(dist)
            values.append(value)
        torch.testing.assert_close(batched[1][b], torch.stack(values, -1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched[2][b], h, rtol=1e-12, atol=1e-12)
        for field, values_over_time in zip(batched[0], zip(*dists)):
            torch.testing.assert_close(field[b], torch.stack(values_over_time, -2), rtol=1e-12, atol=1e-12)


def test_gru_cell_equals_torch_gru_cell():
    torch.manual_seed(0)
    reference, cell = nn.GRUCell(5, 4).double(), GRUCell(5, 4).double()
    with torch.no_grad():
        cell.input.weight.copy_(reference.weight_ih)
        cell.input.bias.copy_(reference.bias_ih)
        cell.hidden.weight.copy_(reference.weight_hh)
        cell.hidden.bias.copy_(reference.bias_hh)
    x, h = torch.randn(6, 5, dtype=DTYPE), torch.randn(6, 4, dtype=DTYPE)
    torch.testing.assert_close(cell(x, h), reference(x, h))


def test_rl2_input():
    observation = torch.zeros(2, 3)
    x = rl2_input(observation, torch.tensor([-1, 2]), torch.tensor([0.0, 1.5]), torch.tensor([False, True]), 3)
    assert x.tolist() == [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1.5, 1]]
    continuous = rl2_input(observation, torch.ones(2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    assert continuous.shape == (2, 3 + 2 + 2)
    assert GRUPolicy(3, num_actions=3).input_size == x.shape[-1]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ConfigurationError, match="action_size"):
        GaussianMLPPolicy(3, 0)
    with pytest.raises(ConfigurationError, match="hidden_sizes"):
        CategoricalMLPPolicy(3, 2, hidden_sizes=(8, 0))
    with pytest.raises(ConfigurationError, match="num_actions=0, action_size=0"):
        GRUPolicy(3)
    with pytest.raises(ConfigurationError, match="num_actions=2, action_size=2"):
        GRUPolicy(3, num_actions=2, action_size=2)
    with pytest.raises(ConfigurationError, match="min_std"):
        GaussianMLPPolicy(3, 2, min_std=0.0)
    with pytest.raises(ConfigurationError, match="activation='sigmoid'"):
        CategoricalMLPPolicy(3, 2, activation="sigmoid")


def test_the_activation_sets_the_hidden_nonlinearity():
    torch.manual_seed(0)
    observations = torch.randn(6, 2)
    relu = GaussianMLPPolicy(2, 2, hidden_sizes=(4,), activation="relu")
    pre = relu.features[0](observations)
    assert (pre < 0).any()
    torch.testing.assert_close(relu(observations).mean, relu.head(pre.clamp_min(0)))
    tanh = CategoricalMLPPolicy(2, 3, hidden_sizes=(4,))
    logits = tanh.head(torch.tanh(tanh.features[0](observations)))
    torch.testing.assert_close(tanh(observations).logits, torch.log_softmax(logits, -1))


def test_gaussian_policy_log_std_floor_and_init():
    policy = GaussianMLPPolicy(2, 3, hidden_sizes=(4,), init_std=0.5, min_std=0.1)
    assert torch.allclose(policy(torch.zeros(2)).log_std, torch.full((3,), math.log(0.5)))
    with torch.no_grad():
        policy.log_std.fill_(-10.0)
    assert torch.allclose(policy(torch.zeros(7, 2)).log_std, torch.full((7, 3), math.log(0.1)))
    assert all((layer.bias == 0).all() for layer in policy.modules() if isinstance(layer, nn.Linear))
