"""MANN (Santoro et al. 2016): LRUA writes and cosine reads by hand, memory wiped per episode, the
one-step label delay and causality, streams and instance metrics, errors, the CLI config, learning."""

from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from fixtures_images import make_omniglot
from meta_helpers import quiet_trainer, random_classification_batch
from test_cli import REPO, cli
from torch import nn

from lightning_meta.algorithms.mann import MANN
from lightning_meta.data.npz import NpzDataModule
from lightning_meta.data.sequences import episode_permutations, label_stream
from lightning_meta.errors import ConfigurationError
from lightning_meta.metrics import mean_and_ci95, pixel_stream_accuracy
from lightning_meta.models.conv4 import Conv4
from lightning_meta.models.memory import LRUAMemory, MemoryState


def tiny_mann(**kwargs) -> MANN:
    torch.manual_seed(0)
    settings = dict(ways=3, input_shape=[4], controller_size=8, memory_slots=6, memory_width=5, read_heads=2)
    settings.update(kwargs)
    return MANN(**settings).double().eval()


def tiny_streams(batch: int = 2, steps: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (batch, steps), generator=g)
    previous = torch.cat([torch.full((batch, 1), -1), y[:, :-1]], 1)
    return x, y, previous


# ---------------------------------------------------------------------------------------------- memory
def test_lrua_write_weights_interpolate_previous_reads_and_the_least_used_slot():
    """Santoro et al. Sec. 3.2 on a 4 x 3 memory, by hand: w_w = s w_r_prev + (1 - s) w_lu_prev; the
    least-used slot is zeroed, then M += w_w k; reads softmax(cos); usage = gamma u + w_r + w_w."""
    torch.manual_seed(0)
    memory = LRUAMemory(slots=4, width=3, read_heads=1, gamma=0.95)
    previous = MemoryState(memory=torch.randn(1, 4, 3, dtype=torch.float64),
                           read_weights=torch.tensor([[[0.1, 0.2, 0.3, 0.4]]], dtype=torch.float64),
                           usage=torch.tensor([[0.5, 0.1, 0.9, 0.3]], dtype=torch.float64),
                           write_weights=torch.zeros(1, 1, 4, dtype=torch.float64))
    key = torch.tensor([[[0.3, -0.7, 0.2]]], dtype=torch.float64)
    alpha = torch.tensor([[0.4]], dtype=torch.float64)
    reads, state = memory.step(key, alpha, previous)

    s = 1 / (1 + math.exp(-0.4))
    least_used = [0.0, 1.0, 0.0, 0.0]  # slot 1 has the least usage (0.1)
    write = [s * r + (1 - s) * lu for r, lu in zip([0.1, 0.2, 0.3, 0.4], least_used)]
    torch.testing.assert_close(state.write_weights[0, 0], torch.tensor(write, dtype=torch.float64))
    rows = previous.memory[0].clone()
    rows[1] = 0.0
    for i in range(4):
        rows[i] = rows[i] + write[i] * key[0, 0]
    torch.testing.assert_close(state.memory[0], rows)
    k = key[0, 0]
    cosines = torch.stack([(k @ rows[i]) / (k.norm() * rows[i].norm()) for i in range(4)])
    read = torch.softmax(cosines, 0)
    torch.testing.assert_close(state.read_weights[0, 0], read)
    torch.testing.assert_close(reads[0, 0], read @ rows)
    usage = 0.95 * previous.usage[0] + read + torch.tensor(write, dtype=torch.float64)
    torch.testing.assert_close(state.usage[0], usage)


def test_least_used_weights_mark_as_many_slots_as_heads_ties_to_the_lowest_index():
    memory = LRUAMemory(slots=5, width=2, read_heads=2)
    usage = torch.tensor([[0.4, 0.1, 0.3, 0.05, 0.9], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert memory.least_used(usage).tolist() == [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]]
    # the first step of an empty memory writes (1 - sigmoid(alpha)) of each key to the first n slots
    state = memory.initial_state(1, dtype=torch.float64)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    _, state = memory.step(keys, torch.zeros(1, 2, dtype=torch.float64), state)
    expected = torch.zeros(5, 2, dtype=torch.float64)
    expected[:2] = 0.5 * keys[0].sum(0)
    torch.testing.assert_close(state.memory[0], expected)


def test_key_strengths_multiply_the_cosines_before_the_softmax():
    """NTM-style sharpening by hand on a 3 x 2 memory: w_r = softmax(beta cos); no strengths: beta = 1."""
    memory = LRUAMemory(slots=3, width=2, read_heads=2)
    rows = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]], dtype=torch.float64)
    keys = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]], dtype=torch.float64)
    strengths = torch.tensor([[4.0, 0.5]], dtype=torch.float64)
    c = 1 / math.sqrt(2)
    cosines = [[c, c, -c], [1.0, 0.0, -1.0]]  # head 0 ([1, 1]) and head 1 ([2, 0]) against the three rows

    def softmax(values):
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]

    expected = [softmax([4.0 * v for v in cosines[0]]), softmax([0.5 * v for v in cosines[1]])]
    torch.testing.assert_close(memory.address(keys, rows, strengths)[0], torch.tensor(expected, dtype=torch.float64))
    plain = [softmax(cosines[0]), softmax(cosines[1])]
    torch.testing.assert_close(memory.address(keys, rows)[0], torch.tensor(plain, dtype=torch.float64))


def test_a_wiped_row_has_cosine_zero_and_passes_no_gradient():
    """x / (|x| + eps) would send a 1 / eps gradient into an all-zero row (NaN in fp16 backward)."""
    memory = LRUAMemory(slots=2, width=3, read_heads=1)
    rows = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    keys = torch.tensor([[[1.0, 1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    weights = memory.address(keys, rows)
    expected = torch.softmax(torch.tensor([0.0, 1 / math.sqrt(2)], dtype=torch.float64), 0)
    torch.testing.assert_close(weights[0, 0], expected)
    weights[0, 0, 1].backward()
    assert rows.grad[0, 0].abs().max() == 0 and torch.isfinite(keys.grad).all()


def test_reads_are_convex_combinations_of_memory_rows():
    torch.manual_seed(0)
    memory = LRUAMemory(slots=7, width=3, read_heads=3).double()
    state = memory.initial_state(4, dtype=torch.float64)
    for _ in range(6):
        reads, state = memory.step(torch.randn(4, 3, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64),
                                   state)
        weights = state.read_weights
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 3, dtype=torch.float64))
        torch.testing.assert_close(reads, weights @ state.memory)


# ---------------------------------------------------------------------------------------------- the network
def test_episodes_of_a_batch_do_not_see_each_other_and_memory_is_wiped():
    model = tiny_mann()
    x, _, previous = tiny_streams(batch=3)
    out = model.stream_logits(x, previous)
    changed_x, changed_previous = x.clone(), previous.clone()
    changed_x[1] = torch.randn_like(x[1])
    changed_previous[1, 1:] = (previous[1, 1:] + 1) % 3
    changed = model.stream_logits(changed_x, changed_previous)
    torch.testing.assert_close(changed[0], out[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(changed[2], out[2], rtol=0, atol=1e-12)
    assert not torch.allclose(changed[1], out[1])
    alone = model.stream_logits(x[2:3], previous[2:3])
    torch.testing.assert_close(alone[0], out[2], rtol=0, atol=1e-12)
    # a second call starts from an empty memory again: nothing is carried across calls
    torch.testing.assert_close(model.stream_logits(x, previous), out, rtol=0, atol=0)


def test_an_episode_is_evaluated_alone_whatever_its_batch_with_a_conv4_embedding():
    torch.manual_seed(0)
    model = MANN(ways=5, embedding=Conv4(1, None, hidden_channels=8, pooling="max", batch_norm_stats="running"),
                 controller_size=16, memory_slots=12, memory_width=6, read_heads=2)
    model.train()  # move the running statistics away from their initial values
    with torch.no_grad():
        model.embed(torch.randn(32, 1, 28, 28) * 3 + 1)
    model.eval()
    first = random_classification_batch(4, 5, 1, 3, (1, 28, 28), seed=1)
    mixed = random_classification_batch(4, 5, 1, 3, (1, 28, 28), seed=2)  # episode 2 as in first, the rest not
    for field in ("support_x", "support_y", "query_x", "query_y"):
        getattr(mixed, field)[2] = getattr(first, field)[2]
    streams = model.stream(first, "test"), model.stream(mixed, "test")
    alone, among_others = (model.stream_logits(stream.x, stream.previous) for stream in streams)
    assert alone.shape == (4, 20, 5)
    torch.testing.assert_close(alone[2], among_others[2], rtol=1e-5, atol=1e-6)
    scores, mixed_scores = model.evaluate_tasks(first), model.evaluate_tasks(mixed)
    assert sorted(scores) == ["acc", "acc_inst1", "acc_inst2", "acc_inst3", "loss"]
    for name, values in scores.items():
        torch.testing.assert_close(values[2], mixed_scores[name][2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("memory_slots", [6, 0])
def test_output_at_t_sees_only_inputs_up_to_t_and_labels_before_t(memory_slots):
    """The one-step delay: y_t enters at step t + 1; and causality in x."""
    model = tiny_mann(memory_slots=memory_slots)
    x, y, previous = tiny_streams()
    out = model.stream_logits(x, previous)
    t = 5
    new_y = y.clone()
    new_y[:, t] = (y[:, t] + 1) % 3
    new_previous = torch.cat([torch.full((2, 1), -1), new_y[:, :-1]], 1)
    changed = model.stream_logits(x, new_previous)
    torch.testing.assert_close(changed[:, :t + 1], out[:, :t + 1], rtol=0, atol=0)
    assert not torch.allclose(changed[:, t + 1], out[:, t + 1])
    new_x = x.clone()
    new_x[:, t + 1] = torch.randn_like(x[:, t + 1])
    changed = model.stream_logits(new_x, previous)
    torch.testing.assert_close(changed[:, :t + 1], out[:, :t + 1], rtol=0, atol=0)
    assert not torch.allclose(changed[:, t + 1], out[:, t + 1])
    # at t = 0 there is no label yet: the label input is a zero vector
    inputs = model.step_inputs(x, previous)
    assert inputs[:, 0, 4:].abs().sum() == 0 and (inputs[:, 1:, 4:].sum(-1) == 1).all()


def test_key_strength_adds_one_learned_strength_per_head():
    """key_strength=True: beta = 1 + softplus(W_b h) per head sharpens the reads; default: the paper's."""
    assert tiny_mann().strength_layer is None and tiny_mann(memory_slots=0, key_strength=True).strength_layer is None
    model = tiny_mann(key_strength=True)
    assert model.strength_layer.out_features == 2
    x, _, previous = tiny_streams()
    plain = model.stream_logits(x, previous)
    with torch.no_grad():
        model.strength_layer.bias.fill_(20.0)  # beta ~ 21: sharper reads, other outputs
    assert not torch.allclose(model.stream_logits(x, previous), plain)
    with torch.no_grad():  # beta = 1 + softplus(log(e - 1)) = 2
        model.strength_layer.weight.zero_()
        model.strength_layer.bias.fill_(math.log(math.e - 1))
    inputs = model.step_inputs(x, previous)
    state = model.initial_state(2, inputs)
    _, state = model.step(inputs[:, 0], state)
    memory_state = state[1]
    h = state[0][0]
    keys = torch.tanh(model.key_layer(h)).unflatten(-1, (2, 5))
    torch.testing.assert_close(memory_state.read_weights, model.memory.address(keys, memory_state.memory,
                                                                               torch.full((2, 2), 2.0,
                                                                                          dtype=torch.float64)))


def test_lstm_baseline_is_the_same_network_without_memory():
    baseline = tiny_mann(memory_slots=0)
    assert baseline.memory is None and baseline.key_layer is None
    assert baseline.controller.input_size == 4 + 3 and baseline.output_layer.in_features == 8
    mann = tiny_mann()
    assert mann.controller.input_size == 4 + 3 + 2 * 5 and mann.output_layer.in_features == 8 + 2 * 5
    x, _, previous = tiny_streams()
    assert baseline.stream_logits(x, previous).shape == mann.stream_logits(x, previous).shape == (2, 10, 3)


def test_streams_follow_the_shared_helpers_and_instance_metrics_count_presentations():
    model = tiny_mann()
    batch = random_classification_batch(3, 3, 2, 2, (4,), seed=1)
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    stream = model.stream(batch, "val")
    expected = label_stream(batch, episode_permutations(batch, 12, salt=0, split="val"))
    assert torch.equal(stream.x, expected.x) and torch.equal(stream.y, expected.y)
    # a perfect predictor, except at the first presentation of each class
    logits = F.one_hot(stream.y, 3).double() * 10
    logits[stream.presentation == 1] = -logits[stream.presentation == 1]
    scores = model.stream_scores(logits, stream)
    assert sorted(scores) == ["acc", "acc_inst1", "acc_inst2", "acc_inst3", "loss"]  # 4 instances: no 5th, 10th
    assert scores["acc_inst1"].tolist() == [0.0] * 3 and scores["acc_inst2"].tolist() == [1.0] * 3
    torch.testing.assert_close(scores["acc"], torch.full((3,), 0.75, dtype=torch.float64))


def test_fit_and_test_log_instance_accuracies_and_the_summary(caplog):
    pl.seed_everything(0)
    data = NpzDataModule(path="hanzi", ways=3, shots=2, queries=2, meta_batch_size=4,
                         episodes_per_epoch=8, val_episodes=4, test_episodes=6)
    model = MANN(ways=3, input_shape=[1, 28, 28], controller_size=16, memory_slots=16, memory_width=8,
                 read_heads=2)
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=1)
    trainer.fit(model, data)
    assert trainer.global_step == 2  # one optimiser step per meta-batch
    for name in ("train/loss", "train/acc", "train/acc_inst1", "train/acc_inst2", "val/acc", "val/acc_inst2"):
        assert name in trainer.logged_metrics, name
    with caplog.at_level("INFO", logger="pytorch_lightning"):
        results = trainer.test(model, data, verbose=False)[0]
    assert {"test/acc", "test/acc_ci95", "test/acc_inst1", "test/acc_inst3", "test/acc_inst3_ci95"} <= set(results)
    assert "test/acc_inst5" not in results and "test/acc_inst10" not in results
    assert all(0.0 <= results[k] <= 1.0 for k in results if "acc" in k)
    assert model.results["test"].count() == 6
    assert "test/acc_inst1 = " in caplog.text and "95% CI over 6 episodes" in caplog.text


def test_predict_task_continues_the_support_stream_once_per_query():
    model = tiny_mann()
    g = torch.Generator().manual_seed(3)
    support_x, support_y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    query_x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    probabilities = model.predict_task(support_x, support_y, query_x)
    assert probabilities.shape == (5, 3)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5))
    order = torch.tensor([4, 2, 0, 1, 3])  # queries do not see each other
    torch.testing.assert_close(model.predict_task(support_x, support_y, query_x[order]), probabilities[order])
    with pytest.raises(ConfigurationError, match="model.init_args.ways"):
        model.predict_task(torch.randn(4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3]), query_x)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,field", [
    (dict(ways=0), "model.init_args.ways=0"),
    (dict(controller_size=-1), "model.init_args.controller_size=-1"),
    (dict(memory_slots=-2), "model.init_args.memory_slots=-2"),
    (dict(memory_width=0), "model.init_args.memory_width=0"),
    (dict(read_heads=0), "model.init_args.read_heads=0"),
    (dict(memory_slots=3, read_heads=4), "model.init_args.read_heads=4 exceeds model.init_args.memory_slots=3"),
    (dict(usage_decay=1.5), "model.init_args.usage_decay=1.5"),
    (dict(key_strength="yes"), "model.init_args.key_strength='yes'"),
    (dict(report_instances=[1, 0]), "model.init_args.report_instances entry=0"),
    (dict(input_shape=None), "model.init_args.input_shape is needed"),
    (dict(input_shape=[0, 28, 28]), "model.init_args.input_shape"),
    (dict(embedding=Conv4(1, None, pooling="max")), "batch_norm_stats: running"),
    (dict(embedding=Conv4(1, 5, pooling="max", batch_norm_stats="running"), input_shape=[1, 2, 2]),
     "model.init_args.embedding cannot take inputs"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    settings = dict(ways=5, input_shape=[1, 28, 28])
    settings.update(kwargs)
    with pytest.raises(ConfigurationError, match=field.replace("[", "\\[")):
        MANN(**settings)


def test_impossible_data_fail_before_anything_runs():
    """More test ways than the label space, inputs of the wrong shape, supervised training batches."""
    data = NpzDataModule(path="hanzi", ways=3, test_ways=5, shots=1, queries=1,
                         meta_batch_size=2, episodes_per_epoch=2, val_episodes=2, test_episodes=2)
    model = MANN(ways=3, input_shape=[1, 28, 28], controller_size=8, memory_slots=8, memory_width=4, read_heads=1)
    with pytest.raises(ConfigurationError, match="data.init_args.test_ways=5 exceeds model.init_args.ways=3"):
        quiet_trainer().test(model, data)
    with pytest.raises(ConfigurationError, match="data.init_args.test_ways=5"):
        quiet_trainer(max_steps=1).fit(model, data)  # validation episodes would have 5 ways
    wrong_shape = MANN(ways=3, input_shape=[1, 20, 20], controller_size=8, memory_slots=0)
    data = NpzDataModule(path="hanzi", ways=3, shots=1, queries=1, meta_batch_size=2,
                         episodes_per_epoch=2, val_episodes=2, test_episodes=2)
    with pytest.raises(ConfigurationError, match="input_shape"):
        quiet_trainer().test(wrong_shape, data)
    supervised = NpzDataModule(path="hanzi", train_batches="supervised", batch_size=8,
                               ways=3, shots=1, queries=1, meta_batch_size=2, episodes_per_epoch=2, val_episodes=2)
    with pytest.raises(ConfigurationError, match="train_batches: episodes"):
        quiet_trainer(max_steps=1).fit(model, supervised)


# ---------------------------------------------------------------------------------------------- CLI
def test_the_config_fits_and_tests_through_the_cli(tmp_path):
    """configs/mann_omniglot_5w.yaml as shipped (5 classes x 10 instances), shrunk to the tiny fixture;
    then ``test`` from the best checkpoint (hyper-parameters reload with ``weights_only=True``)."""
    root = make_omniglot(tmp_path / "data", background=(3,) * 8, evaluation=(3, 3), drawings=10)
    small = ["--config", str(REPO / "configs" / "mann_omniglot_5w.yaml"), "--data.init_args.root", str(root),
             "--data.init_args.download", "false", "--data.init_args.split", "background",
             "--data.init_args.meta_batch_size", "2", "--data.init_args.episodes_per_epoch", "4",
             "--data.init_args.val_episodes", "2", "--data.init_args.test_episodes", "4",
             "--model.init_args.embedding.init_args.hidden_channels", "8", "--model.init_args.controller_size", "16",
             "--model.init_args.memory_slots", "64", "--model.init_args.memory_width", "8"]
    run = cli("fit", *small, "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    output = run.stdout + run.stderr
    assert "test/acc = " in output and "test/acc_inst10 = " in output and "95% CI over 4 episodes" in output
    assert list((tmp_path / "runs").rglob("best.ckpt"))
    metrics = list((tmp_path / "runs").rglob("metrics.csv"))
    assert metrics
    columns = set(next(csv.DictReader(metrics[0].open())))
    assert {"train/loss", "train/acc", "val/acc", "val/acc_inst2", "test/acc", "test/acc_ci95",
            *(f"test/acc_inst{k}" for k in (1, 2, 3, 5, 10))} <= columns
    best = str(next((tmp_path / "runs").rglob("best.ckpt")))
    tested = cli("test", *small, "--ckpt_path", best, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-4000:]
    assert "test/acc_inst2 = " in tested.stdout + tested.stderr


# ---------------------------------------------------------------------------------------------- learning
class DecayedMANN(MANN):
    """MANN whose Adam rate drops tenfold after ``decay_at`` meta-batches (a per-step schedule)."""

    def __init__(self, *args, decay_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.decay_at = decay_at

    def make_scheduler(self, group, optimizer):
        return {"scheduler": torch.optim.lr_scheduler.MultiStepLR(optimizer, [self.decay_at], 0.1), "interval": "step"}


def hanzi_stream_run(seed: int, steps: int = 1600) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """MANN meta-trained on ``steps`` meta-batches of 256 hanzi streams of 3 classes x 5 instances (Adam
    1e-2, tenfold lower for the last fifth), then tested on 1,000 streams of held-out classes.  Returns the
    test metrics and, per test stream, the paired differences ``inst2 - inst1`` (MANN's) and
    ``inst{k} - pixels_inst{k}`` (MANN minus the raw-pixel nearest prototype of the stream's earlier
    labelled instances, on the same stream)."""
    torch.set_num_threads(1)  # 15-step loops of small operations: a second thread only adds overhead
    pl.seed_everything(seed)
    data = NpzDataModule(path="hanzi", ways=3, shots=1, queries=4,
                         rotations=(0, 90, 180, 270), meta_batch_size=256, episodes_per_epoch=256 * steps,
                         val_episodes=4, test_episodes=1000, seed=seed)
    # standardised pixels projected to 16 features: inputs of unit scale that do not swamp the label input
    embedding = nn.Sequential(nn.Flatten(), nn.LayerNorm(784), nn.Linear(784, 16))
    model = DecayedMANN(ways=3, embedding=embedding, input_shape=[1, 28, 28], controller_size=64, memory_slots=32,
                        memory_width=32, read_heads=1, report_instances=[1, 2, 3, 5], outer_lr=1e-2,
                        gradient_clip_val=10.0, decay_at=steps * 4 // 5)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)  # the decay took place
    results = trainer.test(model, data, verbose=False)[0]
    rows = model.results["test"].rows()
    pixels: dict[int, dict[str, float]] = {}
    for batch in data.test_dataloader():  # the same streams (the order follows the episode's address)
        scores = pixel_stream_accuracy(model.stream(batch, "test"), (2, 3, 5))
        for i, episode in enumerate(batch.index.tolist()):
            pixels[episode] = {name: float(values[i]) for name, values in scores.items()}
    assert sorted(pixels) == [row["episode"] for row in rows]
    differences = {"inst2 - inst1": [row["acc_inst2"] - row["acc_inst1"] for row in rows]}
    for k in (2, 3, 5):
        differences[f"inst{k} - pixels"] = [row[f"acc_inst{k}"] - pixels[row["episode"]][f"acc_inst{k}"] for row in rows]
    return results, {name: torch.tensor(values, dtype=torch.float64) for name, values in differences.items()}


@pytest.mark.slow
def test_mann_binds_labels_and_beats_pixels_one_shot_on_held_out_hanzi():
    """Santoro et al.'s claim, on held-out hanzi classes: the 2nd presentation of a class beats the 1st
    (the network binds the label it saw one step after an instance to a later instance), and with one
    labelled instance per class (the 2nd presentation) MANN beats the raw-pixel nearest prototype of
    the stream's earlier instances, paired on the same 1,000 streams.

    1,600 meta-batches of 256 streams of 3 classes x 5 instances, Adam 1e-2 dropped tenfold after 1,280:
    ~170 s of CPU on one thread (177 s on a 2-core machine loaded by other jobs; before, 2,000 at a constant
    rate, ~4-5 minutes).  Seeds 0 / 1 / 2: acc_inst1 49.9 / 49.2 / 47.5%, acc_inst2 84.2 / 83.4 / 83.2%
    (+-1.4%) vs pixels 80.0 / 80.0 / 79.9%: MANN - pixels +4.2 +- 1.8, +3.4 +- 1.8, +3.4 +- 1.8 points
    (asserted: beyond the 95% CI, which all three clear by 1.6 points or more).  Before, 2,000 meta-batches
    at a constant 1e-2 (25% more fit time): +5.3 +- 1.8, +4.0 +- 1.7, +2.4 +- 1.8.  Not enough: 1,300 with
    the decay (seed 2: +1.7 +- 1.8); 1,000 with a cosine decay (75.7% at the 2nd presentation, below pixels:
    held-out accuracy still grows long after binding starts, ~200-300 meta-batches, as the 16-feature
    projection generalises); Adam 2e-2 (chance after 300); training streams of 3 classes x 3 instances (seed
    0 +1.9 +- 1.9 after 2,000, 44% at the 5th presentation, beyond the trained length); 2 x 2 average-pooled
    inputs (no binding after 500).  A meta-batch of 512 costs twice one of 256 (no overhead to amortise).
    Large meta-batches decide it: with 16 streams per meta-batch (Adam 3e-3) binding starts only after
    1,500-2,000 and reaches 64% at the 2nd presentation by 3,000; with 128 at Adam 1e-2 after ~2,000.

    Not claimed: MANN beating pixels from the 3rd presentation on, where the pixel prototype averages two or
    more labelled instances (seeds 0-2: 4.0 to 5.2 points below at the 3rd, 3.5 to 4.4 at the 5th, e.g.
    90.9% vs 95.3%); nor beating the plain LSTM by much on these short streams (the earlier 2,000-meta-batch
    recipe with ``memory_slots=0``, seed 0: 83.1% at the 2nd presentation, 91.1% at the 5th).
    """
    results, differences = hanzi_stream_run(seed=0)
    summary = {name: [round(v, 4) for v in mean_and_ci95(values)] for name, values in differences.items()}
    numbers = {k: round(v, 4) for k, v in results.items()} | summary
    margin, ci = mean_and_ci95(differences["inst2 - inst1"])
    assert margin > 3 * ci, numbers
    # the margin comes from the 2nd presentation rising, not from the 1st pushed below chance (1/3)
    assert results["test/acc_inst2"] > 1 / 3 + 3 * results["test/acc_inst2_ci95"], numbers
    assert results["test/acc_inst1"] > 1 / 3 - 3 * results["test/acc_inst1_ci95"], numbers
    # one shot: MANN beats raw pixels on the same streams, the paired difference beyond its 95% CI (the
    # bar every seed measured clears; seed 0 by more than twice the CI)
    gain, gain_ci = mean_and_ci95(differences["inst2 - pixels"])
    assert gain > gain_ci, numbers
