"""FIGR (lightning_meta.algorithms.figr): the Reptile update of both networks, the gradient penalty, adaptation on
copies, bad inputs, and the config through the CLI (fit, then predict to PNG files)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from lightning_meta.algorithms.figr import FIGR, NOISE_SEED, from_gan, gradient_penalty, to_gan
from lightning_meta.data.episodes import episode_generator
from lightning_meta.data.npz import NpzDataModule
from lightning_meta.data.prediction import read_prediction_set, read_support_set
from lightning_meta.errors import ConfigurationError
from lightning_meta.models.figr_nets import DCGANDiscriminator, DCGANGenerator
from cli_helpers import CONFIGS, cli, last_line, ok
from generative_ddp_check import one_and_two_processes

CONFIG = CONFIGS / "figr_glyphs.yaml"


def tiny_figr(**kwargs) -> FIGR:
    torch.manual_seed(0)
    return FIGR(DCGANGenerator(4, 1, 8, 2, 1), DCGANDiscriminator(1, 8, 2, 1), **kwargs)


def tiny_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez_compressed(path, X=rng.integers(0, 256, size=(10, 6, 8, 8), dtype=np.uint8))
    return path


class Capture(pl.Callback):
    """The first training batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.batch = batch


def hand_adaptation(generator, critic, real, steps, lr, noise, penalty=10.0):
    """The authors' inner loop with torch.optim.SGD on copies: a critic step (WGAN-GP, per-image norm), a
    generator step, noise drawn from the torch.Generator ``noise`` in FIGR's order."""
    generator, critic = copy.deepcopy(generator), copy.deepcopy(critic)
    opt_g, opt_d = torch.optim.SGD(generator.parameters(), lr), torch.optim.SGD(critic.parameters(), lr)
    n = len(real)
    for _ in range(steps):
        z, epsilon = torch.randn(n, 4, generator=noise), torch.rand(n, generator=noise)
        fake = generator(z).detach()
        scores = critic(torch.cat([real, fake])).flatten()
        mix = (epsilon.view(-1, 1, 1, 1) * real + (1 - epsilon.view(-1, 1, 1, 1)) * fake).requires_grad_()
        grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
        loss = scores[n:].mean() - scores[:n].mean() + penalty * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        z = torch.randn(n, 4, generator=noise)
        loss = -critic(generator(z)).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    return generator, critic


def test_reptile_update_of_both_networks_equals_a_hand_written_one(tmp_path):
    model = tiny_figr(inner_steps=3, inner_lr=0.05)
    model.use_optimizer({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}})  # the outer rule is a choice
    before = copy.deepcopy(model)
    data = NpzDataModule(str(tiny_npz(tmp_path / "x.npz")), ways=1, shots=4, queries=0, test_ways=2, test_shots=2,
                         test_queries=2, meta_batch_size=1, episodes_per_epoch=1, val_episodes=1, test_episodes=1)
    capture = Capture()
    pl.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, inference_mode=False, callbacks=[capture]).fit(model, data)
    assert model.optimizer_steps == [1, 1]                   # one step of each network's optimizer
    real = to_gan(capture.batch.support_x[0])
    # the noise of training episode e in epoch 0: its own generator, whatever the global RNG or the process count
    noise = episode_generator(NOISE_SEED, "train", int(capture.batch.index[0]), 0)
    generator, critic = hand_adaptation(before.generator, before.discriminator, real, 3, 0.05, noise)
    for theta, phi, after in ((before.generator, generator, model.generator),
                              (before.discriminator, critic, model.discriminator)):
        for (name, p), q, r in zip(theta.named_parameters(), phi.parameters(), after.parameters()):
            expected = p - 0.5 * (p - q)                       # theta + epsilon (phi - theta)
            assert torch.allclose(r, expected, atol=1e-6), name
        assert any(not torch.equal(p, r) for p, r in zip(theta.parameters(), after.parameters()))
    optimizers = tiny_figr().configure_optimizers()
    assert [type(o["optimizer"]) for o in optimizers] == [torch.optim.Adam] * 2   # the default: Adam 1e-4 each
    assert all(o["optimizer"].defaults["lr"] == 1e-4 for o in optimizers)


def test_two_processes_match_one(tmp_path):
    """DDP: 4 one-class tasks per batch, 2 per process; the episodes' noise is addressed by episode."""
    single, double = one_and_two_processes("figr", tmp_path)
    assert single["steps"] == double["steps"] == [3, 3]
    for network in ("generator.", "discriminator."):  # (the critic's output bias has no gradient in WGAN-GP)
        assert any(not torch.equal(v, single["initial"][k]) for k, v in single["params"].items()
                   if k.startswith(network)), network
    for name, value in single["params"].items():
        torch.testing.assert_close(double["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_penalty_equals_a_hand_computation():
    torch.manual_seed(0)
    real, fake = torch.rand(3, 1, 2, 2, dtype=torch.float64), torch.rand(3, 1, 2, 2, dtype=torch.float64)
    epsilon = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    weight = torch.tensor([[0.3, -1.2], [0.5, 2.0]], dtype=torch.float64)
    linear = lambda x: (x[:, 0] * weight).sum((1, 2))                     # noqa: E731 - gradient: weight
    per_image = (weight.norm() - 1) ** 2
    assert torch.isclose(gradient_penalty(linear, real, fake, epsilon), per_image)
    per_pixel = ((weight.abs() - 1) ** 2).mean()                          # the authors' norm over channels
    assert torch.isclose(gradient_penalty(linear, real, fake, epsilon, norm="channel"), per_pixel)
    quadratic = lambda x: 0.5 * x.pow(2).sum((1, 2, 3))                    # noqa: E731 - gradient: x itself
    mix = epsilon.view(-1, 1, 1, 1) * real + (1 - epsilon.view(-1, 1, 1, 1)) * fake
    expected = ((mix.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert torch.isclose(gradient_penalty(quadratic, real, fake, epsilon), expected)
    assert torch.equal(mix[0], fake[0]) and torch.equal(mix[2], real[2])
    # differentiable: the critic's inner step descends the penalty too
    w = weight.clone().requires_grad_()
    grad, = torch.autograd.grad(gradient_penalty(lambda x: (x[:, 0] * w).sum((1, 2)), real, fake, epsilon), w)
    assert torch.allclose(grad, 2 * (weight.norm() - 1) * weight / weight.norm())


def test_adaptation_changes_only_the_copies():
    model = tiny_figr(inner_steps=2, samples_per_class=3)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    theta_g, theta_d = model.meta_weights()
    real = to_gan(torch.rand(4, 1, 8, 8))
    g_phi, d_phi, d_losses, g_losses = model.adapt(theta_g, theta_d, real, 2, torch.Generator().manual_seed(0))
    assert d_losses.shape == g_losses.shape == (2,)
    assert any(not torch.equal(g_phi[k], theta_g[k]) for k in theta_g)
    assert any(not torch.equal(d_phi[k], theta_d[k]) for k in theta_d)
    support_x, support_y = torch.rand(8, 1, 8, 8), torch.arange(2).repeat_interleave(4)
    query_x, query_y = torch.rand(6, 1, 8, 8), torch.arange(2).repeat_interleave(3)
    values, images = model.evaluate_classes(support_x, support_y, query_x, query_y, torch.Generator().manual_seed(0))
    assert set(values) >= {"class_fidelity", "kid", "diversity", "support_distance", "class_fidelity_unadapted",
                           "kid_jitter", "class_fidelity_real"}
    assert images["adapted"].shape == (2, 3, 1, 8, 8) and 0 <= images["adapted"].min() <= images["adapted"].max() <= 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshot[name]), name           # the meta-weights never move
    assert all(p.grad is None for p in model.parameters())
    # the same noise generator gives the same samples (evaluation is reproducible)
    again, _ = model.class_samples(support_x, support_y, 3, torch.Generator().manual_seed(1))
    assert torch.equal(again, model.class_samples(support_x, support_y, 3, torch.Generator().manual_seed(1))[0])
    assert torch.allclose(from_gan(to_gan(support_x)), support_x)


def test_bad_inputs_give_one_line_errors_naming_the_field(tmp_path):
    with pytest.raises(ConfigurationError, match=r"^model.init_args.generator.init_args.image_size=30 is not divisible"):
        DCGANGenerator(100, 1, 30, 8, 2)
    with pytest.raises(ConfigurationError, match=r"^model.init_args.discriminator.init_args.blocks=0 is invalid"):
        DCGANDiscriminator(1, 28, 8, 0)
    model = tiny_figr()
    with pytest.raises(ConfigurationError, match=r"^model.init_args.generator.init_args.image_size: the generator "
                                                 r"makes 1x8x8 images but the x images are 1x28x28"):
        model.check_images(torch.rand(2, 1, 28, 28), "the x images")
    with pytest.raises(ConfigurationError, match=r"^model.init_args.generator.init_args.in_channels"):
        model.check_images(torch.rand(2, 3, 8, 8), "the x images")
    with pytest.raises(ConfigurationError, match=r"scaled to \[0, 1\]"):
        model.check_images(torch.rand(2, 1, 8, 8) * 2 - 1, "the x images")
    with pytest.raises(ConfigurationError, match=r"^model.init_args.samples_per_class=1 is invalid"):
        tiny_figr(samples_per_class=1)
    with pytest.raises(ConfigurationError, match=r"^model.init_args.judge_ckpt='.*missing.ckpt'"):
        tiny_figr(judge_ckpt=str(tmp_path / "missing.ckpt"))


def glyph_folder(root: Path, hanzi: np.ndarray, classes=(250, 251), count=4) -> Path:
    """``root/<class>/<i>.png``: 28x28 greyscale glyphs of bundled hanzi classes."""
    for c in classes:
        (root / f"char{c}").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(hanzi[c, i], "L").save(root / f"char{c}" / f"{i}.png")
    return root


def test_a_support_folder_alone_is_a_prediction_set_for_generators(tmp_path, hanzi):
    support = glyph_folder(tmp_path / "s", hanzi)
    preprocessing = NpzDataModule("hanzi").preprocessing()
    task = read_support_set(str(support), preprocessing)
    assert task.class_names == ["char250", "char251"] and task.support_x.shape == (8, 1, 28, 28)
    assert task.query_x.shape[0] == 0 and task.support_y.tolist() == [0] * 4 + [1] * 4
    assert torch.allclose(task.support_x[0, 0], torch.from_numpy(hanzi[250, 0]).float() / 255)
    with pytest.raises(ConfigurationError, match=r"^data.init_args.query_dir is not set"):
        read_prediction_set(str(support), None, preprocessing)          # classifiers still need queries


def test_config_fits_end_to_end_and_predict_writes_pngs(tmp_path, hanzi):
    small = ["--data.init_args.test_episodes", "1", "--data.init_args.val_episodes", "1",
             "--model.init_args.test_inner_steps", "2", "--model.init_args.samples_per_class", "4",
             "--model.init_args.prediction_samples", "3"]   # predict takes the model's arguments from the checkpoint
    ok(cli("fit", "--config", CONFIG, "--trainer.max_steps", "2", *small, cwd=tmp_path))
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    grids = list((tmp_path / "runs").rglob("generated_test/episode0_class*.png"))
    assert len(grids) == 5                                   # a grid per test class: support, generated, real
    support = glyph_folder(tmp_path / "support", hanzi)
    run = ok(cli("predict", "--config", CONFIG, "--ckpt_path", last, "--data.init_args.support_dir", support,
                 cwd=tmp_path))                          # a support folder alone, as the README types it
    written = sorted((tmp_path / "runs").rglob("generated/*/*.png"))
    assert [p.relative_to(p.parent.parent).as_posix() for p in written] == [
        f"char{c}/{i:03d}.png" for c in (250, 251) for i in range(3)]
    assert "6 generated images" in run.stdout + run.stderr
    image = Image.open(written[0])
    assert image.size == (28, 28) and image.mode == "L"
    failed = cli("predict", "--config", CONFIG, "--ckpt_path", last, cwd=tmp_path)
    assert failed.returncode != 0
    assert last_line(failed.stderr).count("data.init_args.support_dir is not set") == 1
    wrong = cli("fit", "--config", CONFIG, "--trainer.max_steps", "2", "--model.init_args.generator.init_args.image_size",
                "32", cwd=tmp_path)
    assert wrong.returncode != 0
    assert "model.init_args.generator.init_args.image_size" in last_line(wrong.stderr)
