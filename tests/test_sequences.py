"""Episodes as sequences: orders are functions of the episode's address, streams keep every example
once, the previous label is the one-step delay, presentations count a class's appearances."""

from __future__ import annotations

import torch
from meta_helpers import random_classification_batch

from lightning_meta.data.sequences import episode_permutations, label_stream
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
