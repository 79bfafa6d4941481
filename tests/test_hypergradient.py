"""Hypergradients through unrolled training and at an optimum (``lightning_meta.hypergradients``), float64.

* reverse and forward mode equal central differences of the unrolled objective (an MLP trained 10 steps on
  20 points with a per-step, per-tensor rate, momentum or Nesterov momentum, weight decay and per-example
  weights; Adam with learned betas);
* reverse mode equals forward mode, and segmented reverse mode is bit-identical to plain reverse mode;
* implicit mode equals finite differences at the exact minimiser (Newton) of ridge regression and of
  L2-regularised logistic regression, with conjugate gradients and with a Neumann series;
* bad inputs give one-line errors that name the field.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_meta.errors import ConfigurationError
from lightning_meta.hypergradients import conjugate_gradient, hypergradient, neumann_series, unrolled_loss
from lightning_meta.inner_loop import adapt
from lightning_meta.inner_updates import SGD, Adam, MomentumSGD

STEPS = 10
POINTS = 20
NET = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
NAMES = [name for name, _ in NET.named_parameters()]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny kernels: a second thread only waits at barriers (2-10x slower here on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def per_example_loss(params, x, y):
    """Cross-entropy per example, written out (``torch.func.jvp`` of its double backward works)."""
    log_probabilities = torch.log_softmax(functional_call(NET, params, (x,)), dim=-1)
    return -log_probabilities.gather(1, y[:, None])[:, 0]


def classification_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * POINTS, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    params = {name: 0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64)
              for name, p in NET.named_parameters()}

    def train_loss(p, h, step):
        return (h["weights"] * per_example_loss(p, x[:POINTS], y[:POINTS])).mean()

    def val_loss(p, h):
        return per_example_loss(p, x[POINTS:], y[POINTS:]).mean()

    return train_loss, val_loss, params, g


def momentum_hyper(g, momentum_per_step_and_tensor=False):
    momentum = (0.5 + 0.3 * torch.rand(STEPS, len(NAMES), generator=g, dtype=torch.float64)
                if momentum_per_step_and_tensor else torch.tensor(0.7, dtype=torch.float64))
    return {"update.lr": 0.2 + 0.2 * torch.rand(STEPS, len(NAMES), generator=g, dtype=torch.float64),
            "update.momentum": momentum,
            "update.weight_decay": torch.tensor(0.05, dtype=torch.float64),
            "weights": 0.5 + torch.rand(POINTS, generator=g, dtype=torch.float64)}


def direct_objective(train_loss, val_loss, params, hyper, nesterov):
    """The unrolled objective with the rule built by hand (not through ``hypergradient``'s field binding)."""
    lr, momentum = hyper["update.lr"], hyper["update.momentum"]
    update = MomentumSGD(lambda name, step: lr[step, NAMES.index(name)],
                         momentum if momentum.ndim == 0 else lambda name, step: momentum[step, NAMES.index(name)],
                         nesterov=nesterov, weight_decay=hyper["update.weight_decay"])
    final = adapt(lambda p, step: train_loss(p, hyper, step), params, STEPS, update, "none")[-1]
    return val_loss(final, hyper)


def central_differences(objective, hyper, h=1e-5):
    grads = {}
    for key, value in hyper.items():
        grads[key] = torch.zeros_like(value)
        for i in range(value.numel()):
            shifted = []
            for sign in (1, -1):
                moved = {k: v.clone() for k, v in hyper.items()}
                moved[key].view(-1)[i] += sign * h
                shifted.append(float(objective(moved)))
            grads[key].view(-1)[i] = (shifted[0] - shifted[1]) / (2 * h)
    return grads


def relative_error(ours, reference):
    """Per hyper-parameter tensor: largest elementwise difference over the largest reference entry; the worst."""
    return max(float((ours[k] - reference[k]).abs().max() / reference[k].abs().max()) for k in reference)


@pytest.mark.parametrize("nesterov", [False, True])
def test_reverse_and_forward_equal_central_differences(nesterov):
    """Heavy ball with one momentum; Nesterov with a momentum per step and parameter tensor."""
    train_loss, val_loss, params, g = classification_problem()
    hyper = momentum_hyper(g, momentum_per_step_and_tensor=nesterov)
    update = MomentumSGD(0.0, momentum=0.5, nesterov=nesterov)
    reverse = hypergradient(train_loss, val_loss, params, hyper, update, STEPS, mode="reverse")
    forward = hypergradient(train_loss, val_loss, params, hyper, update, STEPS, mode="forward")
    numeric = central_differences(lambda h: direct_objective(train_loss, val_loss, params, h, nesterov), hyper)
    reverse_error, forward_error = relative_error(reverse.grads, numeric), relative_error(forward.grads, numeric)
    between = relative_error(reverse.grads, forward.grads)
    print(f"nesterov={nesterov}: reverse vs central differences {reverse_error:.1e}, forward {forward_error:.1e}, "
          f"reverse vs forward {between:.1e}")
    assert reverse_error < 1e-6 and forward_error < 1e-6
    assert between < 1e-12
    objective = direct_objective(train_loss, val_loss, params, hyper, nesterov)
    assert torch.equal(reverse.loss, objective) and torch.equal(forward.loss, objective)
    assert torch.equal(unrolled_loss(train_loss, val_loss, params, hyper, update, STEPS), objective)
    assert all(float(v.abs().max()) > 0 for v in reverse.grads.values())


def test_adam_betas_and_rate_schedule_reverse_equals_forward_and_differences():
    train_loss, val_loss, params, g = classification_problem()
    hyper = {"update.lr": torch.linspace(0.02, 0.05, STEPS, dtype=torch.float64),
             "update.betas": torch.tensor([0.8, 0.99], dtype=torch.float64),
             "weights": 0.5 + torch.rand(POINTS, generator=g, dtype=torch.float64)}
    update = Adam(0.0)
    reverse = hypergradient(train_loss, val_loss, params, hyper, update, STEPS, checkpoint_every=4)
    forward = hypergradient(train_loss, val_loss, params, hyper, update, STEPS, mode="forward")
    numeric = central_differences(lambda h: unrolled_loss(train_loss, val_loss, params, h, update, STEPS), hyper)
    error, between = relative_error(reverse.grads, numeric), relative_error(reverse.grads, forward.grads)
    print(f"Adam: reverse vs central differences {error:.1e}, reverse vs forward {between:.1e}")
    assert error < 1e-6 and between < 1e-12


@pytest.mark.parametrize("rule", ["momentum", "adam"])
@pytest.mark.parametrize("every", [1, 3, 5, 10, 100])
def test_segmented_reverse_is_bit_identical_to_plain(every, rule):
    train_loss, val_loss, params, g = classification_problem()
    hyper = momentum_hyper(g)
    update = MomentumSGD(0.0, momentum=0.5) if rule == "momentum" else Adam(0.0)
    if rule == "adam":
        hyper = {"update.lr": 0.01 * hyper["update.lr"], "update.weight_decay": hyper["update.weight_decay"],
                 "update.betas": torch.tensor([0.8, 0.99], dtype=torch.float64), "weights": hyper["weights"]}
    plain = hypergradient(train_loss, val_loss, params, hyper, update, STEPS)
    segmented = hypergradient(train_loss, val_loss, params, hyper, update, STEPS, checkpoint_every=every)
    assert torch.equal(segmented.loss, plain.loss)
    for key in hyper:
        assert torch.equal(segmented.grads[key], plain.grads[key]), (key, relative_error(segmented.grads, plain.grads))


# ------------------------------------------------------------------------------------------ implicit mode
FEATURES, TRAIN_POINTS, VAL_POINTS = 5, 30, 25


def linear_problem(logistic: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(TRAIN_POINTS + VAL_POINTS, FEATURES, generator=g, dtype=torch.float64)
    truth = torch.randn(FEATURES, generator=g, dtype=torch.float64)
    scores = x @ truth + 0.5 * torch.randn(len(x), generator=g, dtype=torch.float64)
    y = torch.where(scores > 0, 1.0, -1.0).double() if logistic else scores

    def data_loss(p, rows):
        predictions = x[rows] @ p["w"] + p["b"]
        return nn.functional.softplus(-y[rows] * predictions) if logistic else 0.5 * (predictions - y[rows]) ** 2

    train_rows, val_rows = slice(0, TRAIN_POINTS), slice(TRAIN_POINTS, None)

    def train_loss(p, h, step):
        return (h["weights"] * data_loss(p, train_rows)).mean() + 0.5 * h["decay"] * (p["w"] ** 2).sum()

    def val_loss(p, h):
        return data_loss(p, val_rows).mean()

    hyper = {"weights": 0.5 + torch.rand(TRAIN_POINTS, generator=g, dtype=torch.float64),
             "decay": torch.tensor(0.3, dtype=torch.float64)}
    return train_loss, val_loss, hyper


def newton_minimiser(train_loss, hyper):
    """The exact minimiser of the (strictly convex) training loss: Newton's method to a gradient norm <= 1e-12."""
    def flat_loss(vector):
        return train_loss({"w": vector[:FEATURES], "b": vector[FEATURES]}, hyper, 0)

    vector = torch.zeros(FEATURES + 1, dtype=torch.float64)
    for _ in range(50):
        gradient = torch.func.grad(flat_loss)(vector)
        if float(gradient.norm()) <= 1e-12:
            return {"w": vector[:FEATURES], "b": vector[FEATURES]}
        vector = vector - torch.linalg.solve(torch.func.hessian(flat_loss)(vector), gradient)
    raise AssertionError(f"Newton did not converge: gradient norm {float(gradient.norm()):.1e}")


@pytest.mark.parametrize("logistic", [False, True], ids=["ridge", "logistic"])
@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_implicit_equals_finite_differences_at_the_minimiser(logistic, solver):
    train_loss, val_loss, hyper = linear_problem(logistic)
    optimum = newton_minimiser(train_loss, hyper)
    options = (dict(solver_steps=FEATURES + 1) if solver == "cg" else
               dict(solver="neumann", solver_steps=3000, neumann_rate=0.9 / largest_eigenvalue(train_loss, hyper)))
    implicit = hypergradient(train_loss, val_loss, optimum, hyper, SGD(0.1), steps=0, mode="implicit", **options)
    numeric = central_differences(lambda h: val_loss(newton_minimiser(train_loss, h), h), hyper)
    error = relative_error(implicit.grads, numeric)
    print(f"{'logistic' if logistic else 'ridge'} {solver}: implicit vs central differences {error:.1e}")
    assert error < 1e-6


def largest_eigenvalue(train_loss, hyper):
    optimum = newton_minimiser(train_loss, hyper)
    vector = torch.cat([optimum["w"], optimum["b"][None]])
    hessian = torch.func.hessian(lambda v: train_loss({"w": v[:FEATURES], "b": v[FEATURES]}, hyper, 0))(vector)
    return float(torch.linalg.eigvalsh(hessian)[-1])


def test_implicit_after_training_steps_approaches_the_exact_hypergradient():
    train_loss, val_loss, hyper = linear_problem(logistic=False)
    exact = hypergradient(train_loss, val_loss, newton_minimiser(train_loss, hyper), hyper, SGD(0.1), 0,
                          mode="implicit")
    start = {"w": torch.zeros(FEATURES, dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    trained = hypergradient(train_loss, val_loss, start, hyper, MomentumSGD(0.1, 0.9), 300, mode="implicit")
    assert relative_error(trained.grads, exact.grads) < 1e-6


def test_solvers_invert_a_matrix():
    g = torch.Generator().manual_seed(2)
    root = torch.randn(6, 6, generator=g, dtype=torch.float64)
    matrix, b = root @ root.T + torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(matrix, b)
    by_cg = conjugate_gradient(lambda v: [matrix @ v[0]], [b], steps=6, tol=1e-14)[0]
    rate = 1.0 / float(torch.linalg.eigvalsh(matrix)[-1])
    by_neumann = neumann_series(lambda v: [matrix @ v[0]], [b], steps=20000, rate=rate)[0]
    assert torch.allclose(by_cg, exact, rtol=0, atol=1e-10)
    assert torch.allclose(by_neumann, exact, rtol=0, atol=1e-8)
    assert torch.equal(conjugate_gradient(lambda v: [matrix @ v[0]], [b], steps=0, tol=0.0)[0], torch.zeros(6).double())


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, hyper_update, field", [
    (dict(checkpoint_every=0), {}, "checkpoint_every"),
    (dict(mode="implicit"), {"update.lr": torch.tensor(0.1)}, "update.lr"),
    (dict(), {"update.momentum": torch.tensor(0.9)}, "update.momentum"),
    (dict(), {"update.lr": torch.ones(3, 2)}, "update.lr"),
    (dict(mode="sideways"), {}, "mode"),
    (dict(), {"weights": torch.ones(POINTS, dtype=torch.long)}, "weights"),
    (dict(), {"decay": 0.1}, "decay"),
    (dict(mode="implicit", solver="newton"), {}, "solver"),
    (dict(mode="implicit", solver_steps=-1), {}, "solver_steps"),
])
def test_bad_inputs_give_one_line_errors_naming_the_field(kwargs, hyper_update, field):
    train_loss, val_loss, params, g = classification_problem()
    hyper = {"weights": torch.ones(POINTS, dtype=torch.float64), **hyper_update}
    with pytest.raises(ConfigurationError) as error:
        hypergradient(train_loss, val_loss, params, hyper, SGD(0.1), STEPS, **kwargs)
    message = str(error.value)
    assert field in message and "\n" not in message, message


def test_zero_steps_differentiate_the_validation_loss_at_the_given_parameters():
    train_loss, val_loss, params, g = classification_problem()
    hyper = {"weights": torch.ones(POINTS, dtype=torch.float64), "update.lr": torch.tensor(0.1, dtype=torch.float64)}
    for every in (None, 3):
        result = hypergradient(train_loss, val_loss, params, hyper, SGD(0.0), 0, checkpoint_every=every)
        assert torch.equal(result.loss, val_loss(params, hyper))
        assert all(torch.equal(v, torch.zeros_like(v)) for v in result.grads.values())
