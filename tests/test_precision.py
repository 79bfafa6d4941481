"""Mixed precision is the Trainer's: bf16-mixed and fp16 (plugin passed explicitly on CPU) both train.

What fp16 does to the inner loop: the outer loss is loss-scaled by Lightning's GradScaler, but the
gradients taken inside the inner loop are not, and small ones underflow to zero in float16.  The
engine therefore scales the inner loss by the GradScaler's current scale (``inner_loss_scale``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from meta_helpers import meta_gradient, quiet_trainer
from pytorch_lightning.plugins import MixedPrecision
from torch.amp import GradScaler
from torch.func import functional_call

from lightning_meta import MAML, MANN, SNAIL, ClassImages, MetaLearnerLSTM, TaskBatch
from lightning_meta.data import bundled_path
from lightning_meta.inner_loop import adapt, supervised_loss
from lightning_meta.inner_updates import SGD
from lightning_meta.models import MLP, Conv4


def fp16_plugin() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", GradScaler("cpu"))


def cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[k].double().flatten() for k in sorted(a)])
    y = torch.cat([b[k].double().flatten() for k in sorted(a)])
    return (x @ y / (x.norm() * y.norm())).item()


@pytest.fixture(scope="module")
def hanzi_batch() -> TaskBatch:
    pool = ClassImages.from_array(torch.from_numpy(np.load(bundled_path("hanzi"))["X"][:50]))
    return TaskBatch.stack([pool.sample(torch.Generator().manual_seed(i), 5, 1, 5) for i in range(4)], index=range(4))


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16"])
def test_mixed_precision_meta_gradient_points_the_same_way(hanzi_batch, precision, batching):
    """Half-precision meta-gradients are noisy (measured cosine to float64: bf16 0.72-0.84, fp16
    0.88-0.97 over 3 seeds, 2 second-order steps through BatchNorm) but point the same way."""
    torch.manual_seed(0)
    net = Conv4(1, 5, hidden_channels=16)
    reference = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.4, inner_steps=2), hanzi_batch, "64-true")
    setting = fp16_plugin() if precision == "fp16" else precision
    ours = meta_gradient(MAML(copy.deepcopy(net), inner_lr=0.4, inner_steps=2, batching=batching), hanzi_batch, setting)
    assert all(torch.isfinite(g).all() for g in ours.values())
    assert cosine(ours, reference) > 0.5


def test_fp16_inner_gradients_underflow_unless_scaled():
    """A small support loss: in float16 the body's inner-loop update underflows to zero unscaled."""
    torch.manual_seed(0)
    net = MLP(1, 1, (40, 40))
    params = {k: v.detach() * (1e-3 if k.startswith("head") else 1.0) for k, v in net.named_parameters()}
    x = torch.rand(10, 1) * 10 - 5
    y = 1e-3 * torch.sin(x)

    def body_update(loss_scale: float, dtype) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype or torch.float16, enabled=dtype is not None):
            support_loss = supervised_loss(lambda p, inputs: functional_call(net, p, (inputs,)), x, y, F.mse_loss)
            trajectory = adapt(support_loss, params, steps=1, update=SGD(1.0), graph="first_order",
                               loss_scale=loss_scale)
        return torch.cat([(trajectory[1][k] - params[k]).flatten() for k in params if k.startswith("features")])

    exact = body_update(1.0, None)
    unscaled = body_update(1.0, torch.float16)
    scaled = body_update(2.0 ** 16, torch.float16)
    relative = lambda u: ((u - exact).norm() / exact.norm()).item()  # noqa: E731
    assert relative(unscaled) > 0.9  # the update is (almost) all lost
    assert relative(scaled) < 0.05


def test_inner_loss_scale_follows_the_trainers_grad_scaler(hanzi_batch):
    model = MAML(Conv4(1, 5, hidden_channels=8), inner_lr=0.4)
    seen = []
    original = model.training_objective

    def spying(*args):
        seen.append(model.inner_loss_scale)
        return original(*args)

    model.training_objective = spying
    quiet_trainer(max_steps=1, limit_val_batches=0, plugins=[fp16_plugin()]).fit(
        model, train_dataloaders=torch.utils.data.DataLoader([hanzi_batch], batch_size=None))
    assert seen and all(s == 2.0 ** 16 for s in seen)
    assert MAML(MLP(1, 1, (4,))).inner_loss_scale == 1.0


def test_bf16_training_runs_validation_and_test(tmp_path):
    from lightning_meta import SinusoidDataModule

    model = MAML(MLP(1, 1, (16, 16)), inner_lr=0.01, inner_steps=2)
    data = SinusoidDataModule(meta_batch_size=4, episodes_per_epoch=16, val_episodes=8, test_episodes=8)
    trainer = quiet_trainer(max_epochs=1, precision="bf16-mixed", default_root_dir=tmp_path)
    trainer.fit(model, data)
    result = trainer.test(model, data, verbose=False)[0]
    assert np.isfinite(result["test/mse"]) and np.isfinite(result["test/mse_before"])


@pytest.mark.parametrize("native_bf16", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, tmp_path, native_bf16):
    from lightning_meta import SinusoidDataModule
    from lightning_meta.algorithms import learner

    monkeypatch.setattr(learner, "cpu_has_fast_bf16", lambda: native_bf16)
    model = MAML(MLP(1, 1, (8,)), inner_lr=0.01, inner_steps=1)
    data = SinusoidDataModule(meta_batch_size=2, episodes_per_epoch=2, val_episodes=2, test_episodes=2)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, precision="bf16-mixed", default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    slow = [w for w in caught if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native_bf16 else 1)


def black_box_learner(name: str) -> pl.LightningModule:
    """Small SNAIL, MANN and Meta-Learner LSTM on 28x28 images, from a fixed seed."""
    torch.manual_seed(0)
    embedding = Conv4(1, None, hidden_channels=16, pooling="max", batch_norm_stats="running")
    if name == "snail":
        return SNAIL(embedding, ways=5, shots=1, attention=[[16, 8], [32, 16]], tc_filters=[16])
    if name == "mann":
        return MANN(5, embedding, controller_size=32, memory_slots=16, memory_width=8, read_heads=2)
    return MetaLearnerLSTM(Conv4(1, 5, hidden_channels=16, pooling="max"), inner_steps=3)


@pytest.mark.parametrize("learner", ["snail", "mann", "metalstm"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16"])
def test_black_box_meta_gradients_under_mixed_precision(hanzi_batch, learner, precision):
    """SNAIL's attention, MANN's memory (cosine reads of wiped, all-zero rows) and the Meta-LSTM's
    inner gradients in half precision: finite, and pointing where float64's points.  fp16 starts the
    GradScaler at 2^8: at its default 2^16 the Meta-LSTM's outer backward (gradients summed over the
    learner's coordinates) overflows on the first step, which the scaler skips and halves (dynamic
    loss scaling at work: 8 skipped steps down to 2^8).  The inner gradients are scaled by the same
    scale (test_inner_loss_scale_follows_the_trainers_grad_scaler)."""
    reference = meta_gradient(black_box_learner(learner), hanzi_batch, "64-true")
    fp16 = MixedPrecision("16-mixed", "cpu", GradScaler("cpu", init_scale=2.0**8))
    setting = fp16 if precision == "fp16" else precision
    ours = meta_gradient(black_box_learner(learner), hanzi_batch, setting)
    assert all(torch.isfinite(g).all() for g in ours.values())
    assert cosine(ours, reference) > 0.5, cosine(ours, reference)
