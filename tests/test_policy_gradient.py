"""Policy-gradient surrogates checked exactly on a small MDP whose trajectories are all enumerated; GAE,
the linear feature baseline, conjugate gradient and the TRPO step against independent references.

The MDP: start in state 0 or 1, act (2 actions), move to state 1, 2 or a terminal state, act once more
unless terminal; tabular softmax policy ``theta [3, 2]``.  Its 20 trajectories are enumerated with their
probabilities, and the expected discounted return ``J(theta)`` is computed separately by dynamic
programming.  A surrogate's *probability-weighted* sum over the trajectories (weights detached) is its
exact expectation, so its derivatives must equal those of ``J`` to rounding.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, jacrev

from lightning_meta.errors import ConfigurationError
from lightning_meta.inner_loop import adapt, vmap_meta_gradients
from lightning_meta.inner_updates import SGD
from lightning_meta.linear_baseline import LinearFeatureBaseline
from lightning_meta.models.policies import CategoricalMLPPolicy
from lightning_meta.policy_gradient import (dice, discounted_returns, gae, lvc, masked_mean, ppo_clip,
                                            reinforce)
from lightning_meta.trpo import conjugate_gradient, solve_with_product, trpo_step

DTYPE = torch.float64
GAMMA = 0.9
TERMINAL = 3


def make_mdp(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    start = torch.tensor([0.6, 0.4], dtype=DTYPE)
    exponentials = -torch.log(torch.rand(2, 2, 3, generator=generator, dtype=DTYPE))
    transitions = exponentials / exponentials.sum(-1, keepdim=True)     # [s0, a0, s1 in (1, 2, terminal)]
    rewards = torch.randn(3, 2, generator=generator, dtype=DTYPE)
    return {"start": start, "transitions": transitions, "rewards": rewards}


MDP = make_mdp()


def trajectories(mdp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All trajectories: states/actions/rewards/masks ``[K, 2]`` and the environment's probability ``[K]``."""
    rows = []
    for s0, a0, nxt in itertools.product(range(2), range(2), range(3)):
        s1 = (1, 2, TERMINAL)[nxt]
        env = mdp["start"][s0] * mdp["transitions"][s0, a0, nxt]
        for a1 in ((0, 1) if s1 != TERMINAL else (0,)):
            alive = s1 != TERMINAL
            rows.append((s0, s1 if alive else 0, a0, a1, float(alive), env, mdp["rewards"][s0, a0],
                         mdp["rewards"][s1, a1] if alive else torch.tensor(0.0, dtype=DTYPE)))
    columns = list(zip(*rows))
    return {
        "states": torch.tensor([columns[0], columns[1]]).T,
        "actions": torch.tensor([columns[2], columns[3]]).T,
        "masks": torch.stack([torch.ones(len(rows), dtype=DTYPE), torch.tensor(columns[4], dtype=DTYPE)], 1),
        "env_prob": torch.stack(columns[5]),
        "rewards": torch.stack([torch.stack(columns[6]), torch.stack(columns[7])], 1),
    }


TRAJ = trajectories(MDP)
THETA = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.2]], dtype=DTYPE)


def exact_return(theta: torch.Tensor, mdp: dict[str, torch.Tensor] = MDP) -> torch.Tensor:
    """J(theta) by dynamic programming, independent of the trajectory enumeration."""
    pi = torch.softmax(theta, -1)
    v1 = (pi * mdp["rewards"]).sum(-1)                                  # value at step 1 of states 0..2
    v1 = torch.cat([v1[1:], torch.zeros(1, dtype=DTYPE)])               # of next states 1, 2, terminal
    q0 = mdp["rewards"][:2] + GAMMA * mdp["transitions"] @ v1           # [s0, a0]
    return (mdp["start"] * (pi[:2] * q0).sum(-1)).sum()


def log_probs(theta: torch.Tensor, traj: dict[str, torch.Tensor] = TRAJ) -> torch.Tensor:
    return torch.log_softmax(theta, -1)[traj["states"], traj["actions"]]


def weights(theta: torch.Tensor, traj: dict[str, torch.Tensor] = TRAJ) -> torch.Tensor:
    return traj["env_prob"] * torch.exp((log_probs(theta, traj) * traj["masks"]).sum(-1))


def advantages(traj: dict[str, torch.Tensor] = TRAJ) -> torch.Tensor:
    """Reward-to-go discounted from time 0, ``gamma^t G_t``: the advantage whose score-function gradient is dJ."""
    discount = GAMMA ** torch.arange(2, dtype=DTYPE)
    return discount * discounted_returns(traj["rewards"], traj["masks"], GAMMA)


SURROGATES = {
    "dice": lambda theta, traj: dice(log_probs(theta, traj), traj["rewards"], traj["masks"], GAMMA),
    "dice_baseline": lambda theta, traj: dice(log_probs(theta, traj), traj["rewards"], traj["masks"], GAMMA,
                                              values=torch.tensor([0.7, -1.3, 2.1], dtype=DTYPE)[traj["states"]]),
    "lvc": lambda theta, traj: lvc(log_probs(theta, traj), advantages(traj), traj["masks"]),
    "reinforce": lambda theta, traj: reinforce(log_probs(theta, traj), advantages(traj), traj["masks"]),
}


def expected(name: str, theta: torch.Tensor, traj: dict[str, torch.Tensor] = TRAJ) -> torch.Tensor:
    """The exact expectation of the surrogate: trajectories weighted by their (detached) probabilities."""
    return (weights(theta, traj).detach() * SURROGATES[name](theta, traj).sum(-1)).sum()


def test_enumeration_matches_dynamic_programming():
    assert weights(THETA).sum().item() == pytest.approx(1.0, abs=1e-14)
    discount = GAMMA ** torch.arange(2, dtype=DTYPE)
    enumerated = (weights(THETA) * (TRAJ["rewards"] * TRAJ["masks"] * discount).sum(-1)).sum()
    torch.testing.assert_close(enumerated, exact_return(THETA), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["dice", "dice_baseline"])
def test_dice_derivatives_of_every_order_are_exact(name):
    for order in range(1, 4):
        estimate, truth = lambda t: expected(name, t), exact_return
        for _ in range(order):
            estimate, truth = jacrev(estimate), jacrev(truth)
        torch.testing.assert_close(estimate(THETA), truth(THETA), rtol=0, atol=1e-10)


def test_dice_value_is_the_discounted_return():
    discount = GAMMA ** torch.arange(2, dtype=DTYPE)
    value = SURROGATES["dice"](THETA, TRAJ).sum(-1)
    torch.testing.assert_close(value, (TRAJ["rewards"] * TRAJ["masks"] * discount).sum(-1), rtol=0, atol=1e-15)
    assert SURROGATES["dice_baseline"](THETA, TRAJ).abs().max().item() == 0.0


@pytest.mark.parametrize("name", ["lvc", "reinforce"])
def test_lvc_and_reinforce_give_the_exact_gradient(name):
    torch.testing.assert_close(grad(lambda t: expected(name, t))(THETA), grad(exact_return)(THETA), rtol=0, atol=1e-10)


def test_reinforce_hessian_is_biased_so_the_check_is_sensitive():
    hessian = jacrev(jacrev(lambda t: expected("reinforce", t)))(THETA)
    assert (hessian - jacrev(jacrev(exact_return))(THETA)).abs().max().item() > 1e-2


def test_lvc_hessian_has_lower_variance_than_dice():
    """Hessians of the batch mean over 1,000 batches of 10 trajectories sampled from the policy."""
    def per_trajectory_hessians(name):
        def one(theta, index):
            traj = {key: value[index:index + 1] for key, value in TRAJ.items()}
            return SURROGATES[name](theta, traj).sum()
        return torch.stack([jacrev(jacrev(one))(THETA, k) for k in range(len(TRAJ["env_prob"]))]).flatten(1)

    generator = torch.Generator().manual_seed(0)
    picks = torch.multinomial(weights(THETA).detach(), 1000 * 10, replacement=True, generator=generator)
    counts = torch.zeros(1000, len(TRAJ["env_prob"]), dtype=DTYPE).scatter_add_(
        1, picks.view(1000, 10), torch.ones(1000, 10, dtype=DTYPE)) / 10
    variance = {name: (counts @ per_trajectory_hessians(name)).var(0).sum().item() for name in ("dice", "lvc")}
    assert variance["lvc"] < 0.5 * variance["dice"]      # exact ratio on this MDP: 0.19


def test_maml_meta_gradient_equals_finite_differences_of_the_adapted_return():
    alpha = 0.7

    def adapted_return(theta):            # J(theta + alpha dJ(theta)), exact
        return exact_return(theta + alpha * grad(exact_return)(theta))

    theta = THETA.clone().requires_grad_()
    adapted = adapt(lambda p, step: -expected("dice", p["theta"]), {"theta": theta}, steps=1, update=SGD(alpha),
                    graph="second_order")[-1]["theta"]
    meta_gradient, = torch.autograd.grad(expected("dice", adapted), theta)

    h, numeric = 1e-5, torch.zeros_like(THETA)
    for index in itertools.product(range(3), range(2)):
        step = torch.zeros_like(THETA)
        step[index] = h
        numeric[index] = (adapted_return(THETA + step) - adapted_return(THETA - step)) / (2 * h)
    torch.testing.assert_close(meta_gradient, numeric, rtol=0, atol=1e-8)
    torch.testing.assert_close(meta_gradient, grad(adapted_return)(THETA), rtol=0, atol=1e-10)


def test_first_order_meta_gradient_is_fomaml():
    alpha = 0.7
    theta = THETA.clone().requires_grad_()
    adapted = adapt(lambda p, step: -expected("dice", p["theta"]), {"theta": theta}, steps=1, update=SGD(alpha),
                    graph="first_order")[-1]["theta"]
    meta_gradient, = torch.autograd.grad(expected("dice", adapted), theta)
    torch.testing.assert_close(meta_gradient, grad(exact_return)(THETA + alpha * grad(exact_return)(THETA)),
                               rtol=0, atol=1e-10)


def test_vmapped_meta_gradients_over_tasks_match_the_exact_ones():
    """Two MDPs (tasks) differing in their rewards: DiCE's stop-gradients survive vmap(grad(adapt(grad)))."""
    alpha = 0.5
    mdps = [make_mdp(seed) for seed in (1, 2)]
    trajs = [trajectories(m) for m in mdps]
    stacked = {key: torch.stack([t[key] for t in trajs]) for key in ("rewards", "env_prob")}

    def objective(params, rewards, env_prob):
        traj = dict(TRAJ, rewards=rewards, env_prob=env_prob)

        def estimate(p):
            return expected("dice", p["theta"], traj)

        adapted = adapt(lambda p, step: -estimate(p), params, steps=1, update=SGD(alpha), graph="second_order")[-1]
        loss = -estimate(adapted)
        return loss, loss

    mean_grad, _, _ = vmap_meta_gradients(objective, {"theta": THETA}, [stacked["rewards"], stacked["env_prob"]])
    truths = [grad(lambda t, m=m: -exact_return(t + alpha * grad(lambda s: exact_return(s, m))(t), m))(THETA)
              for m in mdps]
    torch.testing.assert_close(mean_grad["theta"], sum(truths) / 2, rtol=0, atol=1e-10)


def test_gae_and_returns_match_a_python_loop():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 7, generator=generator, dtype=DTYPE)
    values = torch.randn(2, 3, 7, generator=generator, dtype=DTYPE)
    lengths = torch.tensor([[7, 3, 1], [5, 7, 2]])
    masks = torch.arange(7) < lengths.unsqueeze(-1)
    gamma, lam = 0.95, 0.8
    expected_adv, expected_ret = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for i, j in itertools.product(range(2), range(3)):
        length, advantage, ret = int(lengths[i, j]), 0.0, 0.0
        for t in reversed(range(length)):
            next_value = values[i, j, t + 1] if t + 1 < length else 0.0
            advantage = rewards[i, j, t] + gamma * next_value - values[i, j, t] + gamma * lam * advantage
            ret = rewards[i, j, t] + gamma * ret
            expected_adv[i, j, t], expected_ret[i, j, t] = advantage, ret
    torch.testing.assert_close(gae(rewards, values, masks, gamma, lam), expected_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(discounted_returns(rewards, masks, gamma), expected_ret, rtol=0, atol=1e-12)
    torch.testing.assert_close(gae(rewards, values, masks, gamma, 1.0), (expected_ret - values) * masks,
                               rtol=0, atol=1e-12)


def test_linear_feature_baseline_matches_numpy_lstsq_per_task():
    generator = torch.Generator().manual_seed(0)
    observations = 4 * torch.randn(3, 4, 6, 2, generator=generator)            # some beyond the clip at 10
    returns = torch.randn(3, 4, 6, generator=generator)
    masks = torch.arange(6) < torch.randint(1, 7, (3, 4, 1), generator=generator)
    baseline = LinearFeatureBaseline(reg_coeff=1e-3)
    coefficients = baseline.fit(observations, returns, masks)
    values = baseline.predict(coefficients, observations, masks)
    assert values.dtype == observations.dtype and values.shape == returns.shape
    for task in range(3):
        valid = masks[task].numpy()
        obs = np.clip(observations[task].double().numpy(), -10, 10)[valid]
        t = np.broadcast_to(np.arange(6) / 100.0, valid.shape)[valid][:, None]
        x = np.concatenate([obs, obs ** 2, t, t ** 2, t ** 3, np.ones_like(t)], axis=1)
        y = returns[task].double().numpy()[valid]
        ridge_x = np.concatenate([x, np.sqrt(1e-3) * np.eye(x.shape[1])])      # min |Xw - y|^2 + reg |w|^2
        ridge_y = np.concatenate([y, np.zeros(x.shape[1])])
        w = np.linalg.lstsq(ridge_x, ridge_y, rcond=None)[0]
        np.testing.assert_allclose(coefficients[task].numpy(), w, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(values[task].numpy()[valid], (x @ w).astype(np.float32), rtol=1e-5, atol=1e-5)
        assert (values[task][~masks[task]] == 0).all()


def test_linear_feature_baseline_reports_the_tasks_it_cannot_fit():
    returns = torch.zeros(2, 1, 3)
    returns[1, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"tasks \[1\]"):
        LinearFeatureBaseline().fit(torch.zeros(2, 1, 3, 2), returns, torch.ones(2, 1, 3))
    with pytest.raises(ConfigurationError, match="reg_coeff"):
        LinearFeatureBaseline(reg_coeff=0.0)


def test_conjugate_gradient_solves_a_spd_system():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=generator, dtype=DTYPE)
    a, b = m @ m.T + 0.1 * torch.eye(6, dtype=DTYPE), torch.randn(6, generator=generator, dtype=DTYPE)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, iters=20), torch.linalg.solve(a, b))
    damped = conjugate_gradient(lambda v: a @ v, b, iters=20, damping=0.5)
    torch.testing.assert_close(damped, torch.linalg.solve(a + 0.5 * torch.eye(6, dtype=DTYPE), b))
    # stopped early, the solution is not exact, but its product (TRPO's step size) still is
    x, product = solve_with_product(lambda v: a @ v, b, iters=3, damping=0.5)
    assert (a @ x + 0.5 * x - b).abs().max() > 1e-3
    torch.testing.assert_close(product, a @ x + 0.5 * x, rtol=1e-10, atol=1e-12)


def trpo_problem(advantage_scale: float = 1.0):
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(3, 4, hidden_sizes=(8,)).double()
    observations = torch.randn(64, 3, dtype=DTYPE)
    old = policy(observations).detach()
    actions = old.sample(torch.rand(64, dtype=DTYPE))
    adv = advantage_scale * torch.randn(64, dtype=DTYPE)
    masks = torch.ones(64, dtype=DTYPE)

    def loss_and_kl(params):                # "unused" stands for a value head the policy loss ignores
        new = functional_call(policy, {k: v for k, v in params.items() if k != "unused"}, (observations,))
        ratio = torch.exp(new.log_prob(actions) - old.log_prob(actions))
        return -masked_mean(ratio * adv, masks), masked_mean(old.kl(new), masks)

    return policy, loss_and_kl


def test_trpo_step_improves_the_surrogate_within_the_trust_region():
    policy, loss_and_kl = trpo_problem()
    params = {k: v.detach() for k, v in policy.named_parameters()} | {"unused": torch.ones(2, dtype=DTYPE)}
    reduced = []

    def reduce(tensor):
        reduced.append(tensor.numel())
        return tensor

    result = trpo_step(loss_and_kl, params, max_kl=0.01, reduce=reduce)
    assert result.step_fraction > 0 and torch.equal(result.params["unused"], params["unused"])
    loss, kl = loss_and_kl(result.params)
    assert loss.item() == pytest.approx(result.loss.item()) and kl.item() == pytest.approx(result.kl.item())
    assert loss.item() < loss_and_kl(params)[0].item() and 0 < kl.item() <= 0.01
    size = sum(p.numel() for p in params.values())
    trials = round(np.log(result.step_fraction) / np.log(0.8)) + 1
    assert reduced.count(1) == 1 + 2 * trials         # the loss before, and the loss and KL of each trial
    assert reduced.count(size) >= 3                   # the gradient and the Fisher-vector products


def test_maml_trpo_step_differentiates_the_inner_loop_in_the_line_search():
    """The closure adapts first (MAML-TRPO): its inner gradients need autograd during the line search too."""
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(3, 4, hidden_sizes=(8,)).double()
    observations, masks = torch.randn(2, 32, 3, dtype=DTYPE), torch.ones(32, dtype=DTYPE)
    actions = policy(observations).sample(torch.rand(2, 32, dtype=DTYPE))
    inner_adv, outer_adv = torch.randn(2, 32, dtype=DTYPE)

    def adapted(params):
        def inner_loss(p, step):
            log_probs = functional_call(policy, p, (observations[0],)).log_prob(actions[0])
            return -masked_mean(reinforce(log_probs, inner_adv, masks), masks)
        return functional_call(policy, adapt(inner_loss, params, 1, SGD(0.5), "second_order")[-1], (observations[1],))

    params = {k: v.detach() for k, v in policy.named_parameters()}
    old = adapted(params).detach()

    def loss_and_kl(p):
        new = adapted(p)
        ratio = torch.exp(new.log_prob(actions[1]) - old.log_prob(actions[1]))
        return -masked_mean(ratio * outer_adv, masks), masked_mean(old.kl(new), masks)

    result = trpo_step(loss_and_kl, params, max_kl=0.01)
    assert result.step_fraction > 0 and result.loss < result.loss_before and result.kl <= 0.01


def test_trpo_step_keeps_the_parameters_when_nothing_improves():
    policy, loss_and_kl = trpo_problem(advantage_scale=0.0)
    params = {k: v.detach() for k, v in policy.named_parameters()}
    result = trpo_step(loss_and_kl, params, max_kl=0.01)
    assert result.step_fraction == 0.0 and result.loss == result.loss_before and result.kl == 0
    for name, value in params.items():
        assert torch.equal(result.params[name], value)
    with pytest.raises(ConfigurationError, match="ls_backtrack"):
        trpo_step(loss_and_kl, params, ls_backtrack=1.0)


def test_ppo_clip_is_flat_outside_the_clip_range():
    log_probs = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5], dtype=DTYPE)).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=DTYPE)
    objective = ppo_clip(log_probs, torch.zeros(4, dtype=DTYPE), adv, torch.tensor([1, 1, 1, 0]), clip=0.2)
    torch.testing.assert_close(objective, torch.tensor([1.2, -0.8, 1.1, 0.0], dtype=DTYPE))
    gradient, = torch.autograd.grad(objective.sum(), log_probs)
    torch.testing.assert_close(gradient, torch.tensor([0.0, 0.0, 1.1, 0.0], dtype=DTYPE))


def test_padding_with_impossible_actions_stays_finite():
    """Padded steps may hold an action of probability 0: no NaN in any surrogate's value or gradient."""
    log_probs = torch.tensor([[-0.5, float("-inf")]], dtype=DTYPE, requires_grad=True)
    rewards, masks = torch.tensor([[1.0, 2.0]], dtype=DTYPE), torch.tensor([[True, False]])
    outputs = [dice(log_probs, rewards, masks, GAMMA), dice(log_probs, rewards, masks, GAMMA, values=rewards),
               lvc(log_probs, rewards, masks), reinforce(log_probs, rewards, masks),
               ppo_clip(log_probs, log_probs.detach() - 0.1, rewards, masks)]
    for output in outputs:
        gradient, = torch.autograd.grad(output.sum(), log_probs)
        assert output.isfinite().all() and gradient.isfinite().all() and output[0, 1] == 0
