"""ResNet-18 and WRN-28-10: the papers' sizes, output shapes, MAML and ProtoNet through them, checkpoints.

Full-size networks are checked for parameter counts (built on CPU, 0.4 s) and shapes (on the ``meta``
device: shapes without arithmetic); everything that computes uses small widths of the same structure.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from meta_helpers import meta_gradient, quiet_trainer, random_classification_batch, relative_difference
from torch.func import functional_call
from torch.utils.data import DataLoader

from lightning_meta import MAML, PrototypicalNetwork
from lightning_meta.models.backbone import build_module, module_spec
from lightning_meta.models.resnet18 import ResNet18
from lightning_meta.models.wrn import WideResNet

WAYS, SHOTS, QUERIES, TASKS = 3, 1, 2, 2
CLASS_PATHS = {"resnet18": "lightning_meta.models.resnet18.ResNet18", "wrn": "lightning_meta.models.wrn.WideResNet"}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(kind: str, **kwargs) -> torch.nn.Module:
    """The same structure with small widths (ResNet-18: 4-4-8-8 channels; WRN-10-1: 16-16-32-64)."""
    torch.manual_seed(0)
    if kind == "resnet18":
        return ResNet18(**{"channels": (4, 4, 8, 8), **kwargs})
    return WideResNet(**{"depth": 10, "widen_factor": 1, **kwargs})


# ----------------------------------------------------------------------------- sizes and shapes
def test_resnet18_is_torchvision_resnet18_without_fc_layer_for_layer():
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18()
    shapes = sorted(tuple(p.shape) for n, p in reference.named_parameters() if not n.startswith("fc."))
    net = ResNet18(out_features=None)
    assert sorted(tuple(p.shape) for p in net.parameters()) == shapes
    assert count(net) == 11_176_512  # Chen et al. 2019's ResNet-18 (11.2M without the classifier)
    assert count(ResNet18(out_features=5)) == 11_176_512 + 512 * 5 + 5
    assert count(ResNet18(out_features=None, stem="cifar")) == 11_176_512 - 64 * 3 * (49 - 9)


def test_wrn_28_10_has_the_papers_size():
    net = WideResNet(out_features=None)
    # Zagoruyko & Komodakis 2016: WRN-28-10 has 36.5M parameters (36,479,194 with CIFAR-10's 640 x 10 classifier)
    assert count(net) == 36_479_194 - (640 * 10 + 10)
    assert round(count(net) / 1e6, 1) == 36.5
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert widths == [16] + [160] * 8 + [320] * 8 + [640] * 8  # 1 + 3 groups x 4 blocks x 2 convolutions


@pytest.mark.parametrize("size, resnet_map, wrn_map", [(84, 3, 21), (32, 1, 8)])
def test_full_size_output_shapes(size, resnet_map, wrn_map):
    with torch.device("meta"):  # shapes only: no arithmetic on 36.5M weights
        x = torch.empty(4, 3, size, size)
        resnet, wrn = ResNet18(out_features=5), WideResNet(out_features=7)
        assert resnet.features[:-2](x).shape == (4, 512, resnet_map, resnet_map)
        assert wrn.features[:-2](x).shape == (4, 640, wrn_map, wrn_map)
        assert resnet(x).shape == (4, 5) and wrn(x).shape == (4, 7)
        assert ResNet18(out_features=None)(x).shape == (4, 512) and WideResNet(out_features=None)(x).shape == (4, 640)
        assert ResNet18(out_features=None, stem="cifar").features[:-2](x).shape[-1] == -(-size // 8)  # 84: 42, 21, 11


@pytest.mark.parametrize("kind, width", [("resnet18", 8), ("wrn", 64)])
@pytest.mark.parametrize("size", [84, 32])
def test_small_widths_compute_features_and_logits(kind, width, size):
    x = torch.randn(3, 1, size, size)
    head, body = tiny(kind, in_channels=1, out_features=5), tiny(kind, in_channels=1, out_features=None)
    logits, features = head(x), body(x)
    assert logits.shape == (3, 5) and features.shape == (3, width)
    assert torch.isfinite(logits).all() and features.std() > 0


def test_invalid_arguments_are_refused():
    for build, match in ((lambda: ResNet18(stem="vgg"), "stem"), (lambda: ResNet18(channels=(8, 8)), "four"),
                         (lambda: ResNet18(batch_norm_stats="none"), "batch_norm_stats"),
                         (lambda: WideResNet(depth=27), "6n \\+ 4"), (lambda: WideResNet(dropout=1.0), "dropout"),
                         (lambda: WideResNet(strides=(1, 2)), "strides")):
        with pytest.raises(ValueError, match=match):
            build()


def test_wrn_dropout_is_random_in_training_only():
    net = tiny("wrn", out_features=None, dropout=0.5, batch_norm_stats="running")
    x = torch.randn(4, 3, 16, 16)
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


# ----------------------------------------------------------------------------- MAML and ProtoNet through them
def reference_maml_gradient(net: torch.nn.Module, batch, lr: float) -> dict[str, torch.Tensor]:
    """One second-order inner SGD step per task, mean query loss over tasks, in float64 by hand."""
    net = copy.deepcopy(net).double()
    params = dict(net.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        sx, sy, qx, qy = (t.double() if t.is_floating_point() else t for t in batch[i])
        support_loss = F.cross_entropy(functional_call(net, params, (sx,)), sy)
        grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=True)
        fast = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
        total = total + F.cross_entropy(functional_call(net, fast, (qx,)), qy) / batch.num_tasks
    meta = torch.autograd.grad(total, list(params.values()))
    return {f"backbone.{name}": g for name, g in zip(params, meta)}


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("kind", ["resnet18", "wrn"])
def test_maml_meta_gradient_through_the_backbone(kind, batching):
    net = tiny(kind, in_channels=1, out_features=WAYS)  # BatchNorm with batch statistics: what MAML adapts
    batch = random_classification_batch(TASKS, WAYS, SHOTS, QUERIES, (1, 8, 8), seed=1)
    ours = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.25, inner_steps=1, batching=batching), batch)
    reference = reference_maml_gradient(net, batch, 0.25)
    assert relative_difference(ours, reference) < 1e-6
    assert all(g.abs().sum() > 0 for g in ours.values())  # every layer, BatchNorm included, gets a meta-gradient


@pytest.mark.parametrize("kind", ["resnet18", "wrn"])
def test_protonet_trains_through_the_embedding(kind):
    net = tiny(kind, in_channels=1, out_features=None, batch_norm_stats="running")
    batch = random_classification_batch(TASKS, WAYS, SHOTS, QUERIES, (1, 16, 16), seed=2)
    grads = meta_gradient(PrototypicalNetwork(net), batch, precision="32-true")
    names = {f"embedding.{n}" for n, _ in net.named_parameters()}
    assert set(grads) == names
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["resnet18", "wrn"])
def test_state_dict_round_trip(kind, tmp_path):
    net = tiny(kind, out_features=4, batch_norm_stats="running", **({"stem": "cifar"} if kind == "resnet18" else {}))
    net.train()
    net(torch.randn(6, 3, 16, 16))  # moves the running statistics away from their initial values
    torch.save(net.state_dict(), tmp_path / "net.pt")
    spec = module_spec(net)
    assert spec["class_path"] == f"{type(net).__module__}.{type(net).__name__}"
    torch.manual_seed(123)
    fresh = build_module(spec)
    fresh.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    x = torch.randn(5, 3, 16, 16)
    net.eval(), fresh.eval()
    assert torch.equal(fresh(x), net(x))
    assert module_spec(fresh) == spec


@pytest.mark.parametrize("kind", ["resnet18", "wrn"])
def test_maml_checkpoint_reloads_without_arguments(kind, tmp_path):
    model = MAML(tiny(kind, in_channels=1, out_features=WAYS), inner_lr=0.25)
    batch = random_classification_batch(TASKS, WAYS, SHOTS, QUERIES, (1, 16, 16), seed=3)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    saved = torch.load(tmp_path / "model.ckpt", weights_only=True)  # what `test --ckpt_path` does
    assert saved["hyper_parameters"]["backbone"]["class_path"] == CLASS_PATHS[kind]
    loaded = MAML.load_from_checkpoint(tmp_path / "model.ckpt")
    assert type(loaded.backbone) is type(model.backbone)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
