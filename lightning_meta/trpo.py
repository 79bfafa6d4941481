"""A TRPO step on a dict of parameters: natural gradient by conjugate gradient, scaled to the trust region,
then a backtracking line search (Schulman et al. 2015, Appendix C).

MAML-TRPO (Finn et al. 2017) takes this step on the meta-objective: the closure adapts the policy to each
task and returns the post-adaptation surrogate and KL (``pytorch-maml-rl``'s ``MAMLTRPO.step``, learn2learn's
``examples/rl/maml_trpo.py``).  Everything that crosses processes goes through ``reduce``: DDP all-reduces
gradients in ``backward()`` only, never in ``torch.autograd.grad``, so a distributed caller passes
``reduce=lambda t: all_reduce_mean(t)`` and every rank takes the same step.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from lightning_meta.errors import ConfigurationError, require_positive

Params = dict[str, Tensor]
Reduce = Callable[[Tensor], Tensor]


def identity(tensor: Tensor) -> Tensor:
    return tensor


def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, damping: float = 0.0,
                       residual_tol: float = 1e-10) -> Tensor:
    """An approximate solution of ``(H + damping I) x = b``; see :func:`solve_with_product`."""
    return solve_with_product(hvp, b, iters, damping, residual_tol)[0]


def solve_with_product(hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, damping: float = 0.0,
                       residual_tol: Optional[float] = 1e-10) -> tuple[Tensor, Tensor]:
    """``x``, an approximate solution of ``(H + damping I) x = b`` by ``iters`` conjugate-gradient steps from
    ``x = 0`` (fewer once the squared residual is below ``residual_tol``), and ``(H + damping I) x = b - r``.
    ``H`` is symmetric positive (semi-)definite and given by its product ``hvp(v) = H v`` on flat vectors
    (rllab's ``cg``; ``pytorch-maml-rl``'s ``utils/optimization.py``).  The product of the solution comes
    from the residual, so TRPO's step size ``xᵀHx`` costs no extra Hessian product (one of eleven with
    ``iters=10``).

    ``residual_tol=None`` takes exactly ``iters`` steps with no early stop and no host synchronisation
    (no ``.item()``), so the solve runs under ``torch.func.vmap`` (iMAML solves one system per task); a
    step whose residual or curvature is already exactly zero then leaves ``x`` as it is instead of
    dividing by zero.  ``iters`` may be 0 there (``x = 0``).

    Example::

        A = torch.tensor([[4., 1.], [1., 3.]])
        x, ax = solve_with_product(lambda v: A @ v, torch.tensor([1., 2.]))   # x: tensor([0.0909, 0.6364])
    """
    require_positive("iters", iters, allow_zero=residual_tol is None)
    require_positive("damping", damping, allow_zero=True, integer=False)
    if residual_tol is None:
        return _fixed_steps_solve(hvp, b, iters, damping)
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr.item() < residual_tol:
            break
        hp = hvp(p) + damping * p
        alpha = rr / p.dot(hp)
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, b - r


def _fixed_steps_solve(hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int,
                       damping: float) -> tuple[Tensor, Tensor]:
    """:func:`solve_with_product` with ``residual_tol=None``: ``iters`` steps, vmap-safe, zero divisions guarded."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        hp = hvp(p) + damping * p
        curvature = p.dot(hp)
        alpha = torch.where(curvature != 0, rr / torch.where(curvature != 0, curvature, 1), 0)
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = r.dot(r)
        p = r + torch.where(rr != 0, rr_new / torch.where(rr != 0, rr, 1), 0) * p
        rr = rr_new
    return x, b - r


class TRPOStep(NamedTuple):
    """The outcome of :func:`trpo_step`: the new parameters (the old ones if no step was accepted), the loss
    before and after, the KL of the accepted step, and its fraction of the full step (0: rejected)."""

    params: Params
    loss_before: Tensor
    loss: Tensor
    kl: Tensor
    step_fraction: float


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def flat_gradient(output: Tensor, leaves: Params, **kwargs: bool) -> Tensor:
    """The gradient of ``output`` w.r.t. ``leaves`` as one vector, zeros for the parameters it does not use
    (a recurrent policy's value head in its policy loss)."""
    grads = torch.autograd.grad(output, list(leaves.values()), allow_unused=True, materialize_grads=True, **kwargs)
    return flat(list(grads))


def unflat(vector: Tensor, like: Params) -> Params:
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vector[start:start + p.numel()].view_as(p)
        start += p.numel()
    return out


def trpo_step(loss_and_kl: Callable[[Params], tuple[Tensor, Tensor]], params: Params, max_kl: float = 1e-2,
              cg_iters: int = 10, cg_damping: float = 1e-5, residual_tol: float = 1e-10, ls_steps: int = 15,
              ls_backtrack: float = 0.8, reduce: Reduce = identity,
              kl_hvp: Optional[Callable[[Params], Params]] = None) -> TRPOStep:
    """One TRPO update of ``params``, which minimises ``loss`` subject to ``kl <= max_kl``.

    ``loss_and_kl(params) -> (loss, kl)`` gives the surrogate loss (e.g. ``-masked_mean(ratio * A)``) and
    the mean ``KL(old || new)`` from the fixed sampling policy to the policy of ``params`` (0 at ``params``
    itself).  The step:

    1. ``g``: the gradient of the loss; ``H v``: the Hessian-vector product of the KL (the Fisher), plus
       ``cg_damping * v``; both passed through ``reduce``;
    2. ``s``: ``cg_iters`` steps of :func:`conjugate_gradient` on ``H s = -g``, scaled by
       ``sqrt(2 max_kl / sᵀHs)`` to the trust region's edge;
    3. line search on ``params + ls_backtrack^k s``, ``k < ls_steps``: the first point whose reduced loss is
       below the reduced loss before and whose reduced KL is at most ``max_kl`` is accepted; if none is,
       the parameters stay.

    The defaults are rllab's ``ConjugateGradientOptimizer``, which MAML's code used with ``max_kl = 0.01``
    (``pytorch-maml-rl`` and learn2learn's example halve the step instead: ``ls_backtrack=0.5``).
    ``kl_hvp(v) -> H v`` (dicts like ``params``) replaces the KL's double backward when the caller has a
    cheaper exact product (MAML's: adaptation Jacobian, Fisher at the adapted weights, transposed Jacobian,
    without third derivatives).

    The closure runs with gradients enabled in the line search too (a MAML closure differentiates its
    inner loop); its results there are detached.

    Example::

        def loss_and_kl(p):
            new = functional_call(policy, p, (observations,))
            ratio = torch.exp(new.log_prob(actions) - old_log_probs)
            return -masked_mean(ratio * advantages, masks), masked_mean(old.kl(new), masks)

        result = trpo_step(loss_and_kl, dict(policy.named_parameters()), max_kl=0.01)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                p.copy_(result.params[name])
    """
    require_positive("max_kl", max_kl, integer=False)
    require_positive("ls_steps", ls_steps)
    if not 0 < ls_backtrack < 1:
        raise ConfigurationError(f"ls_backtrack={ls_backtrack!r} is invalid: it must lie in (0, 1)")
    old = {name: p.detach() for name, p in params.items()}
    leaves = {name: p.clone().requires_grad_() for name, p in old.items()}
    with torch.enable_grad():
        loss, kl = loss_and_kl(leaves)
        gradient = reduce(flat_gradient(loss, leaves, retain_graph=True))
        kl_gradient = flat_gradient(kl, leaves, create_graph=True) if kl_hvp is None else None

    def hvp(vector: Tensor) -> Tensor:
        with torch.enable_grad():
            if kl_hvp is not None:
                product = flat(list(kl_hvp(unflat(vector, old)).values()))
            else:
                product = flat_gradient(kl_gradient.dot(vector), leaves, retain_graph=True)
        return reduce(product) + cg_damping * vector

    direction, product = solve_with_product(hvp, -gradient, iters=cg_iters, residual_tol=residual_tol)
    curvature = direction.dot(product).clamp_min(torch.finfo(direction.dtype).tiny)  # 0 for a zero gradient
    full_step = direction * torch.sqrt(2 * max_kl / curvature)
    loss_before = reduce(loss.detach())
    start = flat(list(old.values()))
    for k in range(ls_steps):
        fraction = ls_backtrack ** k
        candidate = unflat(start + fraction * full_step, old)
        new_loss, new_kl = loss_and_kl(candidate)
        new_loss, new_kl = reduce(new_loss.detach()), reduce(new_kl.detach())
        if bool(new_loss < loss_before) and bool(new_kl <= max_kl):
            return TRPOStep(candidate, loss_before, new_loss, new_kl, fraction)
    return TRPOStep(old, loss_before, loss_before, torch.zeros_like(loss_before), 0.0)
