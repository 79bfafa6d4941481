"""The inner-loop driver ``adapt`` around a loss and its update rules.

* ``adapt`` is pure: under ``torch.func.grad``, ``vmap`` and ``jvp`` it gives the loop path's numbers;
* ``graph`` means what it says (second order, first order with the parameters' graph kept, none);
* fp16 loss scaling is a no-op on the numbers, and the update sees the unscaled loss;
* SGD, momentum SGD (heavy ball, Nesterov, weight decay) and Adam (with L2 weight decay) follow
  ``torch.optim``'s trajectories, and are differentiable in a learned rate (finite differences, float64);
* Adam where a gradient is exactly zero: still ``torch.optim``'s values, finite hypergradients equal to
  central differences;
* Reptile's interpolation loss has gradient ``theta - phi``; the per-step example order; the internals helper;
* a checkpoint saved with the learners' old attribute names (``model.``, ``learner.``) loads;
* ``StepSizes``: each kind's shapes and rates, its meta-gradient equal to central differences, Meta-SGD's and
  MAML++'s meta-gradients bit-identical to the formula before the new kinds, a bad kind's one-line error.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from meta_helpers import quiet_trainer, random_classification_batch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.utils.data import DataLoader

from lightning_meta import MAML
from lightning_meta.algorithms.meta_lstm import MetaLearnerLSTM
from lightning_meta.algorithms.meta_sgd import MetaSGD
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.inner_loop import adapt, example_order, interpolation_loss, supervised_loss
from lightning_meta.errors import ConfigurationError
from lightning_meta.inner_updates import SGD, Adam, AdamState, MomentumSGD, StepSizes
from lightning_meta.internals import inside_functorch_transform
from lightning_meta.models import MLP, Conv4

NET = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def forward(params, x):
    return functional_call(NET, params, (x,))


def mse(predictions, targets):
    """Mean squared error.  Not ``F.mse_loss``: its double backward fails under ``jvp`` in torch 2.14
    ("ZeroTensors are immutable"), a torch bug, not the engine's."""
    return ((predictions - targets) ** 2).mean()


def start_params():
    torch.manual_seed(0)
    return {name: torch.randn_like(p) * 0.5 for name, p in NET.named_parameters()}


def task(seed: int, points: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * points, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True) * (1 + seed))
    return x[:points], y[:points], x[points:], y[points:]


def query_loss(params, lr, support_x, support_y, query_x, query_y, graph="second_order", update=SGD, steps=3):
    support_loss = supervised_loss(forward, support_x, support_y, mse)
    final = adapt(support_loss, params, steps, update(lr), graph)[-1]
    return mse(forward(final, query_x), query_y)


def autograd_gradient(fn, params, lr, *args, **kwargs):
    """The loop path: autograd outside any functorch transform."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    rate = lr.clone().requires_grad_()
    loss = fn(leaves, rate, *args, **kwargs)
    values = torch.autograd.grad(loss, [*leaves.values(), rate])
    return loss.detach(), dict(zip(leaves, values[:-1])), values[-1]


# ---------------------------------------------------------------------------------------- purity
@pytest.mark.parametrize("graph", ["second_order", "first_order"])
def test_adapt_under_torch_func_grad_matches_the_loop_path(graph):
    params, lr, data = start_params(), torch.tensor(0.3, dtype=torch.float64), task(1)
    loss, loop_params, loop_lr = autograd_gradient(query_loss, params, lr, *data, graph=graph)
    func_params, func_lr = grad(query_loss, argnums=(0, 1))(params, lr, *data, graph=graph)
    for name in params:
        torch.testing.assert_close(func_params[name], loop_params[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(func_lr, loop_lr, rtol=1e-12, atol=1e-14)
    assert loop_lr.abs() > 1e-6


def test_second_and_first_order_differ_and_first_order_is_fomaml_for_one_step():
    params, lr, data = start_params(), torch.tensor(0.3, dtype=torch.float64), task(2)
    _, second, _ = autograd_gradient(query_loss, params, lr, *data, graph="second_order", steps=1)
    _, first, _ = autograd_gradient(query_loss, params, lr, *data, graph="first_order", steps=1)
    # FOMAML: the meta-gradient is the query gradient at the adapted weights
    support_loss = supervised_loss(forward, data[0], data[1], mse)
    phi = {k: v.detach().requires_grad_() for k, v in adapt(support_loss, params, 1, SGD(lr), "none")[-1].items()}
    fomaml = torch.autograd.grad(mse(forward(phi, data[2]), data[3]), list(phi.values()))
    for (name, value), expected in zip(first.items(), fomaml):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    assert max((second[k] - first[k]).abs().max().item() for k in params) > 1e-4


def test_adapt_under_vmap_matches_a_loop_over_tasks():
    params, lr = start_params(), torch.tensor(0.2, dtype=torch.float64)
    tasks = [task(seed) for seed in range(3)]
    looped = torch.stack([query_loss(params, lr, *t, update=lambda r: MomentumSGD(r, 0.8)) for t in tasks])
    stacked = [torch.stack(parts) for parts in zip(*tasks)]
    vmapped = vmap(lambda *t: query_loss(params, lr, *t, update=lambda r: MomentumSGD(r, 0.8)))(*stacked)
    torch.testing.assert_close(vmapped, looped, rtol=1e-12, atol=1e-14)
    # and the meta-gradients of every task, each inside vmap (vmap(grad(task)))
    per_task = vmap(grad(query_loss), in_dims=(None, None, 0, 0, 0, 0))(params, lr, *stacked)
    for i, t in enumerate(tasks):
        _, expected, _ = autograd_gradient(query_loss, params, lr, *t)
        for name in params:
            torch.testing.assert_close(per_task[name][i], expected[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", [SGD, lambda r: Adam(r, (0.5, 0.9))])
def test_adapt_under_jvp_matches_the_loop_path(update):
    """Forward mode (jvp over the adaptation, reverse mode for the inner gradients) in a learned rate and
    the weights: the value is the loop's, the tangent is the loop gradient along the direction."""
    params, lr, data = start_params(), torch.tensor(0.1, dtype=torch.float64), task(3)
    loss, grads, grad_lr = autograd_gradient(query_loss, params, lr, *data, update=update)
    g = torch.Generator().manual_seed(4)
    direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    value, tangent = jvp(lambda p, r: query_loss(p, r, *data, update=update), (params, lr),
                         (direction, torch.tensor(0.7, dtype=torch.float64)))
    expected = sum((grads[k] * direction[k]).sum() for k in params) + grad_lr * 0.7
    torch.testing.assert_close(value, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tangent, expected, rtol=1e-9, atol=1e-12)


def test_inside_functorch_transform():
    assert not inside_functorch_transform()
    seen = []
    probe = lambda x: seen.append(inside_functorch_transform()) or x.sum()  # noqa: E731
    grad(probe)(torch.ones(2))
    vmap(probe)(torch.ones(2, 2))
    jvp(probe, (torch.ones(2),), (torch.ones(2),))
    assert seen == [True, True, True]


# ---------------------------------------------------------------------------------------- the driver
def test_graph_none_detaches_everything_even_a_learned_rate():
    params = {k: v.requires_grad_() for k, v in start_params().items()}
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    support_loss = supervised_loss(forward, *task(5)[:2], mse)
    trajectory = adapt(support_loss, params, 2, SGD(lr), "none")
    assert all(not p.requires_grad for point in trajectory for p in point.values())
    first = adapt(support_loss, params, 2, SGD(lr), "first_order")
    assert all(p.requires_grad for p in first[-1].values())


def test_the_update_sees_steps_state_and_the_unscaled_loss():
    seen = []

    def update(params, grads, loss, state, step):
        seen.append((step, state, loss.item(), {k: g.clone() for k, g in grads.items()}))
        return SGD(0.1)(params, grads, loss, state, step)[0], (state or 0) + 1

    def support_loss(params, step):
        x, y = task(10 + step)[:2]
        return mse(forward(params, x), y)

    params = start_params()
    adapt(support_loss, params, 3, update, "none", state=None)
    plain = list(seen)
    seen.clear()
    adapt(support_loss, params, 3, update, "none", loss_scale=2.0 ** 12)
    assert [s[:2] for s in plain] == [(0, None), (1, 1), (2, 2)]  # the step picks the batch; state threads through
    for (_, _, loss, grads), (_, _, scaled_loss, scaled_grads) in zip(plain, seen):
        assert scaled_loss == loss  # powers of two: the scaling is exact
        assert all(torch.equal(grads[k], scaled_grads[k]) for k in grads)


def test_supervised_loss_takes_each_steps_batch():
    x = torch.arange(6.0).unsqueeze(1)
    y = torch.zeros(6, 1)
    order = example_order(6, 3, 2)
    assert order.tolist() == [0, 1, 2, 3, 4, 5]
    seen = []
    support_loss = supervised_loss(lambda p, inputs: seen.append(inputs.flatten().tolist()) or inputs, x, y,
                                   mse, order.reshape(3, -1))
    for step in range(3):
        support_loss({}, step)
    assert seen == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert example_order(5, 3, 2).tolist() == [0, 1, 2, 3, 4, 0]  # in order, cyclically


# ---------------------------------------------------------------------------------------- update rules
TORCH_OPTIMS = {
    "sgd": (SGD(0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "sgd_weight_decay": (SGD(0.05, weight_decay=0.1), lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.1)),
    "momentum": (MomentumSGD(0.05, 0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "momentum_weight_decay": (MomentumSGD(0.05, 0.9, weight_decay=0.1),
                              lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1)),
    "nesterov": (MomentumSGD(0.05, 0.9, nesterov=True),
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "nesterov_weight_decay": (MomentumSGD(0.05, 0.8, nesterov=True, weight_decay=0.1),
                              lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    "adam": (Adam(0.01, (0.9, 0.99), 1e-6), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-6)),
    "adam_beta1_0": (Adam(0.01, (0.0, 0.999)), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.0, 0.999))),
    "adam_weight_decay": (Adam(0.01, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
}


def torch_optim_trajectory(optimizer, params, support_loss, steps: int):
    """The points ``torch.optim`` visits from ``params`` on ``support_loss`` (the start excluded)."""
    leaves = {name: nn.Parameter(v.detach().clone()) for name, v in params.items()}
    opt = optimizer(list(leaves.values()))
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        support_loss(leaves, 0).backward()
        opt.step()
        trajectory.append({name: leaf.detach().clone() for name, leaf in leaves.items()})
    return trajectory


def assert_same_trajectory(ours, reference):
    for point, expected in zip(ours, reference, strict=True):
        for name, value in expected.items():
            torch.testing.assert_close(point[name].detach(), value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", list(TORCH_OPTIMS))
def test_updates_follow_torch_optims_trajectories(case):
    """20 steps on a float64 regression loss: every point of the trajectory is ``torch.optim``'s."""
    rule, optimizer = TORCH_OPTIMS[case]
    params, (x, y, _, _) = start_params(), task(11)
    support_loss = supervised_loss(forward, x, y, mse)
    ours = adapt(support_loss, params, 20, rule, "none")
    assert_same_trajectory(ours[1:], torch_optim_trajectory(optimizer, params, support_loss, 20))
    assert max((ours[-1][k] - params[k]).abs().max().item() for k in params) > 1e-2  # it moved


def zero_input_task():
    """A task whose first input is 0 in every example (like digits' border pixels): the gradient of the
    first layer's weights on that input is exactly zero at every step, and so is Adam's second moment."""
    support_x, support_y, query_x, query_y = task(12)
    support_x[:, 0] = 0.0
    query_x[:, 0] = 0.0
    return support_x, support_y, query_x, query_y


def adam_query_loss(params, lr, beta1, beta2, support_x, support_y, query_x, query_y, steps=4):
    support_loss = supervised_loss(forward, support_x, support_y, mse)
    trajectory = adapt(support_loss, params, steps, Adam(lr, (beta1, beta2), eps=1e-8), "second_order")
    return mse(forward(trajectory[-1], query_x), query_y), trajectory


def test_adam_with_an_exactly_zero_gradient_has_finite_hypergradients():
    """d sqrt(v)/dv is infinite at v = 0: a naive differentiable Adam gives NaN for the weights of an
    always-zero input, and NaN spreads to the rate and the betas.  Forward: still ``torch.optim.Adam``'s
    numbers; backward: finite, and the central differences of the unrolled objective."""
    params, data = start_params(), zero_input_task()
    hyper = [torch.tensor(value, dtype=torch.float64) for value in (0.02, 0.6, 0.9)]
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    rates = [h.clone().requires_grad_() for h in hyper]
    loss, trajectory = adam_query_loss(leaves, *rates, *data)
    assert torch.equal(trajectory[1]["0.weight"][:, 0], params["0.weight"][:, 0])  # the zero-gradient weights
    support_loss = supervised_loss(forward, data[0], data[1], mse)
    optimizer = lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.6, 0.9), eps=1e-8)  # noqa: E731
    assert_same_trajectory(trajectory[1:], torch_optim_trajectory(optimizer, params, support_loss, 4))

    grads = torch.autograd.grad(loss, [*leaves.values(), *rates])
    assert all(torch.isfinite(g).all() for g in grads)
    objective = lambda p, *h: adam_query_loss(p, *h, *data)[0].item()  # noqa: E731
    eps = 1e-6
    for i, analytic in enumerate(grads[len(leaves):]):  # lr, beta1, beta2
        plus, minus = list(hyper), list(hyper)
        plus[i], minus[i] = hyper[i] + eps, hyper[i] - eps
        numeric = (objective(params, *plus) - objective(params, *minus)) / (2 * eps)
        assert abs(analytic.item()) > 1e-5
        assert abs(analytic.item() - numeric) <= 1e-6 * max(1.0, abs(numeric)), (i, analytic.item(), numeric)
    g = torch.Generator().manual_seed(13)
    direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    analytic = sum((grad * direction[k]).sum() for k, grad in zip(leaves, grads)).item()
    shifted = lambda sign: {k: v + sign * eps * direction[k] for k, v in params.items()}  # noqa: E731
    numeric = (objective(shifted(1), *hyper) - objective(shifted(-1), *hyper)) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def gradient_sequence(params, steps: int):
    g = torch.Generator().manual_seed(7)
    return [{k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()} for _ in range(steps)]


def test_adam_counts_its_steps_and_nesterov_needs_momentum():
    params = start_params()
    state = None
    for step, grads in enumerate(gradient_sequence(params, 3)):
        params, state = Adam(0.01)(params, grads, torch.zeros(()), state, step)
    assert isinstance(state, AdamState) and state.count == 3
    with pytest.raises(ValueError, match="Nesterov"):
        MomentumSGD(0.1, 0.0, nesterov=True)


@pytest.mark.parametrize("update", [lambda r: MomentumSGD(r, 0.7), lambda r: MomentumSGD(r, 0.7, True, 0.1),
                                    lambda r: Adam(r, (0.8, 0.95)), lambda r: Adam(r, (0.8, 0.95), weight_decay=0.1)])
def test_a_learned_rate_gets_the_finite_difference_gradient(update):
    params, data = start_params(), task(6)
    lr = torch.tensor(0.05, dtype=torch.float64)
    _, _, analytic = autograd_gradient(query_loss, params, lr, *data, update=update, steps=4)
    eps = 1e-6
    plus = query_loss(params, lr + eps, *data, update=update, steps=4)
    minus = query_loss(params, lr - eps, *data, update=update, steps=4)
    numeric = (plus - minus) / (2 * eps)
    assert analytic.abs() > 1e-4
    assert abs(analytic.item() - numeric.item()) <= 1e-7 * max(1.0, abs(numeric.item()))


def test_learned_momentum_and_betas_get_gradients():
    params, data = start_params(), task(8)
    momentum = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    beta1 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    for update in (MomentumSGD(0.05, momentum), Adam(0.05, (beta1, 0.9))):
        support_loss = supervised_loss(forward, data[0], data[1], mse)
        final = adapt(support_loss, params, 3, update, "first_order")[-1]
        mse(forward(final, data[2]), data[3]).backward()
    assert momentum.grad.abs() > 0 and beta1.grad.abs() > 0


# ---------------------------------------------------------------------------------------- Reptile's outer step
def test_interpolation_loss_has_gradient_theta_minus_phi():
    theta = {k: v.requires_grad_() for k, v in start_params().items()}
    phi = {k: v.detach() * 0.5 + 1.0 for k, v in theta.items()}
    loss = interpolation_loss(theta, phi)
    assert loss.item() == 0.0
    grads = torch.autograd.grad(loss, list(theta.values()))
    for (name, value), g in zip(theta.items(), grads):
        torch.testing.assert_close(g, (value - phi[name]).detach(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- renamed attributes
def fit_and_save(model, batch, path):
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=path.parent)
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(path)


@pytest.mark.parametrize("make,old", [
    (lambda: MAML(MLP(4, 3, (8,)), inner_lr=0.1, inner_steps=2, step_sizes="per_layer_per_step"), "model."),
    (lambda: Reptile(MLP(4, 3, (8,)), inner_steps=2, inner_batch_size=2), "model."),
    (lambda: MetaLearnerLSTM(Conv4(1, 3, hidden_channels=3, pooling="max", image_size=16), inner_steps=2),
     "learner."),
])
def test_a_checkpoint_with_the_old_attribute_name_loads(tmp_path, make, old):
    torch.manual_seed(0)
    model = make()
    shape = (4,) if isinstance(model.backbone, MLP) else (1, 16, 16)
    batch = random_classification_batch(2, 3, 2, 2, shape, seed=1)
    path = tmp_path / "new.ckpt"
    fit_and_save(model, batch, path)
    checkpoint = torch.load(path, weights_only=True)
    assert any(key.startswith("backbone.") for key in checkpoint["state_dict"])
    checkpoint["state_dict"] = {(old + key[len("backbone."):] if key.startswith("backbone.") else key): value
                                for key, value in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "old.ckpt")

    loaded = type(model).load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with torch.enable_grad():
        expected, loaded_after = model.evaluate_batch(batch)[0], loaded.evaluate_batch(copy.deepcopy(batch))[0]
    assert torch.equal(loaded_after, expected)


# ---------------------------------------------------------------------------------------- StepSizes kinds
SHAPES = {name: p.shape for name, p in NET.named_parameters()}  # 0.weight [6, 2], 0.bias [6], 2.weight, 2.bias
STEPS = 3
KIND_SHAPES = {
    "fixed": [],
    "scalar": [()],
    "per_layer": [(), (), (), ()],
    "per_step": [(STEPS,)],
    "per_parameter": [(6, 2), (6,), (1, 6), (1,)],
    "per_layer_per_step": [(STEPS,)] * 4,
}


@pytest.mark.parametrize("kind", list(KIND_SHAPES))
def test_each_step_size_kind_has_its_shapes_and_rates(kind):
    sizes = StepSizes(SHAPES, steps=STEPS, init=0.1, kind=kind)
    assert [tuple(p.shape) for _, p in sizes.named_parameters()] == KIND_SHAPES[kind]
    assert [name for name, _ in sizes.named_parameters()] == [f"rates.{i}" for i in range(len(KIND_SHAPES[kind]))]
    assert sizes.learned == (kind != "fixed")
    values = {name: torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape) + 1 + 10 * i
              for i, (name, p) in enumerate(sizes.named_parameters())}
    rate = sizes.bind(values)
    for name in SHAPES:
        for step in range(STEPS + 2):  # steps beyond the trained ones reuse the last
            value = rate(name, step)
            layer, last = list(SHAPES).index(name), min(step, STEPS - 1)
            expected = {"fixed": 0.1, "scalar": 1.0, "per_layer": 1.0 + 10 * layer, "per_step": 1.0 + last,
                        "per_parameter": values.get(f"rates.{layer}"),
                        "per_layer_per_step": 1.0 + 10 * layer + last}[kind]
            if isinstance(expected, Tensor):
                assert value is expected
            else:
                assert float(value) == expected, (name, step)


def step_size_query_loss(values, sizes, params, support_x, support_y, query_x, query_y, update=SGD):
    support_loss = supervised_loss(forward, support_x, support_y, mse)
    final = adapt(support_loss, params, STEPS, update(sizes.bind(values)), "second_order")[-1]
    return mse(forward(final, query_x), query_y)


@pytest.mark.parametrize("kind", [k for k in KIND_SHAPES if k != "fixed"])
def test_each_learned_kind_gets_the_central_difference_meta_gradient(kind):
    """float64, 3 second-order SGD steps, rates spread around 0.1 so that every entry differs: the
    meta-gradient of the query loss w.r.t. the rates (and the initial weights) equals central differences
    of the unrolled objective along random directions."""
    sizes = StepSizes(SHAPES, steps=STEPS, init=0.1, kind=kind).double()
    g = torch.Generator().manual_seed(3)
    values = {name: p.detach() * (1 + 0.3 * torch.rand(p.shape, generator=g, dtype=p.dtype))
              for name, p in sizes.named_parameters()}
    params, data = start_params(), task(4)
    rates = {name: v.clone().requires_grad_() for name, v in values.items()}
    leaves = {name: v.clone().requires_grad_() for name, v in params.items()}
    loss = step_size_query_loss(rates, sizes, leaves, *data)
    analytic = torch.autograd.grad(loss, [*rates.values(), *leaves.values()])
    directions = [torch.randn(v.shape, generator=g, dtype=v.dtype) for v in [*values.values(), *params.values()]]
    eps, worst = 1e-6, 0.0
    for which in ("rates", "weights"):
        chosen = range(len(values)) if which == "rates" else range(len(values), len(directions))
        along = sum((analytic[i] * directions[i]).sum() for i in chosen).item()

        def shifted(sign):
            moved = [v + sign * eps * directions[i] if i in chosen else v
                     for i, v in enumerate([*values.values(), *params.values()])]
            return step_size_query_loss(dict(zip(values, moved[:len(values)])), sizes,
                                        dict(zip(params, moved[len(values):])), *data).item()

        numeric = (shifted(1) - shifted(-1)) / (2 * eps)
        assert abs(along) > 1e-4, (which, along)
        worst = max(worst, abs(along - numeric) / abs(numeric))
    assert worst <= 1e-7, worst


def unchanged_meta_sgd_formula(model, support_x, support_y, query_x, query_y, rate):
    """The meta-loss of Meta-SGD / MAML++ as the code before the added kinds computed it, written out:
    ``theta - rate(name, step) * grad`` for each step, gradients with ``create_graph``, then the query loss."""
    fast = {name[len("backbone."):]: p for name, p in model.named_parameters() if name.startswith("backbone.")}
    for step in range(model.inner_steps):
        with torch.enable_grad():
            inputs = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in fast.items()}
            value = F.cross_entropy(functional_call(model.backbone, inputs, (support_x,)), support_y) * 1.0
            grads = dict(zip(inputs, torch.autograd.grad(value, list(inputs.values()), create_graph=True)))
        fast = {n: p - rate(n, step) * grads[n] for n, p in inputs.items()}
    return F.cross_entropy(functional_call(model.backbone, fast, (query_x,)), query_y)


@pytest.mark.parametrize("make,rate", [
    (lambda: MetaSGD(MLP(4, 3, (8,)), inner_lr=0.1, inner_steps=2),
     lambda rates, index: lambda name, step: rates[index[name]]),
    (lambda: MAML(MLP(4, 3, (8,)), inner_lr=0.1, inner_steps=3, step_sizes="per_layer_per_step"),
     lambda rates, index: lambda name, step: rates[index[name]][min(step, rates[index[name]].shape[0] - 1)]),
])
def test_meta_sgd_and_maml_plus_plus_meta_gradients_are_bit_identical_to_the_unchanged_formula(make, rate):
    torch.manual_seed(0)
    model = make().double()
    with torch.no_grad():  # rates that differ per entry
        for p in model.step_sizes.parameters():
            p.mul_(1 + 0.5 * torch.rand_like(p))
    batch = random_classification_batch(1, 3, 2, 2, (4,), seed=1)
    task_ = [t[0].double() if t.is_floating_point() else t[0] for t in batch.tensors()]
    params = dict(model.named_parameters())
    ours = torch.autograd.grad(model.training_objective(params, *task_)[0], list(params.values()))
    rates = list(model.step_sizes.rates)
    reference = torch.autograd.grad(
        unchanged_meta_sgd_formula(model, *task_, rate(rates, model.step_sizes.index)), list(params.values()))
    assert sorted(params)[-1].startswith("step_sizes.rates.")
    for name, a, b in zip(params, ours, reference, strict=True):
        assert torch.equal(a, b), name
        assert a.abs().sum() > 0, name


@pytest.mark.parametrize("make", [
    lambda: StepSizes(SHAPES, steps=2, init=0.1, kind="per_weight"),
    lambda: MAML(MLP(4, 3, (8,)), step_sizes="per_weight"),
])
def test_a_bad_step_size_kind_is_a_one_line_error_naming_the_field(make):
    with pytest.raises(ConfigurationError) as error:
        make()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model.init_args.step_sizes='per_weight' is unknown: choose one of fixed, scalar, "
                              "per_layer, per_step, per_parameter, per_layer_per_step")
