"""MAML with ``inner_optimizer: sgd | momentum | nesterov | adam`` and learned rates or momenta.

* the meta-gradient of a real training step (loop and vmap) through 3 inner steps of each optimizer, with
  learned rates (``step_sizes``) and momenta (``momentum_sizes``) of several kinds, equals central differences
  of the meta-objective (float64, small MLP regression tasks): second order through the chosen update;
* the default (``sgd``, fixed rate) meta-gradient is bit-identical to the plain MAML formula;
* ``python -m lightning_meta fit`` takes the new arguments, saves learned momenta and reloads for ``test``;
* bad values are one-line errors naming the field (momentum outside [0, 1), a learned momentum for an optimizer
  without one, ...).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import CONFIGS, cli, last_line, ok, the_run, weights
from meta_helpers import meta_gradient
from torch.func import functional_call

from lightning_meta import MAML
from lightning_meta.algorithms.meta_sgd import MetaSGD
from lightning_meta.cli import main
from lightning_meta.errors import ConfigurationError
from lightning_meta.inner_updates import SGD, Adam, MomentumSGD
from lightning_meta.models import MLP
from lightning_meta.tasks import TaskBatch


def sine_batch(tasks: int = 2, shots: int = 6, queries: int = 6, seed: int = 0) -> TaskBatch:
    """Sinusoid regression tasks in float64: ``y = a sin(x + b)``, ``x`` in [-3, 3]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, shots + queries, 1, generator=g, dtype=torch.float64) * 6 - 3
    amplitude = torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64) * 2 + 0.5
    phase = torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64) * 3
    y = amplitude * torch.sin(x + phase)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], index=torch.arange(tasks))


def make_maml(**kwargs) -> MAML:
    torch.manual_seed(0)
    return MAML(MLP(1, 1, (8, 8)), inner_steps=3, outer_lr=1e-3, **kwargs).double()


def meta_objective(model: MAML, params: dict, batch: TaskBatch) -> float:
    """The mean meta-loss of ``batch``'s tasks at the meta-parameters ``params``."""
    losses = [model.training_objective(params, *(t[i] for t in batch.tensors()))[0] for i in range(batch.num_tasks)]
    return torch.stack(losses).mean().item()


CASES = {
    "sgd": dict(inner_lr=0.05),
    "sgd_weight_decay_scalar": dict(inner_lr=0.05, inner_weight_decay=0.1, step_sizes="scalar"),
    "momentum": dict(inner_lr=0.03, inner_optimizer="momentum", inner_momentum=0.8),
    "momentum_per_layer_per_step": dict(inner_lr=0.03, inner_optimizer="momentum", inner_momentum=0.8,
                                        step_sizes="per_layer_per_step", momentum_sizes="per_step"),
    "nesterov": dict(inner_lr=0.03, inner_optimizer="nesterov", inner_momentum=0.7, inner_weight_decay=0.05),
    "nesterov_learned": dict(inner_lr=0.03, inner_optimizer="nesterov", inner_momentum=0.7,
                             step_sizes="per_parameter", momentum_sizes="per_layer"),
    "adam": dict(inner_lr=0.02, inner_optimizer="adam", inner_betas=(0.8, 0.95)),
    "adam_per_step_weight_decay": dict(inner_lr=0.02, inner_optimizer="adam", inner_betas=(0.0, 0.999),
                                       inner_eps=1e-6, inner_weight_decay=0.1, step_sizes="per_step"),
}

#: relative difference allowed between the meta-gradient and central differences (float64; measured: at most
#: 8e-9, Adam with weight decay on the weights)
TOLERANCE = 1e-7


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_meta_gradient_through_each_inner_optimizer_equals_central_differences(case, batching):
    model = make_maml(batching=batching, **CASES[case])
    with torch.no_grad():  # learned rates and momenta that differ per entry
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if not name.startswith("backbone."):
                p.mul_(1 + 0.4 * torch.rand(p.shape, generator=g, dtype=p.dtype))
    reference = copy.deepcopy(model)  # the training step below moves the model
    batch = sine_batch()
    analytic = meta_gradient(model, batch)
    params = {name: p.detach() for name, p in reference.named_parameters()}
    assert set(analytic) == set(params)
    groups = {"weights": [n for n in params if n.startswith("backbone.")],
              "rates": [n for n in params if n.startswith("step_sizes.")],
              "momenta": [n for n in params if n.startswith("momentum_sizes.")]}
    eps = 1e-6
    for group, names in groups.items():
        if not names:
            continue
        direction = {n: torch.randn(params[n].shape, generator=g, dtype=torch.float64) for n in names}
        along = sum((analytic[n] * direction[n]).sum() for n in names).item()
        shifted = lambda sign: {n: p + sign * eps * direction[n] if n in direction else p  # noqa: E731
                                for n, p in params.items()}
        numeric = (meta_objective(reference, shifted(1), batch) - meta_objective(reference, shifted(-1), batch)) / (
            2 * eps)
        assert abs(numeric) > 1e-4, (group, numeric)
        assert abs(along - numeric) <= TOLERANCE * abs(numeric), (group, along, numeric)


def test_the_update_rule_is_the_named_optimizer():
    params = dict(make_maml().named_parameters())
    rule = lambda **kw: make_maml(**kw).inner_update(params)  # noqa: E731
    assert type(rule()) is SGD
    assert type(rule(inner_optimizer="momentum")) is MomentumSGD and not rule(inner_optimizer="momentum").nesterov
    assert rule(inner_optimizer="nesterov").nesterov
    adam = rule(inner_optimizer="adam", inner_betas=(0.5, 0.9), inner_eps=1e-6, inner_weight_decay=0.1)
    assert type(adam) is Adam and adam.betas == (0.5, 0.9) and adam.eps == 1e-6 and adam.weight_decay == 0.1


def test_the_default_sgd_meta_gradient_is_bit_identical_to_the_maml_formula():
    """MAML's default path, written out as before ``inner_optimizer``: ``theta - inner_lr * grad`` per step."""
    model = make_maml(inner_lr=0.05)
    batch = sine_batch(tasks=1)
    task = [t[0] for t in batch.tensors()]
    params = dict(model.named_parameters())
    ours = torch.autograd.grad(model.training_objective(params, *task)[0], list(params.values()))
    fast = {name[len("backbone."):]: p for name, p in params.items()}
    for _ in range(model.inner_steps):
        inputs = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in fast.items()}
        value = F.mse_loss(functional_call(model.backbone, inputs, (task[0],)), task[1]) * 1.0
        grads = dict(zip(inputs, torch.autograd.grad(value, list(inputs.values()), create_graph=True)))
        fast = {n: p - 0.05 * grads[n] for n, p in inputs.items()}
    reference = torch.autograd.grad(F.mse_loss(functional_call(model.backbone, fast, (task[2],)), task[3]),
                                    list(params.values()))
    for name, a, b in zip(params, ours, reference, strict=True):
        assert torch.equal(a, b), name


def test_a_fixed_momentum_adds_no_parameter_and_meta_sgd_takes_an_inner_optimizer():
    assert not any(n.startswith("momentum_sizes") for n, _ in make_maml(inner_optimizer="momentum").named_parameters())
    model = MetaSGD(MLP(1, 1, (8,)), inner_optimizer="adam", inner_steps=2)
    assert type(model.inner_update(dict(model.named_parameters()))) is Adam
    assert [tuple(p.shape) for p in model.step_sizes.rates] == [tuple(p.shape) for p in model.backbone.parameters()]


# ---------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("kwargs,named", [
    (dict(inner_optimizer="rmsprop"), "model.init_args.inner_optimizer='rmsprop' is unknown: choose one of sgd, "
                                      "momentum, nesterov, adam"),
    (dict(inner_optimizer="momentum", inner_momentum=1.0), "model.init_args.inner_momentum=1.0 is invalid"),
    (dict(inner_optimizer="momentum", inner_momentum=-0.1), "model.init_args.inner_momentum=-0.1 is invalid"),
    (dict(inner_optimizer="nesterov", inner_momentum=0.0), "model.init_args.inner_momentum=0 is invalid with "
                                                           "model.init_args.inner_optimizer=nesterov"),
    (dict(inner_optimizer="adam", inner_betas=(0.9, 1.0)), "model.init_args.inner_betas=(0.9, 1.0) is invalid"),
    (dict(inner_optimizer="adam", inner_eps=0.0), "model.init_args.inner_eps=0.0 is invalid"),
    (dict(inner_weight_decay=-1.0), "model.init_args.inner_weight_decay=-1.0 is invalid"),
    (dict(inner_optimizer="adam", momentum_sizes="per_layer"),
     "model.init_args.momentum_sizes='per_layer' learns a momentum, which model.init_args.inner_optimizer='adam' "
     "has not"),
    (dict(inner_optimizer="momentum", momentum_sizes="per_tensor"),
     "model.init_args.momentum_sizes='per_tensor' is unknown"),
])
def test_bad_inner_optimizer_settings_are_one_line_errors_naming_the_field(kwargs, named):
    with pytest.raises(ConfigurationError) as error:
        make_maml(**kwargs)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(named), str(error.value)


# ---------------------------------------------------------------------------------------- as a user types it
SINE = ["--config", str(CONFIGS / "maml_sinusoid.yaml"), "--trainer.accelerator", "cpu",
        "--data.init_args.meta_batch_size", "4", "--data.init_args.episodes_per_epoch", "8",
        "--data.init_args.val_episodes", "4", "--data.init_args.test_episodes", "4"]


def test_the_cli_fits_maml_with_adam_and_with_learned_nesterov_momenta(tmp_path):
    (tmp_path / "adam").mkdir()
    (tmp_path / "nesterov").mkdir()
    run = ok(cli("fit", *SINE, "--model.init_args.inner_optimizer", "adam", "--trainer.max_steps", "2",
                 cwd=tmp_path / "adam"))
    assert "test/mse" in run.stdout + run.stderr
    hparams = torch.load(the_run(tmp_path / "adam" / "runs" / "maml_sinusoid") / "checkpoints" / "last.ckpt",
                         weights_only=True)["hyper_parameters"]
    assert hparams["inner_optimizer"] == "adam"

    learned = ["--model.init_args.inner_optimizer", "nesterov", "--model.init_args.inner_momentum", "0.5",
               "--model.init_args.momentum_sizes", "per_layer", "--model.init_args.step_sizes", "per_step",
               "--model.init_args.inner_weight_decay", "0.01"]
    ok(cli("fit", *SINE, *learned, "--trainer.max_steps", "2", cwd=tmp_path / "nesterov"))
    last = the_run(tmp_path / "nesterov" / "runs" / "maml_sinusoid") / "checkpoints" / "last.ckpt"
    state = weights(last)
    assert state["step_sizes.rates.0"].shape == (5,)  # inner_steps of the config
    momenta = [state[f"momentum_sizes.rates.{i}"] for i in range(6)]  # MLP 1-40-40-1: 6 tensors
    assert all(m.shape == () for m in momenta) and any(m.item() != 0.5 for m in momenta)  # trained
    tested = ok(cli("test", *SINE, *learned, "--ckpt_path", last, cwd=tmp_path / "nesterov"))
    assert "test/mse" in tested.stdout + tested.stderr


def test_a_bad_momentum_on_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *SINE, "--model.init_args.inner_optimizer", "momentum", "--model.init_args.inner_momentum",
              "1.5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-3000:]
    assert last_line(err) == ("lightning-meta: configuration error: model.init_args.inner_momentum=1.5 is invalid: "
                              "it must be a number in [0, 1)")
    assert not (tmp_path / "runs").exists()
