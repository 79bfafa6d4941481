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


@pytest.mark.parametrize("name,metric,kwargs", [
    ("maml_custom_inner_loss", "test/mse", dict(test_episodes=8)),
    ("custom_backbone_and_data", "test/acc", dict(test_episodes=8)),
    ("protonet_custom_distance", "test/acc", dict(test_episodes=8)),
    ("reptile_label_smoothing", "test/acc_transductive", dict(test_episodes=8)),
    ("baseline_imprinted_head", "test/acc", dict(test_episodes=8)),
    ("dann_image_folders", "source_only/test/target_acc", dict(classes=5)),
    ("mann_custom_controller", "test/acc_inst2", dict(test_episodes=8)),
    ("metalstm_inspect_gates", "test/acc", dict(test_episodes=8)),
    ("snail_learned_label_code", "test/acc", dict(test_episodes=8)),
])
def test_example_runs(name, metric, kwargs):
    results = load(name).main(steps=3, **kwargs)
    assert math.isfinite(results[metric]) and f"{metric.replace('_transductive', '')}_ci95" in results


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


def test_snail_example_trains_its_label_codes_and_queries_get_the_unlabelled_code():
    module = load("snail_learned_label_code")
    import torch

    torch.manual_seed(0)
    model = module.LabelCodeSNAIL(module.Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running"),
                                  ways=3, shots=1, attention=[[4, 4], [4, 4]], tc_filters=[4])
    features = torch.randn(2, 4)
    unlabelled = model.sequence_inputs(features, None)[:, 4:]
    assert torch.equal(unlabelled, model.label_codes.weight[3].expand(2, 3))
    support, labels, queries = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2]), torch.randn(2, 1, 28, 28)
    loss, _ = model.training_objective({}, support, labels, queries, torch.tensor([0, 2]))
    loss.backward()
    assert model.label_codes.weight.grad[:4].abs().sum(1).gt(0).all()


def test_reptile_example_descends_the_smoothed_loss():
    module = load("reptile_label_smoothing")
    import torch

    model = module.SmoothedReptile(module.Conv4(1, 2, hidden_channels=4, image_size=8), smoothing=0.2)
    confident = torch.tensor([[20.0, -20.0]])
    # plain cross-entropy is ~0 for a confident right answer; the smoothed one is not (0.1 * 40)
    assert model.inner_loss(confident, torch.tensor([0])).item() > 3.9


def test_imprinted_head_starts_as_the_nearest_normalised_class_mean():
    module = load("baseline_imprinted_head")
    import torch
    import torch.nn.functional as F

    model = module.ImprintedBaselinePlusPlus(module.Conv4(1, None, hidden_channels=4, pooling="max",
                                                          batch_norm_stats="running"), num_classes=3,
                                             finetune_steps=0)
    g = torch.Generator().manual_seed(0)
    support, labels = torch.randn(2, 6, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]).repeat(2, 1)
    query = torch.randn(2, 5, 8, generator=g)
    logits = model.finetune_heads(support, labels, query)
    means = torch.stack([F.normalize(support, dim=-1)[:, labels[0] == c].mean(1) for c in range(3)], 1)
    expected = F.cosine_similarity(query.unsqueeze(2), means.unsqueeze(1), dim=-1)
    assert torch.allclose(logits, model.classifier.scale.detach() * expected, atol=1e-5)
