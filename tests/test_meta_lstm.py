"""Meta-Learner LSTM (Ravi & Larochelle 2017): the update rule, its meta-gradient, and learning on real images.

* with fixed gates (forget 1, input = lr) an LSTM update is an SGD step of the learner, in float64;
* the meta-gradient of the real training step matches central finite differences in float64, on the
  function the paper differentiates (the learner's gradients and losses are inputs, replayed);
* the preprocessing follows Andrychowicz et al.'s formula on both branches;
* after a short meta-training on held-out hanzi characters the learned update beats SGD (best of a
  grid of rates) from the same learned initialisation, and the model beats raw-pixel prototypes;
* impossible settings fail naming the field; the mini-ImageNet config fits and tests through the CLI.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from fixtures_images import make_mini_imagenet
from meta_helpers import (meta_gradient, pixel_prototype_accuracy, quiet_trainer, random_classification_batch,
                          relative_difference)

from lightning_meta.algorithms.meta_lstm import MetaLearnerLSTM
from lightning_meta.data import NpzDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.inner_loop import adapt, sub_params, supervised_loss
from lightning_meta.inner_updates import SGD
from lightning_meta.models.conv4 import Conv4
from lightning_meta.models.meta_lstm_cell import preprocess_gradient

REPO = Path(__file__).resolve().parent.parent
WAYS = 3


def tiny_learner() -> Conv4:
    torch.manual_seed(0)
    return Conv4(1, WAYS, hidden_channels=3, pooling="max", image_size=16)  # BatchNorm in every block


def fix_gates(model: MetaLearnerLSTM, lr: float) -> None:
    """Forget gate exactly 1 in float64 (sigmoid(40) rounds to 1), input gate exactly sigmoid(logit(lr))."""
    rule = model.update_rule
    with torch.no_grad():
        rule.forget_weight.zero_()
        rule.input_weight.zero_()
        rule.forget_bias.fill_(40.0)
        rule.input_bias.fill_(math.log(lr / (1 - lr)))


# ---------------------------------------------------------------------------------------------- update rule
@pytest.mark.parametrize("steps,batch_size", [(1, None), (3, None), (3, 2)])
def test_fixed_gates_make_the_update_an_sgd_step(steps, batch_size):
    lr = 0.3
    model = MetaLearnerLSTM(tiny_learner(), inner_steps=steps, inner_batch_size=batch_size).double()
    fix_gates(model, lr)
    assert torch.sigmoid(model.update_rule.forget_bias).item() == 1.0
    task = random_classification_batch(1, WAYS, 2, 2, (1, 16, 16), seed=3)[0]
    support_x, support_y = task.support_x.double(), task.support_y

    params = {name: p.detach() for name, p in model.named_parameters()}
    adapted = model.adapt(params, support_x, support_y, steps, batch_size)

    # by hand: a copy of the module, plain autograd and SGD, the batches walking the support set in order
    learner = copy.deepcopy(model.backbone)
    size = support_x.shape[0]
    b = size if batch_size is None else batch_size
    for step in range(steps):
        chosen = torch.arange(step * b, (step + 1) * b) % size
        learner.zero_grad()
        F.cross_entropy(learner(support_x[chosen]), support_y[chosen]).backward()
        with torch.no_grad():
            for p in learner.parameters():
                p -= lr * p.grad
    expected = dict(learner.named_parameters())
    assert set(adapted) == set(expected)
    for name, value in adapted.items():
        torch.testing.assert_close(value, expected[name].detach(), rtol=1e-12, atol=1e-14, msg=name)
    # and the learner module itself was never touched
    for name, p in model.backbone.named_parameters():
        assert torch.equal(p, params[f"backbone.{name}"])


@pytest.mark.parametrize("p", [10.0, 4.0])
def test_preprocessing_follows_the_formula_on_both_branches(p):
    values = [3.0, -0.5, 2e-3, -7e-4, math.exp(-p) * 1.0001, 1e-6, -3e-7, 0.0, 1e-12]
    encoded = preprocess_gradient(torch.tensor(values, dtype=torch.float64), p)
    for x, (first, second) in zip(values, encoded.tolist()):
        if abs(x) >= math.exp(-p):
            expected = (math.log(abs(x)) / p, math.copysign(1.0, x))
        else:
            expected = (-1.0, math.exp(p) * x)
        assert first == pytest.approx(expected[0], rel=1e-12, abs=1e-15)
        assert second == pytest.approx(expected[1], rel=1e-12, abs=1e-15)
    assert encoded[4, 1].item() == 1.0 and encoded[5, 0].item() == -1.0  # each side of e^-p
    # the loss reaches layer 1 as two features shared by every coordinate, then the gradient's two
    model = MetaLearnerLSTM(tiny_learner(), preprocess_p=p)
    grad = torch.tensor(values)
    inputs = model.lstm_inputs(grad, torch.tensor(1.7))
    assert inputs.shape == (len(values), 4)
    torch.testing.assert_close(inputs[:, :2], preprocess_gradient(torch.tensor([1.7]), p).expand(len(values), 2))
    torch.testing.assert_close(inputs[:, 2:], preprocess_gradient(grad, p))


# ---------------------------------------------------------------------------------------------- meta-gradient
class ReplayedInputs(MetaLearnerLSTM):
    """Records the learner's (gradient, loss) inputs of every update, and can replay them.

    The paper's meta-gradient treats these inputs as constants; replaying the recorded ones while the
    meta-parameters are perturbed gives finite differences of exactly that function.
    """

    tape: list
    replay: bool = False

    def inner_update(self, params):
        update = super().inner_update(params)

        def recorded(params, grads, loss, state, step):
            if self.replay:
                grads, loss = self.tape.pop(0)
            else:
                self.tape.append(({k: g.clone() for k, g in grads.items()}, loss.clone()))
            return update(params, grads, loss, state, step)

        return recorded


def test_meta_gradient_of_the_training_step_matches_finite_differences():
    steps, tasks = 3, 2
    # gates well inside (0, 1) and weights large enough that every path of the LSTM carries gradient
    model = ReplayedInputs(tiny_learner(), inner_steps=steps, hidden_size=3, inner_lr=0.2, forget_bias=1.5,
                           init_range=0.5, gradient_clip_val=None)
    model.tape = []
    reference = copy.deepcopy(model).double()
    batch = random_classification_batch(tasks, WAYS, 1, 2, (1, 16, 16), seed=5)
    ours = meta_gradient(model, batch)  # one real training step in float64, tasks looped
    assert len(model.tape) == tasks * steps

    tensors = [t.double() if t.is_floating_point() else t for t in batch.tensors()]

    def meta_loss() -> float:
        reference.replay, reference.tape = True, list(model.tape)
        params = dict(reference.named_parameters())
        with torch.no_grad():
            losses = [reference.training_objective(params, *(t[i] for t in tensors))[0] for i in range(tasks)]
        return torch.stack(losses).mean().item()

    h = 3
    coordinates = [
        ("update_rule.forget_weight", (0,)), ("update_rule.forget_weight", (h,)), ("update_rule.forget_weight", (h + 1,)),
        ("update_rule.input_weight", (1,)), ("update_rule.input_weight", (h,)), ("update_rule.input_weight", (h + 1,)),
        ("update_rule.forget_bias", ()), ("update_rule.input_bias", ()),
        ("update_rule.weight_ih", (2, 1)), ("update_rule.weight_hh", (5, 2)), ("update_rule.bias", (7,)),
        ("backbone.features.0.0.weight", (1, 0, 1, 2)), ("backbone.features.2.1.weight", (0,)),
        ("backbone.head.weight", (1, 2)), ("backbone.head.bias", (0,)),
    ]
    parameters = dict(reference.named_parameters())
    eps = 1e-6
    analytic, numeric = [], []
    for name, index in coordinates:
        p = parameters[name]
        with torch.no_grad():
            original = p[index].item()
            p[index] = original + eps
            up = meta_loss()
            p[index] = original - eps
            down = meta_loss()
            p[index] = original
        numeric.append((up - down) / (2 * eps))
        analytic.append(ours[name][index].item())
    analytic_t, numeric_t = torch.tensor(analytic, dtype=torch.float64), torch.tensor(numeric, dtype=torch.float64)
    assert (analytic_t.abs() > 1e-6).all(), dict(zip(coordinates, analytic))  # every path is exercised
    assert ((analytic_t - numeric_t).norm() / numeric_t.norm()).item() < 1e-6
    torch.testing.assert_close(analytic_t, numeric_t, rtol=1e-5, atol=1e-9)


def test_gradients_of_the_learner_are_inputs_not_part_of_the_graph():
    """With one update the LSTM weights only act through c_1 = f * c_0 - i * grad(c_0): the paper's
    truncation changes nothing for them, so their meta-gradient is the true derivative."""
    model = MetaLearnerLSTM(tiny_learner(), inner_steps=1, hidden_size=3, inner_lr=0.2, forget_bias=1.5,
                            init_range=0.5).double()
    task = random_classification_batch(1, WAYS, 1, 2, (1, 16, 16), seed=7)[0]
    task = [t.double() if t.is_floating_point() else t for t in task]
    params = dict(model.named_parameters())
    loss, _ = model.training_objective(params, *task)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    p = model.update_rule.input_bias
    eps = 1e-6
    with torch.no_grad():
        p += eps
        up = model.training_objective(dict(model.named_parameters()), *task)[0].item()
        p -= 2 * eps
        down = model.training_objective(dict(model.named_parameters()), *task)[0].item()
    assert grads["update_rule.input_bias"].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6)
    # the learner's initial weights do reach the meta-loss through c_1 = f * c_0 - ...
    assert grads["backbone.head.weight"].abs().sum() > 0


# ---------------------------------------------------------------------------------------------- learning
def hanzi(meta_batch_size: int, steps: int, test_episodes: int) -> NpzDataModule:
    return NpzDataModule(path="hanzi", ways=5, shots=1, queries=2, test_queries=5,
                         rotations=(0, 90, 180, 270), meta_batch_size=meta_batch_size,
                         episodes_per_epoch=meta_batch_size * steps, val_episodes=4, test_episodes=test_episodes)


INNER_STEPS = 3  # meta-trained horizon; evaluation takes more updates with the learned rule


@pytest.fixture(scope="module")
def trained():
    """A short meta-training on the hanzi subset (600 episodes of the training classes), 5-way 1-shot."""
    pl.seed_everything(0)
    data = hanzi(meta_batch_size=1, steps=600, test_episodes=100)
    model = MetaLearnerLSTM(Conv4(1, 5, hidden_channels=16, pooling="max"), inner_steps=INNER_STEPS,
                            test_inner_steps=8, inner_lr=0.3, outer_lr=5e-3)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    return model, data, trainer


def query_losses(model: MetaLearnerLSTM, data: NpzDataModule, update) -> torch.Tensor:
    """Mean query cross-entropy per test episode after ``update(task) -> adapted learner weights``."""
    losses = []
    for batch in data.test_dataloader():
        for task in batch:
            final = update(task)
            with torch.no_grad():
                losses.append(F.cross_entropy(model.forward_learner(final, task.query_x), task.query_y))
    return torch.stack(losses)


@pytest.mark.slow
def test_meta_lstm_beats_the_pixel_baseline_on_held_out_hanzi(trained):
    model, data, trainer = trained
    ours = trainer.test(model, data, verbose=False)[0]
    pixels = pixel_prototype_accuracy(data)
    print(f"meta-learner LSTM {ours['test/acc']:.3f} +- {ours['test/acc_ci95']:.3f}, before adaptation "
          f"{ours['test/acc_before']:.3f}; pixel prototypes {pixels.mean().item():.3f}")
    assert 0.70 < pixels.mean() < 0.90
    assert ours["test/acc"] > pixels.mean().item() + 3 * ours["test/acc_ci95"]


@pytest.mark.slow
def test_learned_update_beats_sgd_with_the_best_of_a_grid_of_rates(trained):
    model, data, _ = trained
    data.setup("test")
    params = {name: p.detach() for name, p in model.named_parameters()}
    init = sub_params(params, "backbone")
    ours = query_losses(model, data, lambda t: model.adapt(params, t.support_x, t.support_y, INNER_STEPS, None))

    def sgd(lr: float):
        def update(task):
            support_loss = supervised_loss(model.forward_learner, task.support_x, task.support_y, model.inner_loss)
            return adapt(support_loss, init, INNER_STEPS, SGD(lr), "none")[-1]
        return update

    grid = {lr: query_losses(model, data, sgd(lr)).mean().item() for lr in (0.03, 0.1, 0.3, 1.0, 3.0)}
    best = min(grid, key=grid.get)
    print(f"query loss: meta-learner LSTM {ours.mean().item():.3f}, SGD {grid}")
    assert best not in (0.03, 3.0), grid  # the grid brackets SGD's best rate
    assert ours.mean().item() < grid[best]


# ---------------------------------------------------------------------------------------------- errors and CLI
@pytest.mark.parametrize("field,kwargs", [
    ("inner_steps", dict(inner_steps=0)),
    ("test_inner_steps", dict(test_inner_steps=-1)),
    ("inner_batch_size", dict(inner_batch_size=0)),
    ("test_inner_batch_size", dict(test_inner_batch_size=0)),
    ("hidden_size", dict(hidden_size=0)),
    ("inner_lr", dict(inner_lr=0.0)),
    ("inner_lr", dict(inner_lr=1.5)),
    ("forget_bias", dict(forget_bias=float("inf"))),
    ("init_range", dict(init_range=-0.1)),
    ("preprocess_p", dict(preprocess_p=0)),
    ("gradient_clip_val", dict(gradient_clip_val=-1.0)),
    ("batching", dict(batching="sometimes")),
])
def test_impossible_settings_name_the_field(field, kwargs):
    with pytest.raises(ConfigurationError, match=f"model.init_args.{field}="):
        MetaLearnerLSTM(tiny_learner(), **kwargs)


def test_running_batch_norm_statistics_are_refused():
    with pytest.raises(ConfigurationError, match="model.init_args.backbone.*batch_norm_stats: batch"):
        MetaLearnerLSTM(Conv4(1, WAYS, hidden_channels=3, pooling="max", image_size=16, batch_norm_stats="running"))


def test_the_5w1s_config_fits_and_tests_through_the_cli(tmp_path):
    root = make_mini_imagenet(tmp_path / "data", classes=(6, 5, 5), per_class=4, size=84)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    run = subprocess.run(
        [sys.executable, "-m", "lightning_meta", "fit", "--config", str(REPO / "configs" / "metalstm_miniimagenet_5w1s.yaml"),
         "--data.init_args.root", str(root), "--data.init_args.queries", "2", "--data.init_args.test_queries", "2",
         "--data.init_args.episodes_per_epoch", "2", "--data.init_args.val_episodes", "2",
         "--data.init_args.test_episodes", "4", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
         "--model.init_args.inner_steps", "2", "--model.init_args.test_inner_steps", "2",
         "--model.init_args.backbone.init_args.hidden_channels", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "test/acc = " in output and "95% CI over 4 episodes" in output
    assert list((tmp_path / "runs").rglob("best.ckpt"))
    metrics = list((tmp_path / "runs" / "metalstm_miniimagenet_5w1s").rglob("metrics.csv"))
    assert metrics and "test/acc_before" in metrics[0].read_text().splitlines()[0]


def test_loop_and_vmap_batching_give_the_same_meta_gradient():
    batch = random_classification_batch(3, WAYS, 2, 2, (1, 16, 16), seed=11)
    grads = {}
    for batching in ("loop", "vmap"):
        model = MetaLearnerLSTM(tiny_learner(), inner_steps=2, hidden_size=3, inner_lr=0.2, forget_bias=1.5,
                                init_range=0.5, gradient_clip_val=None, batching=batching)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.update_rule.parameters():
                p.uniform_(-0.5, 0.5)
        grads[batching] = meta_gradient(model, batch)
    assert relative_difference(grads["vmap"], grads["loop"]) < 1e-10
