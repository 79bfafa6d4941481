"""Against published code (issue 17): our hypergradients and iMAML's meta-gradient next to ``higher`` and TorchOpt.

* ``higher`` 0.2.1 (Grefenstette et al. 2019): the unrolled hypergradient through its differentiable
  momentum SGD (``higher.innerloop_ctx``, per-step ``override`` of the rate and momentum of each parameter
  group, one group per tensor) equals :func:`lightning_meta.hypergradients.hypergradient`'s reverse mode
  bit for bit in float64: the same operations in the same order.
* TorchOpt 0.7.3 (Ren et al. 2022): the implicit gradient of iMAML's proximal inner problem through its
  ``custom_root`` decorator and conjugate-gradient solver equals :class:`~lightning_meta.IMAML`'s
  meta-gradient on ``tests/test_imaml.py``'s linear-regression tasks (measured: within 2.2e-16, two ulps
  of gradients of ~1).  TorchOpt's C++ extension does not load against torch 2.14.1 (``undefined symbol
  at::_ops::empty_like::call``); ``import torchopt`` falls back to its pure-Python operators and
  ``custom_root`` with ``linear_solve.solve_cg`` is pure Python (``torch.func``), so this runs as is.

Both libraries are in the ``reference`` extra (``make install`` installs them); the tests skip without them.
"""

from __future__ import annotations

import pytest
import torch
from test_imaml import DIM, analytic, implicit, linear_imaml, regression_task
from torch import nn
from torch.func import functional_call

from lightning_meta.hypergradients import hypergradient
from lightning_meta.inner_updates import MomentumSGD

STEPS, POINTS, BATCH, VALIDATION = 15, 40, 10, 30
NET = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny kernels: a second thread only waits at barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ higher
def unroll_problem():
    """Mini-batches of 10 of 40 training points per step, a rate and a momentum per step and tensor, a weight
    per training point and a weight decay as hyper-parameters (float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(POINTS + VALIDATION, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    params = {name: 0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64) for name, p in NET.named_parameters()}
    tensors = len(params)
    hyper = {"update.lr": 0.05 + 0.1 * torch.rand(STEPS, tensors, generator=g, dtype=torch.float64),
             "update.momentum": 0.5 + 0.4 * torch.rand(STEPS, tensors, generator=g, dtype=torch.float64),
             "update.weight_decay": torch.tensor(0.01, dtype=torch.float64),
             "weights": 0.5 + torch.rand(POINTS, generator=g, dtype=torch.float64)}

    def rows(step):
        return torch.arange(step * BATCH, (step + 1) * BATCH) % POINTS

    def losses(logits, which):
        return nn.functional.cross_entropy(logits, y[which], reduction="none")

    validation = torch.arange(POINTS, POINTS + VALIDATION)

    def train_loss(p, h, step):
        return (h["weights"][rows(step)] * losses(functional_call(NET, p, (x[rows(step)],)), rows(step))).mean()

    def val_loss(p, h):
        return losses(functional_call(NET, p, (x[validation],)), validation).mean()

    def through_higher(hyper, nesterov):
        """``higher``'s hypergradient: the same unroll through its differentiable ``torch.optim.SGD``."""
        import higher

        h = {key: value.clone().requires_grad_() for key, value in hyper.items()}
        net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(params[name])
        optimizer = torch.optim.SGD([{"params": [p]} for p in net.parameters()], lr=0.1, momentum=0.9,
                                    nesterov=nesterov)
        with higher.innerloop_ctx(net, optimizer, copy_initial_weights=True) as (fnet, diffopt):
            for step in range(STEPS):
                loss = (h["weights"][rows(step)] * losses(fnet(x[rows(step)]), rows(step))).mean()
                diffopt.step(loss, override={"lr": list(h["update.lr"][step]),
                                             "momentum": list(h["update.momentum"][step]),
                                             "weight_decay": [h["update.weight_decay"]]})
            objective = losses(fnet(x[validation]), validation).mean()
            grads = torch.autograd.grad(objective, list(h.values()))
        return objective.detach(), dict(zip(h, grads))

    return train_loss, val_loss, params, hyper, through_higher


@pytest.mark.parametrize("checkpoint_every", [None, 5])
@pytest.mark.parametrize("nesterov", [False, True])
def test_reverse_hypergradient_is_highers_bit_for_bit(nesterov, checkpoint_every):
    """Per-step, per-tensor rates and momenta, example weights and weight decay, T = 15, float64: every entry
    of our reverse-mode hypergradient (one graph, or 5-step segments) equals ``higher``'s exactly."""
    pytest.importorskip("higher", reason="higher is in the reference extra (make install)")
    train_loss, val_loss, params, hyper, through_higher = unroll_problem()
    ours = hypergradient(train_loss, val_loss, params, hyper, MomentumSGD(0.0, momentum=0.5, nesterov=nesterov),
                         STEPS, checkpoint_every=checkpoint_every)
    loss, theirs = through_higher(hyper, nesterov)
    assert torch.equal(ours.loss, loss), (ours.loss, loss)
    for key in hyper:
        difference = (ours.grads[key] - theirs[key]).abs().max().item() / theirs[key].abs().max().item()
        assert torch.equal(ours.grads[key], theirs[key]), (key, difference)
        assert theirs[key].abs().max() > 0, key


# ------------------------------------------------------------------------------------------ TorchOpt
def torchopt_meta_gradient(model, task) -> torch.Tensor:
    """iMAML's meta-gradient through TorchOpt: ``custom_root`` of the proximal problem's stationarity condition
    ``∇L_support(φ) + λ (φ − θ) = 0`` at iMAML's own ``φ`` (its inner loop is not TorchOpt's to check), the
    linear system ``(H + λI) u = ∇L_query(φ)`` by TorchOpt's CG for as many steps as iMAML's, then
    ``u^T ∂F/∂θ``; flattened as ``tests/test_imaml.py``'s ``implicit`` (weight, then bias)."""
    import torchopt

    sx, sy, qx, qy = task
    net, lam = model.backbone, model.lam
    names = [name for name, _ in net.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    trajectory, _, _ = model.adapt_task(params, sx, sy, qx, model.inner_steps, "none", lam=lam)
    phi = tuple(trajectory[-1][name] for name in names)

    def support(weights):
        return model.loss(functional_call(net, dict(zip(names, weights)), (sx,)), sy)

    def stationarity(weights, theta):  # TorchOpt differentiates it with functorch: torch.func, not autograd
        return tuple(g + lam * (w - t) for g, w, t in zip(torch.func.grad(support)(weights), weights, theta))

    solve = torchopt.linear_solve.solve_cg(maxiter=model.cg_steps, rtol=0.0)

    @torchopt.diff.implicit.custom_root(stationarity, argnums=1, solve=solve)
    def solver(start, theta):
        return tuple(w.detach() for w in phi)

    theta = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    optimum = solver(tuple(t.detach() for t in theta), theta)
    query = model.loss(functional_call(net, dict(zip(names, optimum)), (qx,)), qy)
    grads = torch.autograd.grad(query, theta)
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # TorchOpt calls the deprecated functorch.vjp
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_imaml_meta_gradient_equals_torchopts_implicit_gradient(seed):
    """Linear regression in float64 (6 parameters, λ = 2, 6 CG steps on both sides): IMAML's meta-gradient and
    TorchOpt's agree to 1e-10 of the largest entry (measured <= 2.2e-16 absolute on entries of 0.6-1.7), and
    both are the dense solve's ``(I + H/λ)⁻¹ ∇L_query(φ)``."""
    pytest.importorskip("torchopt", reason="TorchOpt is in the reference extra (make install)")
    model, task = linear_imaml(), regression_task(seed)
    assert model.cg_steps == DIM + 1
    theirs = torchopt_meta_gradient(model, task)
    ours = implicit(model, task)
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= 1e-10 * scale, (ours, theirs)
    reference = analytic(model, task)
    assert (theirs - reference).abs().max().item() <= 1e-10 * scale, (theirs, reference)
