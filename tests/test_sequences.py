"""Episodes as sequences: orders are functions of the episode's address, streams keep every example
once, the previous label is the one-step delay, presentations count a class's appearances."""

from __future__ import annotations

import torch
from meta_helpers import random_classification_batch

from lightning_meta.data.sequences import LabelStream, episode_permutations, label_stream
from lightning_meta.metrics import pixel_stream_accuracy
from lightning_meta.tasks import TaskBatch


def test_permutations_follow_the_episode_address_not_the_batch():
    batch = random_classification_batch(4, 5, 1, 2, (3,))
    orders = episode_permutations(batch, 15, salt=1, split="train", epoch=0)
    assert orders.shape == (4, 15)
    assert all(sorted(o.tolist()) == list(range(15)) for o in orders)
    alone = TaskBatch(*[t[2:3] for t in batch.tensors()], index=batch.index[2:3])
    assert torch.equal(episode_permutations(alone, 15, salt=1, split="train", epoch=0)[0], orders[2])
    assert not torch.equal(episode_permutations(batch, 15, salt=1, split="train", epoch=1), orders)
    assert not torch.equal(episode_permutations(batch, 15, salt=1, split="test"), orders)


def test_stream_holds_each_example_once_with_delayed_labels_and_presentation_counts():
    batch = random_classification_batch(2, 3, 2, 2, (4,))
    order = episode_permutations(batch, 12, salt=3, split="val")
    stream = label_stream(batch, order)
    pooled_x = torch.cat([batch.support_x, batch.query_x], 1)
    pooled_y = torch.cat([batch.support_y, batch.query_y], 1)
    for b in range(2):
        for t in range(12):
            assert torch.equal(stream.x[b, t], pooled_x[b, order[b, t]])
            assert stream.y[b, t] == pooled_y[b, order[b, t]]
            assert stream.previous[b, t] == (stream.y[b, t - 1] if t else -1)
            assert stream.presentation[b, t] == int((stream.y[b, :t + 1] == stream.y[b, t]).sum())
    assert torch.equal(stream.presentation.max(1).values, torch.tensor([4, 4]))


def test_pixel_stream_baseline_is_the_nearest_mean_of_earlier_labelled_instances():
    """Worked by hand on 1-pixel streams: class 0 near 0, class 1 near 10."""
    #                   c0    c1     c0    c1    c0   (presentations 1, 1, 2, 2, 3)
    x = torch.tensor([[0.0, 10.0, 1.0, 9.0, 6.0],
                      [0.0, 10.0, 4.0, 9.0, 6.0]]).unsqueeze(-1)
    y = torch.tensor([[0, 1, 0, 1, 0]] * 2)
    stream = LabelStream(x, y, torch.cat([torch.full((2, 1), -1), y[:, :-1]], 1),
                         torch.tensor([[1, 1, 2, 2, 3]] * 2))
    scores = pixel_stream_accuracy(stream, instances=(1, 2, 3, 5))
    assert set(scores) == {"acc_inst2", "acc_inst3"}  # no prototype at the 1st; no stream has a 5th
    # stream 0: 1.0 is nearest 0 (right), 9.0 nearest 10 (right); 6.0 is nearer 9.5 than mean(0, 1) = 0.5
    # stream 1: 4.0 is nearer 0 than 10 (right), 9.0 right; 6.0 is nearer mean(10, 9) than mean(0, 4) = 2
    torch.testing.assert_close(scores["acc_inst2"], torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(scores["acc_inst3"], torch.tensor([0.0, 0.0], dtype=torch.float64))
    x[1, 4] = 5.0  # now nearer mean(0, 4) = 2 (distance 3) than 9.5 (4.5)
    assert pixel_stream_accuracy(stream, instances=(3,))["acc_inst3"].tolist() == [0.0, 1.0]
