"""SequenceLearner, the base of SNAIL and MANN: the label space checked before anything runs, episode
orders shared by training and evaluation (the evaluated split read from the Trainer), the embedding per
episode in training (in one pass without BatchNorm) and in one pass in eval(), checkpoint keys of earlier
versions, recurrent-state helpers."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from meta_helpers import quiet_trainer, random_classification_batch
from test_mann import tiny_mann
from test_snail import small_snail
from torch.utils.data import DataLoader

from lightning_meta import MANN, SNAIL, ConfigurationError, NpzDataModule, SinusoidDataModule, TaskBatch
from lightning_meta.data.sequences import episode_permutations
from lightning_meta.models import Conv4
from lightning_meta.models.memory import MemoryState, repeat_state, unroll


class SplitRecorder(pl.Callback):
    """The split each evaluation batch's orders come from, as the learner reads it."""

    def __init__(self) -> None:
        self.splits: list[str] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.splits.append(pl_module.evaluation_split())

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.splits.append(pl_module.evaluation_split())


def test_evaluation_reads_the_orders_of_the_split_the_trainer_evaluates():
    model = tiny_mann().float()
    batch = random_classification_batch(2, 3, 2, 2, (4,))
    loader = DataLoader([batch], batch_size=None)
    recorder = SplitRecorder()
    quiet_trainer(callbacks=[recorder]).validate(model, loader, verbose=False)
    quiet_trainer(callbacks=[recorder]).test(model, loader, verbose=False)
    model.train()
    quiet_trainer(callbacks=[recorder], max_steps=1, num_sanity_val_steps=1).fit(model, loader, loader)
    assert recorder.splits == ["val", "test", "val", "val"]  # fit: the sanity check, then the validation
    assert model.evaluation_split() == "test"  # not attached to a Trainer: a direct call

    # evaluation reads that split's orders: MANN's streams, SNAIL's support sequences
    model.eval()
    model.evaluation_split = lambda: "val"
    stream = model.stream(batch, "val")
    expected = model.stream_scores(model.stream_logits(stream.x, stream.previous), stream)
    for name, values in model.evaluate_tasks(batch).items():
        torch.testing.assert_close(values, expected[name])
    snail = small_snail().eval()
    images = random_classification_batch(2, 5, 1, 2, (1, 16, 16))
    snail.evaluation_split = lambda: "val"
    support_x, support_y, query_x, _ = images.tensors()
    orders = snail.episode_orders(images, 5, "val")
    assert not torch.equal(orders, snail.episode_orders(images, 5, "test"))
    torch.testing.assert_close(snail.evaluate_batch(images)[0], snail.group_logits(support_x, support_y, query_x, orders))


@pytest.mark.parametrize("learner", ["snail", "mann"])
def test_orders_follow_the_episode_address_and_a_single_task_reads_test_episode_0s(learner):
    model, salt = (small_snail(), 20180223) if learner == "snail" else (tiny_mann(stream_seed=7), 7)
    batch = random_classification_batch(3, 5, 1, 1, (4,))
    for split in ("train", "val", "test"):
        epoch = 0 if split == "train" else None
        assert torch.equal(model.episode_orders(batch, 10, split), episode_permutations(batch, 10, salt, split, epoch))
    first = TaskBatch(*(t[:1] for t in batch.tensors()), index=torch.tensor([0]))
    assert torch.equal(model.task_order(10, torch.device("cpu")), model.episode_orders(first, 10, "test")[0])


def test_training_embeds_each_episode_alone_and_evaluation_all_at_once():
    model = small_snail()
    x = torch.randn(3, 6, 1, 16, 16) * 2 + 1
    model.train()
    per_episode = model.embed_episodes(x)
    assert per_episode.shape == (3, 6, model.feature_dim)
    assert torch.equal(per_episode[1], model.embed(x[1]))  # BatchNorm over episode 1 only
    assert not torch.allclose(per_episode, model.embed(x.flatten(0, 1)).unflatten(0, (3, 6)))
    model.eval()
    torch.testing.assert_close(model.embed_episodes(x), torch.stack([model.embed(e) for e in x]))


def test_an_embedding_without_batch_norm_embeds_all_episodes_in_one_pass_in_training():
    """Without BatchNorm the images are embedded independently: one pass equals the per-episode calls."""
    model = tiny_mann(embedding=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3)),
                      input_shape=[4]).train()
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    calls = []
    hook = model.embedding.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    features = model.embed_episodes(x)
    hook.remove()
    assert calls == [30]
    torch.testing.assert_close(features, torch.stack([model.embed(e) for e in x]))


@pytest.mark.parametrize("learner", ["snail", "mann"])
def test_the_probe_runs_in_eval_mode_and_moves_no_running_statistics(learner):
    embedding = Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running")
    model = (SNAIL(embedding, ways=5, shots=1, attention=[[8, 4], [8, 4]], tc_filters=[6]) if learner == "snail"
             else MANN(5, embedding, controller_size=8, memory_slots=6, memory_width=4, read_heads=2))
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    logits = model.probe(torch.randn(7, 1, 28, 28))
    assert logits.shape == (7, 5) and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in statistics.items())


@pytest.mark.parametrize("learner", ["snail", "mann"])
def test_data_a_sequence_learner_cannot_read_fail_before_anything_runs(learner):
    embedding = Conv4(1, None, hidden_channels=4, pooling="max", batch_norm_stats="running")
    model = (SNAIL(embedding, ways=3, shots=1, attention=[[8, 4], [8, 4]], tc_filters=[6]) if learner == "snail"
             else MANN(3, embedding, controller_size=8, memory_slots=6, memory_width=4, read_heads=2))
    small = dict(meta_batch_size=2, episodes_per_epoch=2, val_episodes=2, test_episodes=2)
    with pytest.raises(ConfigurationError, match="classifies"):
        quiet_trainer(max_steps=1).fit(model, SinusoidDataModule(**small))
    supervised = NpzDataModule(path="hanzi", train_batches="supervised", batch_size=8, ways=3, shots=1, queries=1,
                               **small)
    with pytest.raises(ConfigurationError, match="data.init_args.train_batches: episodes"):
        quiet_trainer(max_steps=1).fit(model, supervised)
    more_ways = NpzDataModule(path="hanzi", ways=4, shots=1, queries=1, **small)
    with pytest.raises(ConfigurationError, match=r"data.init_args.ways=4 exceeds model.init_args.ways=3"):
        quiet_trainer(max_steps=1).fit(model, more_ways)


@pytest.mark.parametrize("learner", [SNAIL, MANN])
def test_an_embedding_with_batch_statistics_is_refused(learner):
    embedding = Conv4(1, None, hidden_channels=4, pooling="max")  # BatchNorm of each batch's statistics
    with pytest.raises(ConfigurationError, match="model.init_args.embedding: .*batch_norm_stats: running"):
        learner(embedding=embedding, ways=5, shots=1) if learner is SNAIL else learner(embedding=embedding)


def test_checkpoint_parameter_names_are_those_of_earlier_versions():
    """The attribute names of SNAIL and MANN (their checkpoint keys), as written before SequenceLearner."""
    embedding = dict(in_channels=1, out_features=None, hidden_channels=4, image_size=16, pooling="max",
                     batch_norm_stats="running")
    snail = SNAIL(Conv4(**embedding), ways=5, shots=1, attention=[[8, 4], [8, 4]], tc_filters=[6])
    mann = MANN(ways=3, embedding=Conv4(**embedding), controller_size=8, memory_slots=6, memory_width=5,
                read_heads=2, key_strength=True)
    for model, expected in ((snail, {"embedding": 24, "sequence": 21}),
                            (mann, {"embedding": 24, "controller": 4, "key_layer": 2, "gate_layer": 2,
                                    "strength_layer": 2, "output_layer": 2})):
        names = [key.split(".")[0] for key in model.state_dict()]
        assert {name: names.count(name) for name in set(names)} == expected
        assert not model.renamed_prefixes


def test_unroll_runs_a_step_along_the_sequence_and_repeat_state_copies_nothing():
    inputs = torch.arange(12.0).view(2, 3, 2)
    outputs, state = unroll(lambda x, total: (total + x, total + x), inputs, torch.zeros(2, 2))
    torch.testing.assert_close(outputs, inputs.cumsum(1))
    torch.testing.assert_close(state, inputs.sum(1))
    memory = MemoryState(torch.randn(1, 4, 3), torch.rand(1, 2, 4), torch.rand(1, 4), torch.rand(1, 2, 4))
    h = torch.randn(1, 8)
    repeated = repeat_state(((h, h), memory, None, [h], {"h": h}), 5)
    (pair, memory5, nothing, listed, named) = repeated
    assert isinstance(memory5, MemoryState) and memory5.memory.shape == (5, 4, 3) and nothing is None
    assert pair[0].shape == listed[0].shape == named["h"].shape == (5, 8)
    assert pair[0].data_ptr() == h.data_ptr() and torch.equal(pair[1][4], h[0])
    with pytest.raises(TypeError, match="recurrent state of type str"):
        repeat_state("h", 2)
