"""Hypergradients: the derivative of a validation loss after ``T`` steps of training w.r.t. hyper-parameters.

Training runs ``T`` inner steps of an update rule (:mod:`lightning_meta.inner_updates`) on a training
loss ``train_loss(params, hyper, step)``; the objective is ``val_loss(params_T, hyper)``.  The
hyper-parameters are a dict of tensors: those named ``"update.<field>"`` replace a field of the update rule
(``"update.lr"``, ``"update.momentum"``, ``"update.weight_decay"``, ``"update.betas"``), the others are
read by the losses (per-example weights, an L2 penalty).  :func:`hypergradient` computes
``d val_loss(params_T) / d hyper`` three ways:

* ``"reverse"``: backpropagation through the unrolled training (Maclaurin et al. 2015).  With
  ``checkpoint_every=k`` a forward sweep without graph keeps the parameters and the optimizer state every
  ``k`` steps, then each segment is recomputed with its graph (second-order inner gradients), last segment
  first, and the adjoint is pulled back through it: memory of one segment's graph instead of ``T`` steps'
  for one extra forward sweep.  (``torch.utils.checkpoint`` around steps whose inner gradients carry
  ``create_graph`` costs more time and memory than keeping no checkpoint at all: see
  ``benchmarks/hypergradient_unroll.py``.)
* ``"forward"``: ``torch.func.jvp`` over the whole unroll, one pass per scalar hyper-parameter element (a
  gradient needs every direction; the cost grows with their number, the memory does not grow with ``T``).
  The losses must be ``torch.func``-compatible (no ``.item()``, no in-place updates of their inputs).
* ``"implicit"`` (Lorraine et al. 2020): the implicit function theorem at an approximate optimum ``w`` of the
  training loss, ``dL_val/dh - (d2L_train/dh dw) H^-1 dL_val/dw``, ``H^-1 v`` by conjugate gradients or a
  Neumann series on Hessian-vector products.  Only hyper-parameters of the training loss: an optimizer's
  hyper-parameter does not move the optimum.

Schedules: ``"update.<field>"`` is a scalar tensor, a ``[T]`` tensor (one value per step), or, for a field
typed :data:`~lightning_meta.inner_updates.Rate` (``lr``; ``MomentumSGD.momentum``), a ``[T, P]`` tensor (per
step and parameter tensor, ``P`` tensors in the order of ``params``).
A tuple field (Adam's ``betas``) takes a last dimension of its length (``[2]`` or ``[T, 2]``).

Example::

    hyper = {"update.lr": torch.full((100, 6), 0.1), "update.momentum": torch.tensor(0.9),
             "weights": torch.ones(len(x))}
    train_loss = lambda p, h, step: (h["weights"] * per_example_loss(p, x, y)).mean()
    val_loss = lambda p, h: per_example_loss(p, x_val, y_val).mean()
    result = hypergradient(train_loss, val_loss, params, hyper, MomentumSGD(0.1), steps=100, checkpoint_every=10)
    result.loss, result.grads["update.lr"]      # [100, 6]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from lightning_meta.errors import ConfigurationError, require_choice, require_positive
from lightning_meta.inner_loop import Graph, Params, Update, inner_gradients
from lightning_meta.inner_updates import Rate

Hyper = dict[str, Tensor]
#: ``train_loss(params, hyper, step)``: the loss training descends at step ``step``
TrainLoss = Callable[[Params, Hyper, int], Tensor]
#: ``val_loss(params, hyper)``: the objective, at the trained parameters
ValLoss = Callable[[Params, Hyper], Tensor]
Mode = Literal["reverse", "forward", "implicit"]
Solver = Literal["cg", "neumann"]
UPDATE = "update."


class HyperGradient(NamedTuple):
    """The validation loss at the trained parameters and its gradient per hyper-parameter (detached)."""

    loss: Tensor
    grads: Hyper


def hypergradient(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    params: Params,
    hyper: Hyper,
    update: Update,
    steps: int,
    mode: Mode = "reverse",
    checkpoint_every: Optional[int] = None,
    solver: Solver = "cg",
    solver_steps: int = 20,
    neumann_rate: float = 0.01,
    cg_tol: float = 1e-12,
) -> HyperGradient:
    """``d val_loss(params_T, hyper) / d hyper`` after ``steps`` updates of ``params`` by ``update`` on
    ``train_loss``, the update's fields named in ``hyper`` (``"update.<field>"``) set to those tensors.

    * ``mode="reverse"``: ``checkpoint_every=None`` keeps one graph over all steps; ``k`` keeps the
      parameters and optimizer state every ``k`` steps and one segment's graph at a time.
    * ``mode="forward"``: one ``torch.func.jvp`` pass over the unroll per scalar hyper-parameter.
    * ``mode="implicit"``: ``params_T`` is taken as the optimum of ``train_loss(., hyper, 0)`` (``steps=0``:
      ``params`` itself); ``solver`` ``"cg"`` (stops at a residual ``<= cg_tol * |dL_val/dw|``) or
      ``"neumann"`` (``solver_steps`` terms of rate ``neumann_rate``, below ``2 / largest Hessian
      eigenvalue``) solves ``H q = dL_val/dw``.  Training-loss hyper-parameters only.

    ``params`` and ``hyper`` are not modified, and need not require grad.

    Example::

        update = MomentumSGD(0.1, momentum=0.9, weight_decay=1e-4)
        hyper = {"update.lr": torch.full((steps, len(params)), 0.1), "weights": torch.ones(n)}
        loss, grads = hypergradient(train_loss, val_loss, params, hyper, update, steps, checkpoint_every=10)
    """
    require_choice("mode", mode, Mode)
    require_positive("steps", steps, allow_zero=True)
    if checkpoint_every is not None:
        require_positive("checkpoint_every", checkpoint_every)
    check_update_fields(update, hyper, steps, len(params))
    hyper = {key: value.detach() for key, value in hyper.items()}
    params = {name: p.detach() for name, p in params.items()}
    names = list(params)
    if mode == "forward":
        return forward_mode(train_loss, val_loss, params, hyper, update, steps, names)
    if mode == "implicit":
        for key in hyper:
            if key.startswith(UPDATE):
                raise ConfigurationError(
                    f"hyper[{key!r}] is an optimizer hyper-parameter: mode='implicit' differentiates the optimum of "
                    "the training loss, which it does not move; use mode='reverse' or 'forward'")
        require_choice("solver", solver, Solver)
        require_positive("solver_steps", solver_steps, allow_zero=True)
        optimum, _ = train(train_loss, params, hyper, update, 0, steps, None, "none")
        return implicit_mode(train_loss, val_loss, optimum, hyper, solver, solver_steps, neumann_rate, cg_tol)
    return reverse_mode(train_loss, val_loss, params, hyper, update, steps, names, checkpoint_every or max(steps, 1))


def unrolled_loss(train_loss: TrainLoss, val_loss: ValLoss, params: Params, hyper: Hyper, update: Update,
                  steps: int) -> Tensor:
    """``val_loss(params_T, hyper)`` after ``steps`` updates, without graph: the objective whose gradient
    :func:`hypergradient` computes (for finite differences, and for evaluating hyper-parameters).

    Example::

        loss = unrolled_loss(train_loss, val_loss, params, {"update.lr": torch.tensor(0.1)}, SGD(0.0), steps=10)
    """
    names = list(params)
    check_update_fields(update, hyper, steps, len(names))
    hyper = {key: value.detach() for key, value in hyper.items()}
    final, _ = train(train_loss, params, hyper, bind_update(update, hyper, names), 0, steps, None, "none")
    with torch.no_grad():
        return val_loss(final, hyper)


def train(train_loss: TrainLoss, params: Params, hyper: Hyper, update: Update, start: int, stop: int, state: Any,
          graph: Graph) -> tuple[Params, Any]:
    """Steps ``start .. stop - 1`` from ``params`` and ``state``; the final parameters and optimizer state.

    :func:`~lightning_meta.inner_loop.adapt`'s loop, which returns the trajectory but not the state a
    segment needs to hand on.

    Example::

        middle, velocity = train(train_loss, params, hyper, MomentumSGD(0.1), 0, 50, None, "none")
        final, velocity = train(train_loss, middle, hyper, MomentumSGD(0.1), 50, 100, velocity, "none")
    """
    for step in range(start, stop):
        grads, loss = inner_gradients(lambda p, step=step: train_loss(p, hyper, step), params, graph)
        params, state = update(params, grads, loss, state, step)
    return params, state


def check_update_fields(update: Update, hyper: Hyper, steps: int, tensors: int) -> None:
    """One-line errors for an ``"update.<field>"`` the rule lacks or a tensor of a shape it cannot take."""
    declared = dataclasses.fields(update) if dataclasses.is_dataclass(update) else ()
    fields = {f.name: getattr(update, f.name) for f in declared if not isinstance(getattr(update, f.name), bool)}
    rates = {f.name for f in declared if f.type in ("Rate", Rate)}
    for key, value in hyper.items():
        if not (isinstance(value, Tensor) and value.is_floating_point()):
            got = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise ConfigurationError(f"hyper[{key!r}] must be a floating-point tensor, got {got}")
        if not key.startswith(UPDATE):
            continue
        field = key[len(UPDATE):]
        if field not in fields:
            raise ConfigurationError(f"hyper[{key!r}] is unknown: {type(update).__name__} has no hyper-parameter "
                                     f"{field!r} (it has {', '.join(fields) or 'none'})")
        shape = tuple(value.shape)
        width = (len(fields[field]),) if isinstance(fields[field], tuple) else ()
        allowed = [width, (steps, *width)] + ([(steps, tensors)] if field in rates else [])
        if shape not in allowed:
            raise ConfigurationError(f"hyper[{key!r}] has shape {list(shape)}: it must be one of "
                                     f"{', '.join(str(list(s)) for s in allowed)} (steps={steps}, {tensors} tensors)")


def bind_update(update: Update, hyper: Hyper, names: list[str]) -> Update:
    """``update`` with the fields named in ``hyper`` set, per step, to their values at that step (shapes as
    :func:`check_update_fields` allows).

    Example::

        rule = bind_update(SGD(0.0), {"update.lr": torch.tensor([0.3, 0.2, 0.1])}, names=list(params))
        rule(params, grads, loss, None, 2)       # SGD(0.1)'s step
    """
    chosen = {key[len(UPDATE):]: value for key, value in hyper.items() if key.startswith(UPDATE)}
    if not chosen:
        return update
    index = {name: i for i, name in enumerate(names)}

    def value_at(field: str, value: Tensor, step: int) -> Any:
        current = getattr(update, field)
        if isinstance(current, tuple):
            return tuple(value[i] if value.ndim == 1 else value[step, i] for i in range(len(current)))
        if value.ndim == 0:
            return value
        if value.ndim == 1:
            return value[step]
        return lambda name, _: value[step, index[name]]

    def rule(params: Params, grads: Params, loss: Tensor, state: Any, step: int) -> tuple[Params, Any]:
        fields = {field: value_at(field, value, step) for field, value in chosen.items()}
        return dataclasses.replace(update, **fields)(params, grads, loss, state, step)

    return rule


def leaves(tree: Any) -> Any:
    """``tree`` with every floating tensor replaced by a detached copy that requires grad."""
    return tree_map(lambda t: t.detach().requires_grad_() if isinstance(t, Tensor) and t.is_floating_point() else t,
                    tree)


def tensors(tree: Any) -> list[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


def zeros_where_none(grads: tuple[Optional[Tensor], ...], like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def reverse_mode(train_loss: TrainLoss, val_loss: ValLoss, params: Params, hyper: Hyper, update: Update, steps: int,
                 names: list[str], every: int) -> HyperGradient:
    """Reverse mode over segments of ``every`` steps (one segment: a single graph over the whole unroll)."""
    starts = list(range(0, steps, every)) or [0]
    checkpoints = [(params, None)]
    constant_rule = bind_update(update, hyper, names)
    for start, stop in zip(starts[:-1], starts[1:]):
        last_params, last_state = checkpoints[-1]
        checkpoints.append(train(train_loss, last_params, hyper, constant_rule, start, stop, last_state, "none"))
    hyper_leaves = leaves(hyper)
    rule = bind_update(update, hyper_leaves, names)
    hyper_inputs = list(hyper_leaves.values())
    total: list[Tensor] = []  # d loss / d hyper through the later segments
    adjoints: list[Tensor] = []  # d loss / d (parameters, state) at the end of this segment
    loss = torch.tensor(float("nan"))
    for index in reversed(range(len(starts))):
        start, stop = starts[index], min(starts[index] + every, steps)
        start_params, start_state = leaves(checkpoints[index])
        inputs = (tensors((start_params, start_state)) if index > 0 else []) + hyper_inputs
        with torch.enable_grad():
            end_params, end_state = train(train_loss, start_params, hyper_leaves, rule, start, stop, start_state,
                                          "second_order")
            if index == len(starts) - 1:
                loss = val_loss(end_params, hyper_leaves)
                outputs, seeds = [loss], [torch.ones_like(loss)]
            else:
                pairs = [(o, a) for o, a in zip(tensors((end_params, end_state)), adjoints) if o.requires_grad]
                # the later segments' total enters first, through a node newer than the segment's graph, so the
                # engine adds this segment's contributions to it in plain mode's order: bit-identical sums
                pairs += [(h.view_as(h), t) for h, t in zip(hyper_inputs, total)]
                outputs, seeds = [o for o, _ in pairs], [a for _, a in pairs]
        grads = zeros_where_none(torch.autograd.grad(outputs, inputs, seeds, allow_unused=True), inputs)
        adjoints, total = grads[:len(inputs) - len(hyper_inputs)], grads[len(inputs) - len(hyper_inputs):]
    return HyperGradient(loss.detach(), dict(zip(hyper, total)))


def forward_mode(train_loss: TrainLoss, val_loss: ValLoss, params: Params, hyper: Hyper, update: Update, steps: int,
                 names: list[str]) -> HyperGradient:
    """``torch.func.jvp`` of the unrolled objective along each scalar hyper-parameter, one pass each."""
    def objective(values: Hyper) -> Tensor:
        final, _ = train(train_loss, params, values, bind_update(update, values, names), 0, steps, None,
                         "second_order")
        return val_loss(final, values)

    flat, spec = tree_flatten(hyper)
    grads = [torch.zeros_like(h) for h in flat]
    loss = torch.tensor(float("nan"))
    for which, value in enumerate(flat):
        for element in range(value.numel()):
            tangent = [torch.zeros_like(h) for h in flat]
            tangent[which].view(-1)[element] = 1.0
            loss, derivative = torch.func.jvp(objective, (hyper,), (tree_unflatten(tangent, spec),))
            grads[which].view(-1)[element] = derivative
    return HyperGradient(loss.detach(), tree_unflatten(grads, spec))


def implicit_mode(train_loss: TrainLoss, val_loss: ValLoss, optimum: Params, hyper: Hyper, solver: Solver,
                  solver_steps: int, neumann_rate: float, cg_tol: float) -> HyperGradient:
    """The implicit function theorem at ``optimum``: ``dL_val/dh - (d2L_train/dh dw) q`` with ``H q = dL_val/dw``."""
    weights, hyper_leaves = leaves(optimum), leaves(hyper)
    w, h = list(weights.values()), list(hyper_leaves.values())
    with torch.enable_grad():
        loss = val_loss(weights, hyper_leaves)
        grads = zeros_where_none(torch.autograd.grad(loss, w + h, allow_unused=True), w + h)
        train_grads = torch.autograd.grad(train_loss(weights, hyper_leaves, 0), w, create_graph=True)

    def hessian_vector(vector: list[Tensor]) -> list[Tensor]:
        return zeros_where_none(torch.autograd.grad(train_grads, w, vector, retain_graph=True, allow_unused=True), w)

    solve = conjugate_gradient if solver == "cg" else neumann_series
    q = solve(hessian_vector, grads[:len(w)], solver_steps, cg_tol if solver == "cg" else neumann_rate)
    mixed = zeros_where_none(torch.autograd.grad(train_grads, h, q, allow_unused=True), h)
    return HyperGradient(loss.detach(), {key: (d - m).detach() for key, d, m in zip(hyper, grads[len(w):], mixed)})


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def conjugate_gradient(matvec: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], steps: int,
                       tol: float) -> list[Tensor]:
    """``x ~ A^-1 b`` for a symmetric positive-definite ``A``, ``steps`` iterations of conjugate gradients from 0,
    stopping once the residual is ``<= tol * |b|``.

    Example::

        x = conjugate_gradient(lambda v: [A @ v[0]], [b], steps=len(b), tol=1e-12)
    """
    x = [torch.zeros_like(t) for t in b]
    residual = [t.clone() for t in b]
    direction = [t.clone() for t in b]
    norm = dot(residual, residual)
    threshold = tol ** 2 * norm
    for _ in range(steps):
        if norm <= threshold:
            break
        product = [t.detach() for t in matvec(direction)]
        alpha = norm / dot(direction, product)
        x = [xi + alpha * d for xi, d in zip(x, direction)]
        residual = [r - alpha * p for r, p in zip(residual, product)]
        new_norm = dot(residual, residual)
        direction = [r + (new_norm / norm) * d for r, d in zip(residual, direction)]
        norm = new_norm
    return x


def neumann_series(matvec: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], steps: int,
                   rate: float) -> list[Tensor]:
    """``A^-1 b ~ rate * sum_{j < steps} (I - rate A)^j b`` (Lorraine et al. 2020, Algorithm 3); converges for
    ``0 < rate < 2 / largest eigenvalue of A``.

    Example::

        x = neumann_series(lambda v: [A @ v[0]], [b], steps=500, rate=0.5 / torch.linalg.eigvalsh(A)[-1])
    """
    term = [t.clone() for t in b]
    total = [torch.zeros_like(t) for t in b]
    for _ in range(steps):
        total = [s + t for s, t in zip(total, term)]
        term = [t - rate * p.detach() for t, p in zip(term, matvec(term))]
    return [rate * s for s in total]
