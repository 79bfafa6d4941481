"""MetaGAN: the N+1-class losses, the task-conditioned generator, the wrapper without a generator, DDP, bad inputs
and the configs through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cli_helpers import CONFIGS, cli, last_line, ok, the_run, weights
from fixtures_images import make_omniglot
from generative_ddp_check import one_and_two_processes
from lightning_meta import MAML, PrototypicalNetwork
from lightning_meta.algorithms.metagan import (
    MetaGAN,
    feature_matching_loss,
    real_fake_accuracy,
    real_fake_loss,
    real_probability,
)
from lightning_meta.algorithms.relation import RelationNetwork
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.algorithms.siamese import SiameseNetwork
from lightning_meta.data import NpzDataModule
from lightning_meta.errors import ConfigurationError
from lightning_meta.models import MLP, Conv4
from lightning_meta.models.generator import TaskConditionedGenerator
from lightning_meta.models.relation import RelationEmbedding
from meta_helpers import meta_gradient, quiet_trainer, random_classification_batch, relative_difference

REPO = Path(__file__).resolve().parent.parent


def maml(**kwargs) -> MAML:
    torch.manual_seed(0)
    return MAML(Conv4(1, 3, hidden_channels=4, image_size=8), inner_lr=0.4, inner_steps=2, **kwargs)


def protonet() -> PrototypicalNetwork:
    torch.manual_seed(0)
    return PrototypicalNetwork(Conv4(1, None, hidden_channels=4, pooling="max", image_size=16,
                                     batch_norm_stats="running"))


def generator(size: int = 8) -> TaskConditionedGenerator:
    torch.manual_seed(1)
    return TaskConditionedGenerator(1, size, noise_dim=4, hidden_channels=4, encoder_channels=4)


# ---------------------------------------------------------------------------------------- the N+1 losses
def test_n_plus_one_losses_equal_a_hand_computation():
    real = torch.tensor([[1.0, -2.0, 0.5], [-3.0, -4.0, -1.0]], dtype=torch.float64)
    fake = torch.tensor([[-5.0, -6.0, -2.5], [0.2, 0.1, -0.3], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    offset = 0.7

    def p_real(row):  # Z / (Z + 1), the fake class's logit fixed at 0
        z = sum(math.exp(v + offset) for v in row)
        return z / (z + 1)

    expected = (-sum(math.log(p_real(r)) for r in real.tolist()) / 2
                - sum(math.log(1 - p_real(r)) for r in fake.tolist()) / 3)
    assert real_fake_loss(real, fake, offset).item() == pytest.approx(expected, rel=1e-12)
    assert real_probability(real, offset).tolist() == pytest.approx([p_real(r) for r in real.tolist()], rel=1e-12)
    # balanced accuracy: reals 2/2 above 1/2 (p = 0.97, 0.24 -> 1 of 2), fakes below 1/2
    real_ok = sum(p_real(r) > 0.5 for r in real.tolist()) / 2
    fake_ok = sum(p_real(r) <= 0.5 for r in fake.tolist()) / 3
    assert real_fake_accuracy(real, fake, offset).item() == pytest.approx((real_ok + fake_ok) / 2)
    # large logits stay finite (softplus form)
    assert torch.isfinite(real_fake_loss(real * 1e3, fake * 1e3, offset))


def test_feature_matching_equals_a_hand_computation():
    real = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    fake = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    # means (2, 1) and (0.5, 0.5): (1.5^2 + 0.5^2)
    assert feature_matching_loss(real, fake).item() == pytest.approx(2.5, rel=1e-12)


def test_discriminator_loss_is_the_learners_loss_plus_the_real_fake_loss():
    """ProtoNet in float64: L_D = cross-entropy of the real queries + the real/fake loss of the outputs."""
    model = MetaGAN(protonet(), generator(16), adversarial_weight=0.5).double()
    task = random_classification_batch(1, 3, 1, 2, (1, 16, 16))[0]
    task = type(task)(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)
    noise = model.episode_noise(0, model.fake_count(3), "eval").double()
    params = dict(model.named_parameters())
    with torch.no_grad():
        fakes = model.fakes(task.support_x, task.support_y, noise)
        loss, outputs, _ = model.discriminator_objective(params, *task, fakes)
        real, fake = model.metric_task(task.support_x, task.support_y, task.query_x, *fakes)
    expected = (torch.nn.functional.cross_entropy(real, task.query_y)
                + 0.5 * real_fake_loss(real, fake, model.fake_offset))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert len(fake) == 3 * (1 + 3)  # 1 support fake and 3 query fakes per class, all scored


def test_feature_matching_reals_are_the_support_set_and_matching_queries_per_class():
    support_x = torch.arange(3.0).view(3, 1, 1, 1)
    query_y = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0, 2, 0, 1, 2])  # 4 queries per class, shuffled
    query_x = 10 + torch.arange(12.0).view(12, 1, 1, 1)
    def reals(**kwargs):
        return MetaGAN(maml(), generator(), **kwargs).matching_reals(support_x, query_x, query_y).flatten().tolist()
    # default: query_fakes (3) queries per class, classes in order, after the support set
    assert reals() == [0, 1, 2, 11, 13, 17, 12, 15, 16, 10, 14, 18]
    assert reals(matching_queries=1) == [0, 1, 2, 11, 12, 10]
    assert reals(matching_queries=0) == [0, 1, 2]
    assert reals(query_fakes=1) == [0, 1, 2, 11, 12, 10]
    assert reals(matching_queries=4) == [0, 1, 2, *range(10, 22)]  # every query: the whole task


def test_the_generator_step_matches_features_of_its_real_minibatch():
    """The generator's gradient is that of feature matching against ``matching_reals``: equal to a hand-built
    loss on those rows, and different from matching against the whole task."""
    task = random_classification_batch(1, 3, 1, 4, (1, 8, 8), seed=3)[0]
    model = MetaGAN(maml(), generator(), matching_queries=1).double()
    fakes = torch.rand(12, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    support_x, query_x = task.support_x.double(), task.query_x.double()
    def gradient(real):
        return torch.autograd.grad(model.generator_objective(real, fakes), fakes)[0]
    chosen = model.matching_reals(support_x, query_x, task.query_y)
    rows = [int((task.query_y == c).nonzero()[0]) for c in range(3)]
    torch.testing.assert_close(gradient(chosen), gradient(torch.cat([support_x, query_x[rows]])))
    assert (gradient(chosen) - gradient(torch.cat([support_x, query_x]))).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------- the generator
def test_two_episodes_give_different_samples_from_the_same_noise():
    g = generator()
    first = random_classification_batch(2, 3, 1, 1, (1, 8, 8), seed=0)
    support_a, support_b = first.support_x.sigmoid()
    labels = first.support_y[0]
    classes = torch.arange(3).repeat_interleave(2)
    noise = torch.randn(6, g.noise_dim, generator=torch.Generator().manual_seed(0))
    a, b = g(support_a, labels, classes, noise), g(support_b, labels, classes, noise)
    assert a.shape == (6, 1, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert (a - b).abs().max() > 1e-4, "the generator ignores the task"
    torch.testing.assert_close(g(support_a, labels, classes, noise), a)  # same task, same noise: same fakes
    # classes of one task differ too
    assert (a[0] - a[2]).abs().max() > 1e-6


def test_episode_noise_is_addressed_by_episode():
    model = MetaGAN(maml(), generator())
    same = model.episode_noise(5, 6, "eval"), model.episode_noise(5, 6, "eval")
    torch.testing.assert_close(*same)
    assert not torch.equal(model.episode_noise(5, 6, "eval"), model.episode_noise(6, 6, "eval"))
    assert not torch.equal(model.episode_noise(5, 6, "eval"), model.episode_noise(5, 6, "train"))


# ---------------------------------------------------------------------------------------- without a generator
@pytest.mark.parametrize("build,size", [(maml, 8), (protonet, 16)])
def test_without_a_generator_the_learner_is_the_wrapped_one(build, size):
    """Same meta-gradient on the same batch (float64, one real training step), same evaluation, one optimizer."""
    batch = random_classification_batch(2, 3, 1, 2, (1, size, size))
    plain, wrapped = build(), MetaGAN(build(), None)
    assert list(wrapped.outer_parameters()) == ["model"]
    reference = meta_gradient(plain.double(), batch)
    ours = meta_gradient(wrapped.double(), batch)
    assert relative_difference({k.removeprefix("learner."): v for k, v in ours.items()}, reference) == 0.0
    task = batch[0]
    double = type(task)(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)
    plain.eval(), wrapped.eval()
    with torch.enable_grad():
        torch.testing.assert_close(wrapped.evaluate_task(*double)[0], plain.evaluate_task(*double)[0])


def test_a_generator_trains_both_networks_with_two_optimizers():
    batch = random_classification_batch(2, 3, 1, 2, (1, 8, 8))
    model = MetaGAN(maml(), generator())
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = quiet_trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([batch, batch], batch_size=None))
    assert model.optimizer_steps == [2, 2] and model.optimizer_names == ["discriminator", "generator"]
    moved = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("learner.") for k in moved) and any(k.startswith("generator.") for k in moved)
    assert "fake_offset" in moved


# ---------------------------------------------------------------------------------------- DDP
def test_two_processes_match_one(tmp_path):
    single, double = one_and_two_processes("metagan", tmp_path)
    assert single["steps"] == double["steps"] == [3, 3]
    for name, value in single["params"].items():
        assert not torch.equal(value, single["initial"][name]) or "offset_initialised" in name or "running" in name
        torch.testing.assert_close(double["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------- bad inputs
def test_generator_sizes_that_do_not_fit_the_images_are_refused():
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.generator\.init_args\.image_size=30"):
        TaskConditionedGenerator(1, 30)
    model = MetaGAN(maml(), TaskConditionedGenerator(1, 12, noise_dim=4, hidden_channels=4, encoder_channels=4))
    data = NpzDataModule("hanzi", ways=3, shots=1, queries=1, meta_batch_size=1, episodes_per_epoch=2)
    data.setup("fit")
    with pytest.raises(ConfigurationError, match=r"generator\.init_args\.in_channels and image_size") as error:
        model.check_data(data, "train")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("learner", [
    lambda: Reptile(MLP(1, 1, (8,))),
    lambda: SiameseNetwork(Conv4(1, None, hidden_channels=4, pooling="max", image_size=28,
                                 batch_norm_stats="running"), feature_dim=4),
])
def test_a_learner_without_class_logits_is_refused(learner):
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.learner=") as error:
        MetaGAN(learner(), generator())
    assert "\n" not in str(error.value)


def test_other_bad_arguments_are_refused_in_one_line():
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.augment_support"):
        MetaGAN(maml(), generator(), augment_support=True)
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.support_fakes and query_fakes"):
        MetaGAN(maml(), generator(), support_fakes=0, query_fakes=0)
    with pytest.raises(ConfigurationError, match=r"multi_step_loss"):
        MetaGAN(maml(multi_step_loss=True), generator())
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.matching_queries"):
        MetaGAN(maml(), generator(), matching_queries=-1)


def test_more_matching_queries_than_the_episodes_serve_are_refused_before_training():
    model = MetaGAN(maml(), TaskConditionedGenerator(1, 28, noise_dim=4, hidden_channels=4, encoder_channels=4),
                    matching_queries=3)
    data = NpzDataModule("hanzi", ways=3, shots=1, queries=2, meta_batch_size=1, episodes_per_epoch=2)
    data.setup("fit")
    with pytest.raises(ConfigurationError, match=r"model\.init_args\.matching_queries=3 .* at most 2") as error:
        model.check_data(data, "train")
    assert "\n" not in str(error.value)


def test_a_bad_value_on_the_command_line_is_one_line_before_training(tmp_path):
    run = cli("fit", "--config", CONFIGS / "metagan_protonet_hanzi_5w1s.yaml", "--model.init_args.matching_queries",
              "99", cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert last_line(run.stderr).count("model.init_args.matching_queries=99") == 1
    assert not list(tmp_path.rglob("*.ckpt"))


def test_relation_network_is_adapted_with_log_relation_scores():
    """Relation logits r_k: the class logits are log sigmoid(r_k), the logits its evaluation reports."""
    torch.manual_seed(0)
    learner = RelationNetwork(RelationEmbedding(in_channels=1, hidden_channels=4, image_size=28), relation_channels=4)
    model = MetaGAN(learner, TaskConditionedGenerator(1, 28, noise_dim=4, hidden_channels=4, encoder_channels=4))
    raw = torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(model.class_logits(raw), torch.nn.functional.logsigmoid(raw))
    assert model.family == "metric"


# ---------------------------------------------------------------------------------------- configs through the CLI
TINY = ["--trainer.max_steps", "2", "--trainer.logger", "false", "--data.init_args.meta_batch_size", "1",
        "--data.init_args.episodes_per_epoch", "2", "--data.init_args.val_episodes", "2",
        "--data.init_args.test_episodes", "2", "--data.init_args.queries", "2", "--data.init_args.test_queries", "2",
        "--model.init_args.generator.init_args.hidden_channels", "4",
        "--model.init_args.generator.init_args.encoder_channels", "4"]


@pytest.mark.parametrize("name", ["metagan_maml_hanzi_5w1s", "metagan_protonet_hanzi_5w1s", "metagan_maml_omniglot_5w1s",
                                  "metagan_relation_omniglot_5w1s", "metagan_protonet_omniglot_5w1s"])
def test_configs_fit_and_test_through_the_cli(tmp_path, name):
    args = list(TINY)
    if "omniglot" in name:
        root = make_omniglot(tmp_path / "data", background=(3,) * 8, evaluation=(3, 3), drawings=5)
        args += ["--data.init_args.root", str(root), "--data.init_args.download", "false",
                 "--data.init_args.split", "background", "--data.init_args.ways", "5"]
        if "protonet" in name:
            args += ["--data.init_args.test_ways", "5"]
    if "protonet" in name and "hanzi" in name:
        args += ["--data.init_args.ways", "5"]
    run = ok(cli("fit", "--config", str(CONFIGS / f"{name}.yaml"), *args, cwd=tmp_path))
    output = run.stdout + run.stderr
    assert "test/acc = " in output and "test/real_fake_acc" in output, output[-3000:]


def test_two_processes_equal_one_through_the_cli(tmp_path):
    """The user's line ``fit --config configs/metagan_protonet_hanzi_5w1s.yaml --trainer.devices 2 --trainer.strategy
    ddp`` (CPU, gloo; no find_unused_parameters) trains and tests, with tiny sizes: 2 batches of 2 episodes (4
    optimizer steps), each process one episode of each batch, so it ends with the one-process run's parameters.  The
    BatchNorm running statistics are not compared: each process's are those of its own episodes (DDP broadcasts rank
    0's), as for the plain ProtoNet, and so are the test values, which evaluation in ``eval()`` mode computes with them."""
    small = ["--trainer.max_steps", "4", "--data.init_args.episodes_per_epoch", "4", "--data.init_args.val_episodes",
             "4", "--data.init_args.test_episodes", "4", "--data.init_args.queries", "2",
             "--data.init_args.test_queries", "2", "--model.init_args.generator.init_args.hidden_channels", "4",
             "--model.init_args.generator.init_args.encoder_channels", "4"]
    config = str(CONFIGS / "metagan_protonet_hanzi_5w1s.yaml")
    ok(cli("fit", "--config", config, *small, "--trainer.logger.init_args.save_dir", "one", cwd=tmp_path))
    two = ok(cli("fit", "--config", config, "--trainer.devices", "2", "--trainer.strategy", "ddp", *small,
                 "--trainer.logger.init_args.save_dir", "two", cwd=tmp_path))
    assert "test/acc = " in two.stdout + two.stderr and "test/real_fake_acc = " in two.stdout + two.stderr
    one_run, two_run = the_run(tmp_path / "one"), the_run(tmp_path / "two")
    one_weights = weights(one_run / "checkpoints" / "last.ckpt")
    two_weights = weights(two_run / "checkpoints" / "last.ckpt")
    assert one_weights.keys() == two_weights.keys()
    start = MetaGAN(protonet(), generator(28))  # not the config's initial weights: only to list the parameters
    parameters = [name for name, _ in start.named_parameters()]
    assert "fake_offset" in parameters and any(n.startswith("generator.") for n in parameters)
    for name in parameters:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-6, msg=name)
    steps = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for run in (one_run, two_run)]
    assert steps == [4, 4]
