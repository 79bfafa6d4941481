"""The inner-loop engine: the vmap/BatchNorm trap, MAML++ options against finite differences."""

from __future__ import annotations

import copy

import torch
from meta_helpers import meta_gradient, random_classification_batch, relative_difference
from torch.func import vmap

from lightning_meta import MAML
from lightning_meta.inner_loop import choose_batching, multi_step_weights
from lightning_meta.inner_updates import StepSizes
from lightning_meta.models import MLP, Conv4
from lightning_meta.tasks import TaskBatch


def small_conv() -> Conv4:
    torch.manual_seed(0)
    return Conv4(in_channels=1, out_features=3, hidden_channels=4, image_size=8)


def test_vmap_mode_avoids_the_batchnorm_trap():
    """vmap(grad(task)) matches the loop; grad of a vmapped loss (the functorch MAML pattern) does not.

    If the second assertion ever fails, torch fixed the bug of ../shared/repros/bn_vmap_meta_grad.py.
    """
    net = small_conv()
    batch = random_classification_batch(tasks=3, ways=3, shots=2, queries=2, shape=(1, 8, 8), seed=3)
    loop = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.4, batching="loop"), batch)
    vmapped = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.4, batching="vmap"), batch)
    assert relative_difference(vmapped, loop) < 1e-10

    model = MAML(copy.deepcopy(net), inner_lr=0.4).double()
    params = model.meta_parameters()
    tensors = [t.double() if t.is_floating_point() else t for t in batch.tensors()]
    losses, _ = vmap(model.training_objective, in_dims=(None, 0, 0, 0, 0))(params, *tensors)
    naive = dict(zip(params, torch.autograd.grad(losses.mean(), list(params.values()))))
    assert relative_difference(naive, loop) > 1e-4


def sinusoid_like_batch(tasks: int = 4, points: int = 6, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, 2 * points, 1, generator=g) * 10 - 5
    amplitude = torch.rand(tasks, 1, 1, generator=g) * 4 + 1
    y = amplitude * torch.sin(x)
    return TaskBatch(x[:, :points], y[:, :points], x[:, points:], y[:, points:], index=torch.arange(tasks))


def test_maml_plus_plus_meta_gradient_matches_finite_differences():
    """Learned per-layer per-step rates and the multi-step loss, checked along random directions."""
    torch.manual_seed(0)
    model = MAML(MLP(1, 1, (8, 8)), inner_lr=0.05, inner_steps=3, step_sizes="per_layer_per_step",
                 multi_step_loss=True, multi_step_loss_epochs=4)
    batch = sinusoid_like_batch()
    ours = meta_gradient(copy.deepcopy(model), batch)

    model = model.double()
    base = {k: v.detach().clone() for k, v in model.meta_parameters().items()}
    tensors = [t.double() for t in batch.tensors()]

    def meta_loss(params):
        return torch.stack([model.training_objective(params, *(t[i] for t in tensors))[0]
                            for i in range(batch.num_tasks)]).mean()

    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in base.items()}
        eps = 1e-6
        plus = meta_loss({k: base[k] + eps * direction[k] for k in base})
        minus = meta_loss({k: base[k] - eps * direction[k] for k in base})
        numeric = ((plus - minus) / (2 * eps)).item()
        analytic = sum((ours[k].double() * direction[k]).sum() for k in base).item()
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))
    assert any(k.startswith("step_sizes.rates") and v.abs().sum() > 0 for k, v in ours.items())


def test_multi_step_weights_follow_maml_plus_plus():
    start = multi_step_weights(steps=5, epoch=0, anneal_epochs=10)
    assert torch.allclose(start, torch.full((5,), 0.2))
    middle = multi_step_weights(5, 5, 10)
    assert abs(middle.sum().item() - 1) < 1e-6 and middle[-1] > middle[0]
    late = multi_step_weights(5, 100, 10)
    assert torch.allclose(late[:-1], torch.full((4,), 0.03 / 5)) and abs(late.sum().item() - 1) < 1e-6


def test_learned_rates_beyond_trained_steps_reuse_the_last_rate():
    sizes = StepSizes({"w": torch.Size([2])}, steps=2, init=0.1, kind="per_layer_per_step")
    with torch.no_grad():
        sizes.rates[0].copy_(torch.tensor([0.1, 0.3]))
    step_size = sizes.bind()
    assert step_size("w", 1).item() == step_size("w", 7).item() == torch.tensor(0.3).item()


def test_first_order_epochs_switch_to_second_order():
    model = MAML(MLP(1, 1, (4,)), first_order_epochs=2)
    assert model.uses_first_order  # epoch 0, no trainer
    assert not MAML(MLP(1, 1, (4,))).uses_first_order


def test_automatic_batching_choice():
    cpu = torch.device("cpu")
    assert choose_batching(MLP(1, 1, (40, 40)), cpu) == "vmap"
    assert choose_batching(small_conv(), cpu) == "loop"
    assert choose_batching(small_conv(), torch.device("cuda")) == "vmap"
