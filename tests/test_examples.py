"""The examples run (a few steps each) and return test metrics."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,metric", [("maml_custom_inner_loss", "test/mse"),
                                         ("custom_backbone_and_data", "test/acc"),
                                         ("protonet_custom_distance", "test/acc")])
def test_example_runs(name, metric):
    results = load(name).main(steps=3, test_episodes=8)
    assert math.isfinite(results[metric]) and f"{metric}_ci95" in results


def test_subclass_hook_is_used():
    module = load("maml_custom_inner_loss")
    import torch

    model = module.HuberMAML(module.MLP(1, 1, (4,)))
    big = model.inner_loss(torch.zeros(1, 1), torch.full((1, 1), 10.0))
    assert big.item() < 10.0  # Huber, not the squared error 100 of the default hook


def test_the_swapped_distance_is_trained():
    module = load("protonet_custom_distance")
    import torch

    model = module.MahalanobisProtoNet(module.Conv4(1, None, hidden_channels=8, pooling="max",
                                                    batch_norm_stats="running"), features=8)
    support, labels, queries = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 0, 1]), torch.randn(2, 1, 28, 28)
    loss, _ = model.training_objective({}, support, labels, queries, torch.tensor([0, 1]))
    loss.backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.abs().sum() > 0
