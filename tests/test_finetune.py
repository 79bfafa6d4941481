"""Fine-tuning baselines (Chen et al. 2019): supervised batches, frozen-backbone meta-test, cosine head,
episode independence, learning on held-out hanzi, and the errors of bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from fixtures_images import make_omniglot
from meta_helpers import episode_alone_and_among_others, pixel_prototype_accuracy, quiet_trainer

from lightning_meta import ConfigurationError, EpisodicDataModule, NpzDataModule, SinusoidDataModule, TaskBatch
from lightning_meta.algorithms.finetune import Baseline, BaselinePlusPlus, CosineClassifier, FineTuningBaseline
from lightning_meta.data.supervised import SupervisedStream
from lightning_meta.models import Conv4

REPO = Path(__file__).resolve().parent.parent
HANZI = "hanzi"  # the bundled set (lightning_meta.data.bundled)


def supervised_data(**kwargs) -> NpzDataModule:
    settings = dict(path=HANZI, train_batches="supervised", batch_size=16, ways=5, shots=1, queries=5,
                    meta_batch_size=4, val_episodes=4, test_episodes=8, rotations=(0, 90))
    settings.update(kwargs)
    return NpzDataModule(**settings)


def small_backbone(**kwargs) -> Conv4:
    return Conv4(1, None, hidden_channels=8, pooling="max", batch_norm_stats="running", **kwargs)


# ---------------------------------------------------------------- supervised batches
def test_supervised_batches_are_class_balanced_meta_train_classes():
    data = supervised_data()
    data.setup("fit")
    classes = data.num_train_classes
    assert classes == 192 * 2  # 64% of 300 characters, two rotations each
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == classes * 20 // 16
    x, y = batches[0]
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    labels = torch.cat([y for _, y in batches])
    counts = Counter(labels.tolist())
    assert set(counts) == set(range(classes))          # meta-training classes only, every one of them
    assert set(counts.values()) == {20}                 # each class exactly R = 20 times an epoch
    for _, labels_of_batch in batches:                  # 16 < classes: a class at most once per round
        assert max(Counter(labels_of_batch.tolist()).values()) <= 2
    # labels are the source's classes: the images are that class's images (rotated by its rotation)
    source = data.source("train")
    stream = loader.stream
    classes_order, picks = stream.order(0)
    for i in range(16):
        expected = source.class_samples(int(classes_order[i]), picks[i:i + 1])[0]
        assert torch.equal(x[i], expected) and int(y[i]) == int(classes_order[i])
    # the 20 samples of a class within an epoch are its 20 different images
    for c in (0, classes - 1):
        assert sorted(picks[classes_order == c].tolist()) == list(range(20))
    # validation and test classes never appear: train images are not in the test split
    test_images = data.source("test").images
    assert not any(torch.equal(source.images[0], t) for t in test_images)


def test_supervised_batches_are_reproducible_addressable_and_resumable():
    def epoch(data: NpzDataModule, epoch_index: int, start: int = 0) -> list[torch.Tensor]:
        data.setup("fit")
        loader = data.train_dataloader()
        loader.load_state_dict({"epoch": epoch_index, "batches_done": start})
        return [y for _, y in loader][:6]

    a, b = supervised_data(), supervised_data()
    first = epoch(a, 0)
    assert all(torch.equal(p, q) for p, q in zip(first, epoch(b, 0)))            # same seed, same batches
    assert not torch.equal(first[0], epoch(a, 1)[0])                              # epochs differ
    assert not torch.equal(first[0], epoch(supervised_data(seed=1), 0)[0])        # seeds differ
    resumed = epoch(b, 0, start=3)
    assert all(torch.equal(p, q) for p, q in zip(resumed[:3], first[3:6]))        # mid-epoch resume
    # two ranks' halves make the single-process batch
    source = a.source("train")
    whole = SupervisedStream(source, 16, seed=0).batch(2)
    halves = [SupervisedStream(source, 16, seed=0, rank=r, world_size=2).batch(2) for r in (0, 1)]
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])


# ---------------------------------------------------------------- the model
def test_cosine_head_is_scale_times_cosine():
    torch.manual_seed(0)
    head = CosineClassifier(6, 4, scale=7.0, learn_scale=False)
    x = torch.randn(3, 6)
    expected = torch.stack([torch.stack([7.0 * (x[i] @ head.weight[c]) / (x[i].norm() * head.weight[c].norm())
                                         for c in range(4)]) for i in range(3)])
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert "scale" not in dict(head.named_parameters())
    learned = CosineClassifier(6, 4, scale=7.0, learn_scale=True)
    assert isinstance(learned.scale, torch.nn.Parameter) and learned.scale.item() == 7.0


def test_meta_test_freezes_the_backbone_and_episodes_are_independent():
    torch.manual_seed(0)
    model = BaselinePlusPlus(small_backbone(), num_classes=10, finetune_steps=20)
    model.train()                                     # evaluation must not depend on the caller's mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alone, among = episode_alone_and_among_others(model, (1, 28, 28))
    assert alone.shape == (4, 15, 5)
    assert torch.allclose(alone[2], among[2], atol=1e-5)          # episode 2 does not see its neighbours
    assert not torch.allclose(alone[1], among[1], atol=1e-3)
    after = model.state_dict()
    for name, value in before.items():                             # weights, running BN statistics, counters
        assert torch.equal(after[name], value), name
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.backbone.training              # the mode is restored


def test_evaluation_fine_tunes_under_no_grad_and_inference_mode():
    torch.manual_seed(0)
    model = Baseline(small_backbone(), num_classes=10, finetune_steps=30).eval()
    batch = episode_batch()
    plain = model.evaluate_batch(batch)[0]
    with torch.no_grad():
        assert torch.allclose(model.evaluate_batch(batch)[0], plain, atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(model.evaluate_batch(batch)[0], plain, atol=1e-6)
    one = model.evaluate_task(*batch[0])[0]
    assert torch.allclose(one, plain[0], atol=1e-5)



@pytest.mark.parametrize("model_class", [Baseline, BaselinePlusPlus])
def test_fine_tuned_heads_fit_their_support_sets(model_class):
    """With the defaults (100 steps of SGD 0.01), each task's fresh head classifies its own support
    features, 3 tasks at once with different labellings."""
    model = model_class(small_backbone(), num_classes=10)
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(3, 10, 64, generator=generator).relu()           # 5-way 2-shot, ReLU-like features
    labels = torch.stack([torch.randperm(5, generator=generator).repeat(2) for _ in range(3)])
    logits = model.finetune_heads(support, labels, support)
    assert logits.shape == (3, 10, 5) and not logits.requires_grad
    assert torch.equal(logits.argmax(-1), labels)


def test_fine_tuning_follows_chen_et_al_minibatches():
    model = Baseline(small_backbone(), num_classes=10, finetune_steps=7, finetune_batch_size=4)
    steps = model.minibatches(5, torch.Generator().manual_seed(0))
    assert [len(s) for s in steps] == [4, 1, 4, 1, 4, 1, 4]          # passes over the 5 images in 4 + 1
    assert sorted(torch.cat(steps[:2]).tolist()) == list(range(5))
    whole = Baseline(small_backbone(), num_classes=10, finetune_steps=3, finetune_batch_size=None)
    assert [len(s) for s in whole.minibatches(5, torch.Generator())] == [5, 5, 5]


def test_pre_training_step_trains_the_classifier_on_supervised_batches():
    pl.seed_everything(0)
    data = supervised_data()
    model = BaselinePlusPlus(small_backbone(), num_classes=384, outer_lr=3e-3)
    scale = model.classifier.scale.item()
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, data)
    assert trainer.global_step == 3
    assert model.classifier.scale.item() != scale                                  # learned
    assert {"train/loss", "train/acc"} <= set(trainer.callback_metrics)
    assert model.hparams["num_classes"] == 384 and "head" not in model.hparams
    reloaded = BaselinePlusPlus(**model.hparams)                                    # hparams rebuild the class
    assert reloaded.head == "cosine"


def episode_batch() -> TaskBatch:
    data = supervised_data()
    data.setup("test")
    return next(iter(data.test_dataloader()))


# ---------------------------------------------------------------- bad settings
def test_num_classes_mismatch_fails_before_training():
    data = supervised_data()
    model = Baseline(small_backbone(), num_classes=100)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.num_classes=100.*384 classes.*"
                                                 r"model\.init_args\.num_classes: 384"):
        trainer.fit(model, data)
    assert trainer.global_step == 0


@pytest.mark.parametrize("field,value,message", [
    ("finetune_steps", -3, r"model\.init_args\.finetune_steps=-3 is invalid"),
    ("finetune_lr", 0.0, r"model\.init_args\.finetune_lr=0.0 is invalid"),
    ("head", "mlp", r"model\.init_args\.head='mlp' is unknown"),
    ("num_classes", 0, r"model\.init_args\.num_classes=0 is invalid"),
])
def test_bad_model_settings(field, value, message):
    settings = {"backbone": small_backbone(), "num_classes": 10, field: value}
    with pytest.raises(ConfigurationError, match=message):
        FineTuningBaseline(**settings)


def test_backbone_must_be_headless_with_running_statistics():
    with pytest.raises(ConfigurationError, match=r"backbone\.init_args\.out_features: null"):
        Baseline(Conv4(1, 5, pooling="max", batch_norm_stats="running"), num_classes=10)
    with pytest.raises(ConfigurationError, match=r"backbone\.init_args\.batch_norm_stats: running"):
        Baseline(Conv4(1, None, pooling="max", batch_norm_stats="batch"), num_classes=10)


def test_supervised_batches_need_an_image_module_and_a_batch_size():
    class Regression(EpisodicDataModule):
        is_regression = True

    with pytest.raises(ConfigurationError, match=r"train_batches='supervised'.*regression data module"):
        Regression(train_batches="supervised", batch_size=4)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.batch_size"):
        supervised_data(batch_size=None)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.batch_size=0 is invalid"):
        supervised_data(batch_size=0)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.train_batches='minibatch' is unknown"):
        supervised_data(train_batches="minibatch")
    with pytest.raises(ConfigurationError, match=r"batch_size=16 applies to supervised batches only"):
        supervised_data(train_batches="episodes")
    too_big = supervised_data(batch_size=384 * 20 + 1)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.batch_size=7681 exceeds"):
        too_big.setup("fit")


def test_model_refuses_episodic_or_regression_training_data():
    model = Baseline(small_backbone(), num_classes=384)
    episodic = NpzDataModule(path=HANZI, rotations=(0, 90), meta_batch_size=4, val_episodes=4)
    with pytest.raises(ConfigurationError, match=r"data\.init_args\.train_batches: supervised"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, episodic)
    with pytest.raises(ConfigurationError, match=r"SinusoidDataModule is a regression data module"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, SinusoidDataModule(meta_batch_size=4))
    with pytest.raises(TypeError, match="supervised"):
        model.training_step(episode_batch(), 0)


# ---------------------------------------------------------------- the CLI, the shipped config
def test_omniglot_config_fits_and_tests_through_the_cli(tmp_path):
    """The shipped Omniglot config, shrunk to the tiny fixture: a wrong num_classes fails before
    training and names the fix; the right one pre-trains, validates, and tests the best checkpoint."""
    root = make_omniglot(tmp_path / "data", background=(3,) * 8, evaluation=(3, 3), drawings=5)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    args = [sys.executable, "-m", "lightning_meta", "fit", "--config", str(REPO / "configs" / "baseline_omniglot_5w1s.yaml"),
            "--data.init_args.root", str(root), "--data.init_args.download", "false",
            "--data.init_args.split", "background", "--data.init_args.queries", "2",
            "--data.init_args.meta_batch_size", "2", "--data.init_args.val_episodes", "4",
            "--data.init_args.test_episodes", "6", "--model.init_args.finetune_steps", "10",
            "--model.init_args.backbone.init_args.hidden_channels", "8", "--trainer.max_epochs", "1"]
    wrong = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2
    assert "model.init_args.num_classes=4400" in wrong.stderr and "num_classes: 36" in wrong.stderr
    assert "Epoch 0" not in wrong.stdout + wrong.stderr
    run = subprocess.run(args + ["--model.init_args.num_classes", "36"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "95% CI over 6 episodes" in run.stdout + run.stderr
    assert list((tmp_path / "runs").rglob("best.ckpt"))


# ---------------------------------------------------------------- learning
@pytest.mark.slow
@pytest.mark.parametrize("model_class", [Baseline, BaselinePlusPlus])
def test_baselines_beat_the_pixel_baseline_on_held_out_hanzi(model_class):
    """Pre-trained on the 192 meta-training characters (supervised batches of 32, Adam 1e-3), tested
    5-way 1-shot on the 60 held-out characters with Chen et al.'s fine-tuning (100 SGD steps)."""
    pl.seed_everything(0)
    data = NpzDataModule(path=HANZI, train_batches="supervised", batch_size=32, ways=5, shots=1, queries=5,
                         meta_batch_size=20, val_episodes=4, test_episodes=200)
    data.setup("fit")
    model = model_class(Conv4(1, None, pooling="max", batch_norm_stats="running"), num_classes=data.num_train_classes)
    trainer = quiet_trainer(max_steps=STEPS, limit_val_batches=0)
    trainer.fit(model, data)
    ours = trainer.test(model, data, verbose=False)[0]
    pixels = pixel_prototype_accuracy(data).mean().item()
    assert 0.70 < pixels < 0.90
    assert ours["test/acc"] > pixels + 3 * ours["test/acc_ci95"]


STEPS = 400
