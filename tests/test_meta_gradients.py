"""Meta-gradients of the real training step against learn2learn, in float64.

learn2learn's ``MAML``/``MetaSGD`` (clone/adapt, autograd through module re-routing) is an independent
implementation: the same initial weights and tasks must give the same meta-gradient to 1e-6, for
second and first order, 1 and 5 inner steps, with and without BatchNorm, in loop and vmap batching.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from meta_helpers import meta_gradient, random_classification_batch, relative_difference

from lightning_meta import ANIL, MAML, MetaSGD
from lightning_meta.models import MLP, Conv4

l2l = pytest.importorskip("learn2learn")

WAYS, SHOTS, QUERIES, TASKS = 3, 2, 2, 3


def backbone(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return MLP(in_features=6, out_features=WAYS, hidden=(10, 10))
    return Conv4(in_channels=1, out_features=WAYS, hidden_channels=4, image_size=8)  # BatchNorm in every block


def batch_for(kind: str):
    shape = (6,) if kind == "mlp" else (1, 8, 8)
    return random_classification_batch(TASKS, WAYS, SHOTS, QUERIES, shape, seed=1)


def l2l_reference(algorithm: str, net: torch.nn.Module, batch, lr: float, steps: int, first_order: bool):
    """learn2learn's meta-gradient of the mean query loss over tasks, float64."""
    net = copy.deepcopy(net).double()
    if algorithm == "anil":
        body, head = net.features, l2l.algorithms.MAML(net.head, lr=lr, first_order=first_order)
    elif algorithm == "metasgd":
        body, head = None, l2l.algorithms.MetaSGD(net, lr=lr, first_order=first_order)
    else:
        body, head = None, l2l.algorithms.MAML(net, lr=lr, first_order=first_order)
    for i in range(batch.num_tasks):
        sx, sy, qx, qy = (t.double() if t.is_floating_point() else t for t in batch[i])
        if body is not None:
            sx, qx = body(sx), body(qx)
        learner = head.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        (F.cross_entropy(learner(qx), qy) / batch.num_tasks).backward()
    grads = {f"backbone.{name}": p.grad for name, p in net.named_parameters()}
    if algorithm == "metasgd":
        grads.update({f"step_sizes.rates.{i}": lr_.grad for i, lr_ in enumerate(head.lrs)})
    return grads


ALGORITHMS = {"maml": MAML, "metasgd": MetaSGD, "anil": ANIL}


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("net_kind", ["mlp", "conv_bn"])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "anil"])
def test_meta_gradient_matches_learn2learn(algorithm, first_order, steps, net_kind, batching):
    lr = 0.25  # exactly representable: float32 and float64 learned rates start equal
    net = backbone(net_kind)
    batch = batch_for(net_kind)
    reference = l2l_reference(algorithm, net, batch, lr, steps, first_order)
    model = ALGORITHMS[algorithm](copy.deepcopy(net), inner_lr=lr, inner_steps=steps, first_order=first_order,
                                  batching=batching)
    ours = meta_gradient(model, batch)
    assert relative_difference(ours, reference) < 1e-6


def test_first_and_second_order_differ():
    """Guards the comparison above: the two orders are not the same number by construction."""
    net, batch = backbone("conv_bn"), batch_for("conv_bn")
    second = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.3, inner_steps=2), batch)
    first = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.3, inner_steps=2, first_order=True), batch)
    assert relative_difference(first, second) > 1e-3
