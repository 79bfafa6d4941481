"""Memory-augmented neural network (MANN, Santoro et al. 2016) and its plain-LSTM baseline.

A MANN reads an episode as one labelled stream: the support and query examples of a task pooled and
shuffled (:func:`lightning_meta.data.sequences.label_stream`), each input ``x_t`` paired with the
*previous* step's label ``y_{t-1}`` (the paper's one-step delay; nothing at ``t = 0``), and predicts
``y_t`` at every step.  The first presentation of a class can only be guessed; from the second on, the
network can bind the label it saw one step after an earlier instance to the new instance, which is
what the meta-training on many streams teaches it.  Accuracy is reported over all positions
(``acc``) and at the k-th presentation of a class (``acc_inst1``, ``acc_inst2``, ...), as the paper.

Per step ``t``, for a batch of ``B`` streams at once (the controller and the memory are batched; the
memory of each stream is its own, wiped at the start of the stream)::

    e_t        = embedding(x_t)                                  (flattened pixels when None)
    h_t        = controller([e_t, one_hot(y_{t-1}), r_{t-1}])    (LSTM cell, hidden size controller_size)
    k_t^h      = tanh(W_k h_t),  alpha_t^h = W_a h_t             (one key and write gate per head)
    beta_t^h   = 1 + softplus(W_b h_t)                           (key strength, only with key_strength=True)
    r_t        = LRUAMemory.step(k_t, alpha_t, beta_t)           (write, then read; see models/memory.py)
    logits_t   = W_o [h_t, r_t]                                  (``ways`` classes)

The previous reads ``r_{t-1}`` enter the controller as in the Neural Turing Machine that MANN builds
on (and the public re-implementations of MANN); the keys are squashed by ``tanh`` (bounded rows).
``memory_slots=0`` is the paper's LSTM baseline: the same network without memory and reads.

Reference:
    A. Santoro, S. Bartunov, M. Botvinick, D. Wierstra, T. Lillicrap, "Meta-Learning with
    Memory-Augmented Neural Networks", ICML 2016.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_meta.algorithms.sequence import SequenceLearner, Split
from lightning_meta.data.sequences import LabelStream, label_stream
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.metrics import presentation_accuracy
from lightning_meta.models.memory import LRUAMemory, MemoryState, repeat_state, unroll
from lightning_meta.models.shapes import feature_width, input_shape_of
from lightning_meta.tasks import TaskBatch

INSTANCES = (1, 2, 3, 5, 10)

RecurrentState = tuple[Any, Optional[MemoryState], Tensor]


class MANN(SequenceLearner):
    """Memory-augmented neural network: an LSTM controller with an LRUA external memory, on label streams.

    Each training episode (a :class:`~lightning_meta.tasks.TaskBatch` task, ``ways`` classes x
    ``shots + queries`` instances) becomes one stream of ``ways * (shots + queries)`` steps, shuffled
    by a generator seeded by the episode's address (split, index and, in training, epoch): the same
    stream whatever its batch, rank or resume.  Training minimises the cross-entropy over all
    positions; the whole meta-batch runs through the controller at once (one ``manual_backward``,
    one optimiser step per batch).  Evaluation reports ``{stage}/acc`` (all positions, mean and 95% CI
    over episodes) and ``{stage}/acc_inst{k}`` for each ``k`` of ``report_instances`` that the streams
    hold: with ``shots + queries < 10`` instances per class, ``acc_inst10`` is simply not reported.
    Test episodes must not have more classes than ``ways`` (the label input and the output layer are
    sized by it): :meth:`check_data` refuses them before anything runs.

    Args:
        ways: classes of the label space: the one-hot label input and the output layer (5 in the paper).
            Episodes may have fewer classes (logits are then restricted to the episode's classes).
        embedding: a headless network ``[n, C, H, W] -> [n, features]``, e.g. ``Conv4(out_features=None,
            pooling="max", batch_norm_stats="running")`` (or a ``{"class_path", "init_args"}`` dict), or
            ``None``: the flattened pixels, as the paper.  In training each stream's images are embedded
            together (BatchNorm over one episode, as the metric learners; a stream never depends on the
            other streams of its batch); BatchNorm layers must keep running statistics (evaluation runs
            in ``eval()`` mode, each episode independently of its batch).
        input_shape: ``[C, H, W]`` of the images, to size the controller; default from the embedding's
            ``in_channels`` and ``image_size``; needed when ``embedding`` is ``None``.
        controller_size: hidden units of the LSTM controller (200 in the paper).
        memory_slots: memory rows per episode (128 in the paper); ``0``: the plain-LSTM baseline.
        memory_width: numbers per memory row, the key size (40 in the paper).
        read_heads: read/write heads, also the number of least-used slots (4 in the paper).
        usage_decay: ``gamma`` of the usage weights ``w_u = gamma w_u + w_r + w_w`` (0.95).
        key_strength: ``False`` (default): the paper's reads, ``softmax(cosine)``; ``True``: one learned key
            strength per head, ``beta = 1 + softplus(W_b h_t)``, multiplies the cosines before the softmax
            (the Neural Turing Machine's sharpening).  Measured on 15- and 20-step hanzi and synthetic
            streams, it did not make binding start sooner (see "Training cost"): the paper's default.
        report_instances: the presentations ``k`` whose accuracy is reported as ``acc_inst{k}``.
        stream_seed: salt of the stream orders (with the episode's address; ``order_seed``).
        Remaining arguments: see :class:`~lightning_meta.algorithms.sequence.SequenceLearner`.

    Training cost: MANN first learns to use the delayed labels (the 1st presentation of a class is
    guessed among the classes not yet shown: about 45% instead of 20% with 5 classes, 60% instead of 33%
    with 3, within a few hundred meta-batches); binding a label to a stored instance (the 2nd
    presentation beating the 1st) comes after a plateau whose length depends most on the meta-batch
    size, then on the classes per stream and the inputs.  Measured on one CPU thread on hanzi streams
    of 3 classes x 5 instances (controller 64, 32 x 32 memory, one head, standardised pixels projected
    to 16 features; ``tests/test_mann.py``): with 256 streams per meta-batch at Adam 1e-2 binding starts
    after ~500 meta-batches, and after 2,000 (~5 minutes) held-out classes reach 82-85% at the 2nd
    presentation (the raw-pixel nearest prototype of the stream's earlier instances: 80%) and 91-93% at
    the 5th (pixels: 95%); with 16 streams per meta-batch at Adam 3e-3 binding starts after 1,500-2,000
    and reaches 64-71% by 3,000, and with 5 classes x 4 instances it had not started after 9,000.  On
    5 classes x 10 instances (1,500 meta-batches of 256, 64 x 32 memory) it reached 69% / 81% at the
    2nd / 5th presentation: level with the plain LSTM, below pixels (74% / 93%).
    Inputs of unit scale per feature and few features help: 784 raw pixels swamp the label input (even
    the delayed labels are learned slowly).  On these short streams the plain LSTM (``memory_slots=0``)
    is close behind (83% / 91% with the same recipe), ``key_strength`` did not make binding start
    sooner, and reading before writing (weights from ``M_{t-1}``) was not consistently better over 3
    seeds.  The paper trains 10^5 episodes of 5 classes x 10 instances in meta-batches of 16
    (``configs/mann_omniglot_5w.yaml``); on a new data set, try large meta-batches with a higher
    learning rate first, watching for collapse (with 64 input features instead of 16, Adam 1e-2 fell
    to constant predictions within 500 meta-batches).

    Hooks to override (see ``examples/mann_custom_controller.py``): :meth:`build_controller` and
    :meth:`controller_step` (the controller: an ``nn.LSTMCell`` by default), :meth:`embed`.

    Reference:
        Santoro et al., "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016.

    Example::

        from lightning_meta.algorithms.mann import MANN
        from lightning_meta.data import NpzDataModule

        data = NpzDataModule("hanzi", ways=5, shots=5, queries=5, meta_batch_size=16)
        model = MANN(ways=5, input_shape=[1, 28, 28])          # raw pixels, 128 x 40 memory, 4 heads
        baseline = MANN(ways=5, input_shape=[1, 28, 28], memory_slots=0)   # the LSTM baseline
        trainer = pl.Trainer(max_epochs=10, inference_mode=False)
        trainer.fit(model, data)
        trainer.test(model, data)          # test/acc, test/acc_inst1, test/acc_inst2, ...
    """

    def __init__(
        self,
        ways: int = 5,
        embedding: Optional[nn.Module] = None,
        input_shape: Optional[list[int]] = None,
        controller_size: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        usage_decay: float = 0.95,
        key_strength: bool = False,
        report_instances: Sequence[int] = INSTANCES,
        stream_seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(ways=ways, embedding=embedding, **kwargs)
        require_positive(MODEL_ARGS + "controller_size", controller_size)
        require_positive(MODEL_ARGS + "memory_slots", memory_slots, allow_zero=True)
        if memory_slots:
            require_positive(MODEL_ARGS + "memory_width", memory_width)
            require_positive(MODEL_ARGS + "read_heads", read_heads)
            if read_heads > memory_slots:
                raise ConfigurationError(
                    f"{MODEL_ARGS}read_heads={read_heads} exceeds {MODEL_ARGS}memory_slots={memory_slots}: each step"
                    f" writes to the read_heads least-used slots, so give at least {read_heads} slots (or fewer heads)")
        if not (isinstance(usage_decay, (int, float)) and 0.0 <= usage_decay <= 1.0):
            raise ConfigurationError(f"{MODEL_ARGS}usage_decay={usage_decay!r} is invalid: it must lie in [0, 1]")
        if not isinstance(key_strength, bool):
            raise ConfigurationError(f"{MODEL_ARGS}key_strength={key_strength!r} must be true or false")
        instances = list(report_instances)
        for k in instances:
            require_positive(f"{MODEL_ARGS}report_instances entry", k)
        if not isinstance(stream_seed, int) or isinstance(stream_seed, bool):
            raise ConfigurationError(f"{MODEL_ARGS}stream_seed={stream_seed!r} must be an integer")
        self.controller_size = controller_size
        self.report_instances = sorted(set(instances))
        self.summary_names = ("acc", *(f"acc_inst{k}" for k in self.report_instances), "loss")
        self.order_seed = stream_seed
        self.input_shape = input_shape_of(self.embedding, input_shape, MODEL_ARGS + "embedding")
        self.input_features = feature_width(self.embedding, self.input_shape, MODEL_ARGS + "embedding",
                                            forward=self.embed)
        if memory_slots:
            self.memory: Optional[LRUAMemory] = LRUAMemory(memory_slots, memory_width, read_heads, gamma=usage_decay)
            self.read_width = read_heads * memory_width
            self.key_layer: Optional[nn.Linear] = nn.Linear(controller_size, self.read_width)
            self.gate_layer: Optional[nn.Linear] = nn.Linear(controller_size, read_heads)
        else:
            self.memory, self.read_width, self.key_layer, self.gate_layer = None, 0, None, None
        self.strength_layer: Optional[nn.Linear] = (nn.Linear(controller_size, read_heads)
                                                    if memory_slots and key_strength else None)
        self.controller = self.build_controller(self.input_features + ways + self.read_width, controller_size)
        self.output_layer = nn.Linear(controller_size + self.read_width, ways)

    # ------------------------------------------------------------------ hooks
    def build_controller(self, input_size: int, hidden_size: int) -> nn.Module:
        """The controller module, built once in ``__init__`` (default ``nn.LSTMCell``); pair it with
        :meth:`controller_step`."""
        return nn.LSTMCell(input_size, hidden_size)

    def controller_step(self, inputs: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One controller step: ``inputs [B, input_size]`` and its state (``None`` at ``t = 0``) to the
        output ``h [B, controller_size]`` and the next state."""
        h, c = self.controller(inputs, state)
        return h, (h, c)

    # ------------------------------------------------------------------ the network
    def initial_state(self, batch_size: int, reference: Tensor) -> RecurrentState:
        """The state before the first step of ``batch_size`` streams: no controller state, an empty
        memory per stream, no reads (on ``reference``'s device and dtype)."""
        memory = None if self.memory is None else self.memory.initial_state(batch_size, reference.device,
                                                                              reference.dtype)
        return None, memory, reference.new_zeros(batch_size, self.read_width)

    def step(self, inputs: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """One step: ``inputs [B, features + ways]`` (embedding and delayed one-hot label) to the output
        features ``[h_t, r_t]`` ``[B, controller_size + read_width]`` and the next state."""
        controller_state, memory_state, reads = state
        h, controller_state = self.controller_step(torch.cat([inputs, reads.to(inputs.dtype)], -1), controller_state)
        if self.memory is not None:
            heads = self.memory.read_heads
            keys = torch.tanh(self.key_layer(h)).unflatten(-1, (heads, self.memory.width))
            strengths = None if self.strength_layer is None else 1 + F.softplus(self.strength_layer(h))
            read, memory_state = self.memory.step(keys, self.gate_layer(h), memory_state, strengths)
            reads = read.flatten(1)
        return torch.cat([h, reads.to(h.dtype)], -1), (controller_state, memory_state, reads)

    def step_inputs(self, x: Tensor, previous: Tensor) -> Tensor:
        """The controller inputs ``[B, T, features + ways]`` of streams ``x [B, T, ...]`` with the
        previous labels ``previous [B, T]`` (``-1``: none, a zero one-hot)."""
        features = self.embed_episodes(x)
        if features.shape[-1] != self.input_features:
            raise RuntimeError(
                f"inputs of shape {list(x.shape[2:])} give {features.shape[-1]} features but the controller takes"
                f" {self.input_features}, sized for {MODEL_ARGS}input_shape={self.input_shape} (and the embedding)")
        return torch.cat([features, self.label_inputs(previous, features.dtype)], -1)

    def stream_logits(self, x: Tensor, previous: Tensor) -> Tensor:
        """Logits ``[B, T, ways]`` of streams ``x [B, T, ...]`` whose step ``t`` also sees the label
        ``previous[:, t]`` (``-1``: none).  Each stream has its own memory, wiped at its start."""
        inputs = self.step_inputs(x, previous)
        outputs, _ = unroll(self.step, inputs, self.initial_state(inputs.shape[0], inputs))
        return self.output_layer(outputs)

    def forward(self, x: Tensor, previous: Tensor) -> Tensor:
        """:meth:`stream_logits`."""
        return self.stream_logits(x, previous)

    # ------------------------------------------------------------------ streams
    def stream(self, batch: TaskBatch, split: Split) -> LabelStream:
        """The labelled streams of ``batch``: support and query pooled, in the episodes' orders
        (:meth:`~lightning_meta.algorithms.sequence.SequenceLearner.episode_orders` of ``split``)."""
        length = batch.support_x.shape[1] + batch.query_x.shape[1]
        return label_stream(batch, self.episode_orders(batch, length, split))

    def stream_scores(self, logits: Tensor, stream: LabelStream) -> dict[str, Tensor]:
        """Per-episode ``loss``, ``acc`` (all positions) and ``acc_inst{k}`` (k-th presentation of a
        class, for each ``k`` of ``report_instances`` present in every stream)."""
        logits = logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), stream.y.flatten(), reduction="none").view(stream.y.shape)
        correct = (logits.argmax(-1) == stream.y).double()
        return {"loss": loss.mean(1), "acc": correct.mean(1),
                **presentation_accuracy(correct, stream.presentation, self.report_instances)}

    # ------------------------------------------------------------------ training and evaluation
    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        """The whole meta-batch through the network at once: cross-entropy over all positions of all
        streams, one outer step; logs ``train/loss``, ``train/acc`` (all positions) and ``train/acc_inst{k}``."""
        stream = self.stream(batch, "train")
        scores = self.stream_scores(self.stream_logits(stream.x, stream.previous), stream)
        loss = scores["loss"].mean()
        self.outer_step(loss)
        self.log_values("train", {name: value.detach() for name, value in scores.items()}, units=batch.num_tasks)
        return loss.detach()

    def evaluate_tasks(self, batch: TaskBatch) -> dict[str, Tensor]:
        """:meth:`stream_scores` of the streams of ``batch``: ``loss``, ``acc`` and ``acc_inst{k}`` per episode."""
        stream = self.stream(batch, self.evaluation_split())
        with torch.no_grad():
            logits = self.stream_logits(stream.x, stream.previous)[..., :batch.ways]
        return self.stream_scores(logits, stream)

    def instance_names(self, summary: dict[str, Any]) -> list[str]:
        """The ``acc_inst{k}`` names of ``summary``, by ``k``."""
        return [f"acc_inst{k}" for k in self.report_instances if f"acc_inst{k}" in summary]

    def log_results(self, stage: str) -> dict[str, tuple[float, float]]:
        """Also plot the accuracy at the k-th presentation of a class in W&B (a line per stage)."""
        summary = super().log_results(stage)
        names = self.instance_names(summary)
        if names:
            for logger in self.loggers:
                if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                    import wandb

                    table = wandb.Table(columns=["instance", "accuracy", "ci95"],
                                        data=[[int(n[len("acc_inst"):]), *summary[n]] for n in names])
                    logger.experiment.log({f"{stage}/instance_accuracy": wandb.plot.line(
                        table, "instance", "accuracy", title=f"{stage}: accuracy at the k-th presentation of a class")})
        return summary

    # ------------------------------------------------------------------ prediction
    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, None]:
        """Query logits ``[M, ways]`` of one task: the support set as a labelled stream (in
        :meth:`~lightning_meta.algorithms.sequence.SequenceLearner.task_order`), then each query as its own
        one-step continuation of that stream (so a query never sees another query).  Used by
        :meth:`predict_task` and ``predict``."""
        order = self.task_order(len(support_y), support_y.device)
        support_x, support_y = support_x[order], support_y[order]
        previous = torch.cat([support_y.new_full((1,), -1), support_y[:-1]]).unsqueeze(0)
        inputs = self.step_inputs(support_x.unsqueeze(0), previous)
        _, state = unroll(self.step, inputs, self.initial_state(1, inputs))
        queries = len(query_x)
        last = support_y[-1:].expand(queries).unsqueeze(1)
        output, _ = self.step(self.step_inputs(query_x.unsqueeze(1), last)[:, 0], repeat_state(state, queries))
        return self.output_layer(output).detach(), None

    # ------------------------------------------------------------------ checks
    def check_data(self, datamodule: Any, split: str) -> None:
        """Also warn when the ``split`` streams are longer than the memory, or hold fewer instances per
        class than an ``acc_inst{k}`` of ``report_instances`` needs (evaluation splits)."""
        super().check_data(datamodule, split)
        ways, shots, queries = datamodule.setting(split)
        prefix = "" if split == "train" else "test_"
        length, instances = ways * (shots + queries), shots + queries
        if self.memory is not None and length > self.memory.slots:
            rank_zero_warn(f"'{split}' streams have {length} steps but the memory has {self.memory.slots} slots "
                           f"({MODEL_ARGS}memory_slots): least-used slots will be overwritten within a stream")
        missing = [k for k in self.report_instances if k > instances]
        if missing and split != "train":
            rank_zero_warn(f"'{split}' streams hold {instances} instances per class ({prefix}shots + {prefix}"
                           f"queries): {', '.join(f'acc_inst{k}' for k in missing)} will not be reported")
