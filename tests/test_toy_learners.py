"""The planned learner families fit the root ``Learner`` without overriding its internals (issue 15).

Toy learners of ``tests/toy_learners.py``: the architecture page's example learner as written; two
optimizers with accumulation and a scheduler each (and DDP with 2 processes equal to 1); batches of
seeds whose data the step collects, kept at their best "return" by ``BestCheckpoint``; gradients passed
as a dict; a closure optimizer; ``--optimizer``/``--lr_scheduler`` per parameter group through the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from cli_helpers import cli, last_line, ok, run_folders
from meta_helpers import quiet_trainer
from toy_learners import (
    GradientDictRidge,
    LineSearchRidge,
    QuadraticDescent,
    RidgeRegression,
    SeedData,
    ToyGAN,
    example_code,
)

from lightning_meta import MetaLearner, SinusoidDataModule
from lightning_meta.algorithms.learner import Learner
from lightning_meta.callbacks import BestCheckpoint

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def sines(**kwargs) -> SinusoidDataModule:
    settings = dict(shots=5, queries=10, meta_batch_size=4, episodes_per_epoch=40, val_episodes=20, test_episodes=20)
    settings.update(kwargs)
    return SinusoidDataModule(**settings)


class BatchRecorder(pl.Callback):
    """After every training batch: the learner's counters, ``progress()``, learning rates and weights."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.batches: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_progress = pl_module.progress()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append({"global_step": trainer.global_step, "optimizer_steps": list(pl_module.optimizer_steps),
                          "progress": pl_module.progress(),
                          "lrs": [o.param_groups[0]["lr"] for o in trainer.optimizers],
                          "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}})


# ---------------------------------------------------------------------- the architecture page's example
def test_the_architecture_page_example_is_a_complete_learner_on_the_root():
    code = example_code()
    assert len(code.strip().splitlines()) <= 50, "the page promises a ~40-line example"
    assert RidgeRegression.__module__ == "toy_learners"  # run from the page's block, importable by class path
    assert issubclass(RidgeRegression, Learner) and not issubclass(RidgeRegression, MetaLearner)
    overridden = {name for name in vars(RidgeRegression) if not name.startswith("__")}
    assert overridden <= {"selection_metric", "selection_mode", "summary_names", "query_errors", "training_step",
                          "evaluate_tasks"}, overridden


def test_the_architecture_page_example_learns_sinusoids():
    pl.seed_everything(0)
    model, data = RidgeRegression(outer_lr=3e-3), sines()
    before = quiet_trainer().validate(model, data, verbose=False)[0]["val/mse"]
    trainer = quiet_trainer(max_steps=60, limit_val_batches=0)
    trainer.fit(model, data)
    after = quiet_trainer().validate(model, data, verbose=False)[0]["val/mse"]
    assert trainer.global_step == 60 and model.optimizer_steps == [60]
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------- two optimizers
def test_two_optimizers_accumulate_and_step_their_own_schedulers():
    """8 batches of 2 seeds, a window of 2 batches: each optimizer steps 4 times, once per window, with its
    scheduler; Lightning's global_step counts both (8); progress() goes from 0 to 1."""
    pl.seed_everything(0)
    model = ToyGAN(outer_lr=0.05, accumulate_grad_batches=2)
    recorder = BatchRecorder()
    trainer = quiet_trainer(max_steps=8, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, SeedData(batch_size=2, train_seeds=16))
    rows = recorder.rows
    assert len(rows) == 8 and model.optimizer_names == ["generator", "discriminator"]
    assert [r["global_step"] for r in rows] == [0, 2, 2, 4, 4, 6, 6, 8]
    assert [r["optimizer_steps"] for r in rows] == [[w, w] for w in (0, 1, 1, 2, 2, 3, 3, 4)]
    gammas = [ToyGAN.gammas["generator"], ToyGAN.gammas["discriminator"]]
    for row, windows in zip(rows, (0, 1, 1, 2, 2, 3, 3, 4)):
        assert row["lrs"] == pytest.approx([0.05 * g ** windows for g in gammas])
    assert recorder.start_progress == 0.0
    assert [r["progress"] for r in rows] == pytest.approx([(i + 1) / 8 for i in range(8)])
    # weights move only when a window closes, both groups then
    for previous, row, closes in zip(rows, rows[1:], (True, False, True, False, True, False, True)):
        for name, value in row["weights"].items():
            assert torch.equal(value, previous["weights"][name]) != closes, (name, row["global_step"])


@pytest.mark.slow
def test_two_optimizers_on_two_processes_equal_one(tmp_path):
    """~30 s (two subprocesses): DDP (gloo, 2 CPU processes, 2 seeds each) ends where 1 process with 4 seeds does."""
    def run(devices: int) -> dict:
        out = tmp_path / f"{devices}.pt"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, str(TESTS / "toy_ddp_check.py"), str(out), str(devices)],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return torch.load(out)

    single, double = run(1), run(2)
    assert single["global_step"] == double["global_step"] == 8
    assert single["optimizer_steps"] == double["optimizer_steps"] == [4, 4]
    assert single["lrs"] == pytest.approx(double["lrs"]) and single["lrs"] == pytest.approx([0.05 * 0.5 ** 4,
                                                                                          0.05 * 0.8 ** 4])
    for name, value in single["params"].items():
        torch.testing.assert_close(double["params"][name], value, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------- batches of seeds, a return to maximise
class ValidationRecorder(pl.Callback):
    def __init__(self) -> None:
        self.returns: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.returns.append((trainer.global_step, float(trainer.callback_metrics["val/return"])))


@pytest.mark.parametrize("outer_lr,best_step", [(0.5, 6), (0.3, 8)])
def test_a_learner_of_seeds_keeps_the_checkpoint_of_its_highest_return(tmp_path, outer_lr, best_step):
    """The unrolled descent improves, then (lr 0.5) overshoots: best.ckpt holds the highest val/return,
    not the last or the lowest; at lr 0.3 the highest is the validation at the last step."""
    pl.seed_everything(0)
    recorder, best = ValidationRecorder(), BestCheckpoint(dirpath=tmp_path)
    trainer = pl.Trainer(max_steps=8, val_check_interval=2, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         callbacks=[recorder, best])
    trainer.fit(QuadraticDescent(outer_lr=outer_lr), SeedData(batch_size=4))
    steps, returns = zip(*recorder.returns)
    assert steps == (2, 4, 6, 8) and len(set(returns)) == 4
    assert (best.monitor, best.mode) == ("val/return", "max")
    assert steps[returns.index(max(returns))] == best_step
    assert float(best.best_model_score) == pytest.approx(max(returns))
    assert torch.load(best.best_model_path, weights_only=True)["global_step"] == best_step
    loaded = QuadraticDescent.load_from_checkpoint(best.best_model_path, weights_only=True)
    again = quiet_trainer().validate(loaded, SeedData(batch_size=4), verbose=False)[0]["val/return"]
    assert again == pytest.approx(max(returns))


# ---------------------------------------------------------------------- the outer step, three ways
def trained_weights(model: Learner, steps: int = 3) -> tuple[dict[str, torch.Tensor], BatchRecorder]:
    recorder = BatchRecorder()
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, sines())
    assert trainer.global_step == steps and model.optimizer_steps == [steps]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, recorder


def test_gradients_given_as_a_dict_make_the_update_of_the_loss():
    pl.seed_everything(0)
    by_loss, _ = trained_weights(RidgeRegression(outer_lr=0.01))
    pl.seed_everything(0)
    by_grads, _ = trained_weights(GradientDictRidge(outer_lr=0.01))
    for name, value in by_loss.items():
        torch.testing.assert_close(by_grads[name], value, rtol=0, atol=1e-7, msg=name)


def test_a_closure_optimizer_advances_global_step_and_trains_as_torch_does():
    """LBFGS through outer_step(closure=...): one Lightning step per outer step, the weights of plain
    torch.optim.LBFGS on the same batches, and each step lowers the loss of its batch."""
    pl.seed_everything(0)
    model = LineSearchRidge(outer_lr=0.5)
    pl.seed_everything(0)
    reference = LineSearchRidge(outer_lr=0.5)
    weights, recorder = trained_weights(model)
    optimizer = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=4)
    for batch in recorder.batches:
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = reference.query_errors(batch).mean()
            loss.backward()
            return loss

        before = optimizer.step(closure).item()
        with torch.no_grad():
            assert reference.query_errors(batch).mean() < before
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------- CLI optimizers per group
CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  enable_progress_bar: false
  log_every_n_steps: 1
model:
  class_path: toy_learners.{learner}
  init_args: {{width: 8}}
data:
  class_path: lightning_meta.SinusoidDataModule
  init_args: {{shots: 5, queries: 5, meta_batch_size: 2, episodes_per_epoch: 6, val_episodes: 2, test_episodes: 2}}
"""
#: the toy learners are imported by class path from tests/
TOY_PATH = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
FLAGS = ("--optimizer", "SGD", "--optimizer.lr", "0.05", "--optimizer.momentum", "0.5",
         "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5")


def test_cli_optimizer_and_scheduler_apply_to_every_parameter_group(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG.format(learner="TwoGroupRidge"))
    ok(cli("fit", "--config", config, *FLAGS, cwd=tmp_path, env=TOY_PATH))
    checkpoint = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=True)
    optimizers, schedulers = checkpoint["optimizer_states"], checkpoint["lr_schedulers"]
    assert [len(o["param_groups"][0]["params"]) for o in optimizers] == [4, 1]  # features, ridge
    for optimizer, scheduler in zip(optimizers, schedulers):
        group = optimizer["param_groups"][0]
        assert group["momentum"] == 0.5 and "nesterov" in group  # SGD
        assert group["lr"] == pytest.approx(0.05 * 0.5 ** 2)  # StepLR, one step per epoch
        assert (scheduler["step_size"], scheduler["gamma"], scheduler["last_epoch"]) == (1, 0.5, 2)
    assert checkpoint["lightning_meta_learner"]["optimizer_steps"] == [6, 6]
    assert checkpoint["global_step"] == 12  # Lightning counts both optimizers


def test_cli_refuses_optimizer_flags_for_a_learner_with_its_own_configure_optimizers(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG.format(learner="OwnOptimizerRidge"))
    run = cli("fit", "--config", config, *FLAGS, cwd=tmp_path, env=TOY_PATH)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    line = last_line(run.stderr)
    assert line.startswith("lightning-meta: ") and "--optimizer/--lr_scheduler: OwnOptimizerRidge" in line
    assert "override make_optimizer/make_scheduler instead of configure_optimizers" in line
    assert run_folders(tmp_path / "runs" / "toy") == []
