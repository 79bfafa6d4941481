"""Time and peak memory of one Prototypical-network training step: lightning-meta against learn2learn.

Conv4 embedding (64 filters, max-pooling, 28x28 hanzi images), 5-way 1-shot, 15 queries, meta-batch 32.
learn2learn's ``LightningPrototypicalNetworks`` handles one task per batch, so its side is 32 calls of
its ``meta_learn`` (embed the task, prototypes, logits, loss), each followed by ``(loss / 32).backward()``,
then one Adam step.  Ours is the real ``PrototypicalNetwork.training_step`` in ``Trainer.fit``, with the
meta-batch embedded in one pass (``embed_together=True``) and episode by episode (the default).  Each
side runs its own library's Conv4 (learn2learn's ``CNN4Backbone``, ours ``Conv4(pooling="max")``: the
same function) from the same weights on the same pre-built meta-batch; the first step's gradients
are compared.

    python -m benchmarks.protonet_step            # ~2 minutes on a quiet 2-core CPU
    python -m benchmarks.protonet_step --tiny     # seconds: meta-batch 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Optional, Sequence

import torch
from torch import nn

from benchmarks.common import (
    FirstStepGradients,
    ForeignLoad,
    PeakMemory,
    PeakMemoryCallback,
    StepTimer,
    add_common_arguments,
    code_version,
    format_table,
    image_batch,
    in_fresh_process,
    load_hanzi,
    max_relative_difference,
    median_ms,
    memory_loader,
    quiet,
    quiet_trainer,
    write_json,
)
from lightning_meta import ClassImages, PrototypicalNetwork, TaskBatch
from lightning_meta.models import Conv4

TITLE = "Prototypical network training step: lightning-meta vs learn2learn"
HEADERS = ("implementation", "step ms", "min ms", "l2l/ours", "peak MiB", "ours/l2l mem", "grad diff", "other load")
WAYS, SHOTS, QUERIES = 5, 1, 15
VARIANTS = ("learn2learn", "ours embed_together", "ours per episode")
MEMORY_STEPS = 2


def build_embedding() -> Conv4:
    torch.manual_seed(0)
    return Conv4(1, None, pooling="max", batch_norm_stats="running")


def build_batch(meta_batch: int) -> TaskBatch:
    return image_batch(ClassImages.from_array(load_hanzi()), meta_batch, WAYS, SHOTS, QUERIES)


def learn2learn_backbone(embedding: Conv4) -> nn.Module:
    """learn2learn's own Conv4 (``CNN4Backbone``: conv -> BatchNorm -> ReLU -> max-pool, flattened)
    holding ``embedding``'s weights; its convolution biases, which ours lacks, are zero."""
    from benchmarks.reference import l2l

    backbone = l2l.vision.models.CNN4Backbone(hidden_size=64, layers=4, channels=1, max_pool=True)
    state = {}
    for name, value in embedding.state_dict().items():
        block, layer, field = name.split(".")[1:]
        state[f"{block}.{'conv' if layer == '0' else 'normalize'}.{field}"] = value.contiguous()
    state.update({f"{i}.conv.bias": torch.zeros(64) for i in range(4)})
    backbone.load_state_dict(state)
    return backbone


def ours_name(learn2learn_name: str) -> str:
    """``0.conv.weight`` -> ``features.0.0.weight`` (the parameter's name in our Conv4)."""
    block, layer, field = learn2learn_name.split(".")
    return f"features.{block}.{0 if layer == 'conv' else 1}.{field}"


class L2LProtoNet:
    """learn2learn's ``LightningPrototypicalNetworks`` on its own Conv4 with our weights: one
    ``meta_learn`` and backward per task, one Adam step."""

    def __init__(self, embedding: Conv4):
        from benchmarks.reference import l2l

        self.module = l2l.algorithms.LightningPrototypicalNetworks(learn2learn_backbone(embedding))
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=1e-3)

    @staticmethod
    def task_tensors(batch: TaskBatch, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``i`` in learn2learn's layout: ``[1, N*(K+Q), ...]``, each class's shots then its queries.

        ``meta_learn`` sorts the samples by label with the unstable ``torch.sort`` and takes the first
        ``shots`` of each class as support: on these labels the sort moves a query image into the
        support slot (index 1 before index 0).  The samples are placed so that the sort puts them where
        the episode says, so that both sides see the same support set.
        """
        support_x, support_y, query_x, query_y = batch[i]
        intended = torch.cat([torch.cat([support_x[support_y == c], query_x[query_y == c]]) for c in range(WAYS)])
        labels = torch.arange(WAYS).repeat_interleave(SHOTS + QUERIES)
        data = torch.empty_like(intended)
        data[torch.sort(labels).indices] = intended
        return data.unsqueeze(0), labels.unsqueeze(0)

    def outer_step(self, tasks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.optimizer.zero_grad()
        for task in tasks:
            loss, _ = self.module.meta_learn(task, 0, WAYS, SHOTS, QUERIES)
            (loss / len(tasks)).backward()
        self.optimizer.step()

    def gradients(self) -> dict[str, torch.Tensor]:
        """The gradients under our parameter names (the convolution biases we do not have left out)."""
        return {ours_name(n): p.grad.detach().clone() for n, p in self.module.features.named_parameters()
                if p.grad is not None and not n.endswith("conv.bias")}


def time_reference(embedding: nn.Module, batch: TaskBatch, steps: int, warmup: int, load: ForeignLoad):
    reference = L2LProtoNet(embedding)
    tasks = [L2LProtoNet.task_tensors(batch, i) for i in range(batch.num_tasks)]
    seconds, grads = [], {}
    for step in range(warmup + steps):
        if step >= warmup:
            load.start()
        start = time.perf_counter()
        reference.outer_step(tasks)
        seconds.append(time.perf_counter() - start)
        load.stop()
        if step == 0:
            grads = reference.gradients()
    return seconds[warmup:], grads


def time_ours(embedding: nn.Module, batch: TaskBatch, together: bool, steps: int, warmup: int, load: ForeignLoad):
    timer, recorder = StepTimer(skip=warmup, load=load), FirstStepGradients("embedding")
    trainer = quiet_trainer(warmup + steps, [timer, recorder])
    model = PrototypicalNetwork(copy.deepcopy(embedding), embed_together=together)
    trainer.fit(model, memory_loader([batch], warmup + steps))
    return timer.durations[warmup:], recorder.grads or {}


def peak_memory(variant: str, meta_batch: int, threads: int) -> float:
    """Peak RSS growth (MiB) over ``MEMORY_STEPS`` steps, measured in a fresh process."""
    quiet(threads)
    embedding, batch = build_embedding(), build_batch(meta_batch)
    if variant == "learn2learn":
        reference = L2LProtoNet(embedding)
        tasks = [L2LProtoNet.task_tensors(batch, i) for i in range(batch.num_tasks)]
        memory = PeakMemory()
        memory.start()
        for _ in range(MEMORY_STEPS):
            reference.outer_step(tasks)
        return memory.peak_mib()
    callback = PeakMemoryCallback()
    model = PrototypicalNetwork(embedding, embed_together=variant == "ours embed_together")
    quiet_trainer(MEMORY_STEPS, [callback]).fit(model, memory_loader([batch], MEMORY_STEPS))
    return callback.peak


def run(meta_batch: int, steps: int, rounds: int, warmup: int, threads: int, memory: bool) -> dict:
    quiet(threads)
    embedding, batch = build_embedding(), build_batch(meta_batch)
    seconds = {v: [] for v in VARIANTS}
    grads: dict[str, dict] = {}
    loads = {v: ForeignLoad() for v in VARIANTS}
    for round_index in range(rounds):
        for variant in VARIANTS:
            if variant == "learn2learn":
                taken, g = time_reference(embedding, batch, steps, warmup, loads[variant])
            else:
                taken, g = time_ours(embedding, batch, variant == "ours embed_together", steps, warmup, loads[variant])
            seconds[variant] += taken
            grads.setdefault(variant, g)
        print(f"  timing round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    peaks = {v: (in_fresh_process(peak_memory, v, meta_batch, threads, preload=["benchmarks.reference"])
                 if memory else float("nan")) for v in VARIANTS}
    reference = "learn2learn"
    rows = []
    for variant in VARIANTS:
        is_ref = variant == reference
        rows.append([variant, median_ms(seconds[variant]), 1000 * min(seconds[variant]),
                     None if is_ref else median_ms(seconds[reference]) / median_ms(seconds[variant]),
                     peaks[variant], None if is_ref else peaks[variant] / peaks[reference],
                     "(reference)" if is_ref else max_relative_difference(grads[variant], grads[reference]),
                     loads[variant].cores])
    header = (f"{TITLE}\n(Conv4-64 max-pool, {WAYS}-way {SHOTS}-shot {QUERIES} queries, meta-batch {meta_batch}; "
              f"lightning-meta at {code_version()}; torch {torch.__version__}, {threads} thread(s); median and min "
              f"over {rounds} round(s) x {steps} steps after {warmup} warm-up)")
    text = "\n".join([header, "", format_table(HEADERS, rows)])
    return {"text": text, "raw": {"seconds": seconds, "peak_mib": peaks}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3, tiny 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    args = parser.parse_args(argv)
    result = run(meta_batch=2 if args.tiny else 32, steps=2 if args.tiny else 5,
                 rounds=args.rounds or (1 if args.tiny else 3), warmup=1 if args.tiny else 2,
                 threads=args.threads, memory=not args.no_memory)
    print(result["text"], flush=True)
    write_json(args.json, result["raw"])
    return result


if __name__ == "__main__":
    main()
