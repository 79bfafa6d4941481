"""MetaGAN (Zhang, Che, Ghahramani, Bengio, Song, NeurIPS 2018): a few-shot classifier that also tells real
images from the fakes of a task-conditioned generator.

The wrapped few-shot learner is the discriminator.  Its ``N`` class logits ``l_k`` of a task become
``N + 1`` classes without a new head: the fake class takes a logit fixed at 0 (Salimans et al. 2016,
"Improved techniques for training GANs", Sec. 5), so

    p(real | x) = Z / (Z + 1),   Z = sum_k exp(l_k + b),

with ``b`` a learned offset (distance logits such as ProtoNet's ``-||q - c||^2`` sit far below 0; the offset
moves the real/fake boundary without touching the class probabilities, which a softmax over the ``l_k``
alone gives).

Losses (the paper's Sec. 3 as we read it, in Salimans et al.'s semi-supervised form, which it builds on):

* discriminator, per task: ``L_D = L_supervised + adversarial_weight * L_real/fake`` with
  ``L_supervised`` the wrapped learner's own loss of the real queries given the real support set
  (cross-entropy over the ``N`` classes, i.e. ``-log p(y | x, real)``; a Relation Network's MSE) and
  ``L_real/fake = -mean_real log p(real | x) - mean_fake log p(fake | G(z, T))``;
* generator, per task: feature matching, ``|| mean_real f(x) - mean_fake f(G(z, T)) ||^2`` with ``f`` the
  discriminator's features (the backbone's ``features`` for MAML, the embedding for metric learners), in
  place of ``-log p(real | G(z, T))``, as the paper does following Salimans et al.  The real minibatch is the
  task's support set and ``matching_queries`` queries per class (default: as many as ``query_fakes``), so a
  1-shot task matches as many real as fake images per class.  Salimans et al.'s code also feeds the
  generator's step a real minibatch of its own (a second permutation of the unlabelled data), not the one the
  discriminator saw; here the smaller batch keeps the generator's step at 40% of the discriminator's work
  (benchmarks/README.md: MetaGAN step).  ``matching_queries`` equal to the queries uses the whole task.

The paper's full method section could not be read here (only its abstract was reachable); the forms above
are Salimans et al.'s, which MetaGAN states it follows.  The paper's tables were not checked either: no
MetaGAN figure is quoted in this module.

Where the fakes go (defaults ``support_fakes=1`` and ``query_fakes=3`` per class):

* MAML family (MAML, ANIL, Meta-SGD), as the paper's MetaGAN+MAML: the inner loop descends ``L_D`` on the
  support set and the support fakes, the meta-loss is ``L_D`` of the adapted weights on the queries and the
  query fakes.  Evaluation adapts the same way (the generator is part of the model), so ``test/acc`` is
  MetaGAN's; the plain learner's is a separate run.
* Metric learners (ProtoNet, Matching, Relation): the real support set makes the classifier; the real
  queries and every fake are scored.  With ``augment_support=True`` the support fakes instead join the support
  set labelled with the class they were drawn for (training and evaluation), the issue's "augment the support
  set of any metric learner with generated images".
* A Relation Network's outputs are relation logits whose sigmoids are independent scores in ``[0, 1]``: we use
  ``l_k = log sigmoid(r_k)`` (the log scores, the logits its evaluation reports), so ``Z = sum_k s_k + ...``:
  an image is real when its relation scores add up (with the offset) to more than 1.  Its supervised loss stays
  the paper's MSE.

Real and fake images of a task share each forward pass through the discriminator (one BatchNorm batch), in the
inner loop, the meta-loss, feature matching and evaluation alike; a metric learner's running statistics are then
those of the mixture it trains on, which evaluation in ``eval()`` mode uses.  (Measured first, fakes embedded apart:
in a training-mode pass of their own, their own batch statistics hid what tells them apart; in ``eval()`` mode beside
training-mode real images, the discriminator learnt the normalisation gap: real/fake accuracy 1.0 in training, 0.5 at
evaluation.)  The generator's step leaves the running statistics as they were.

Training alternates, each step: the discriminator's update on ``L_D`` (fakes detached) through
``outer_step(optimizer="discriminator")``, then the generator's on the feature-matching loss (discriminator
frozen by ``toggled_optimizer``) through ``outer_step(optimizer="generator")``; one task's graph at a time.
Each update reaches one group only, which DDP's reducer (it expects every parameter in each backward) would refuse
without ``find_unused_parameters``: the learner takes the gradients itself (``torch.autograd.grad``), averages them
over the processes in one collective per optimizer step (:meth:`all_reduce_mean`) and hands them to
``outer_step(all_reduced=True)``, so plain ``strategy: ddp`` trains (not under ``16-mixed``, whose loss scaling
that path bypasses: use ``32-true`` or ``bf16-mixed``).  Noise is drawn per episode
from a generator seeded by ``(noise_seed, epoch, episode index)``, so 2 processes draw what 1 process draws.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.algorithms.relation import RelationNetwork
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.inner_loop import Graph, Params, adapt, sub_params
from lightning_meta.models.backbone import build_module
from lightning_meta.models.generator import TaskConditionedGenerator
from lightning_meta.tasks import TaskBatch

__all__ = ["MetaGAN", "real_fake_loss", "real_probability", "feature_matching_loss"]


# ---------------------------------------------------------------------------------------- the N+1 classes
def log_z(logits: Tensor, offset: Union[Tensor, float] = 0.0) -> Tensor:
    """``log Z = logsumexp_k(l_k) + offset`` per row: the log-odds of real against the fake class (logit 0)."""
    return torch.logsumexp(logits, dim=-1) + offset


def real_probability(logits: Tensor, offset: Union[Tensor, float] = 0.0) -> Tensor:
    """``p(real | x) = Z / (Z + 1)`` per row of class logits ``[n, N]``."""
    return torch.sigmoid(log_z(logits, offset))


def real_fake_loss(real_logits: Tensor, fake_logits: Tensor, offset: Union[Tensor, float] = 0.0) -> Tensor:
    """``-mean log p(real | real) - mean log p(fake | fake)``, with ``log(Z/(Z+1)) = -softplus(-log Z)`` and
    ``log(1/(Z+1)) = -softplus(log Z)`` (stable for any logit)."""
    return F.softplus(-log_z(real_logits, offset)).mean() + F.softplus(log_z(fake_logits, offset)).mean()


def feature_matching_loss(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """``|| mean f(real) - mean f(fake) ||^2`` (Salimans et al. 2016) over flattened features."""
    return (real_features.flatten(1).mean(0) - fake_features.flatten(1).mean(0)).pow(2).sum()


@contextlib.contextmanager
def discarded_running_stats(module: nn.Module) -> Iterator[None]:
    """Forward passes in the block leave the BatchNorm running statistics as they were: momentum 0 (the
    running values are kept exactly, and stay valid for autograd, which saves them) and the counters restored."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class MetaGAN(MetaLearner):
    """MetaGAN around an episodic few-shot learner (see the module docstring for the losses and choices).

    Args:
        learner: the wrapped learner, the discriminator: a MAML-family learner (``MAML``, ``ANIL``,
            ``MetaSGD``) or a metric learner whose loss is computed from class logits (``PrototypicalNetwork``,
            ``MatchingNetwork``, ``RelationNetwork``), or its ``{"class_path", "init_args"}``.
        generator: the task-conditioned generator, e.g. ``TaskConditionedGenerator(in_channels=1,
            image_size=28)``; ``None``: no generator, no fake class: exactly the wrapped learner.
        support_fakes: fakes per class drawn for the support set (MAML: adapted on; metric learners: scored,
            or added to the support set with ``augment_support``).
        query_fakes: fakes per class scored with the queries.
        adversarial_weight: weight of the real/fake loss in the discriminator's loss.
        generator_lr: Adam learning rate of the generator (default ``outer_lr``); betas (0.5, 0.999).
        augment_support: metric learners only: the support fakes join the support set, labelled with their class.
            Measured once (hanzi 5-way 1-shot, ProtoNet Conv4-32, 100 batches of 2 episodes, 200 test episodes): it
            hurts, 0.5395 against 0.8015 without it and 0.8324 for plain ProtoNet (real/fake accuracy 0.39: the
            query fakes sit near prototypes built partly from fakes).
        matching_queries: real queries per class in the generator's feature-matching batch, beside the whole
            support set; ``None``: ``query_fakes`` of them (at most the episode's queries).  A number above the
            queries the data serve is refused before training.
        noise_seed: seed of the per-episode noise.
        Remaining arguments (``outer_lr``: the discriminator's Adam rate, ``gradient_clip_val``,
        ``accumulate_grad_batches``): see :class:`~lightning_meta.algorithms.learner.Learner`.

    Logged: ``train/loss`` (the discriminator's), ``train/acc``, ``train/g_loss``, ``train/real_fake_acc``; at
    validation and test ``acc``, ``loss`` (and MAML's ``*_before``) and ``real_fake_acc``: the balanced accuracy of
    ``p(real) > 1/2`` over the real queries and the task's fakes.

    Reference:
        Zhang, Che, Ghahramani, Bengio, Song. "MetaGAN: An Adversarial Approach to Few-Shot Learning."
        NeurIPS 2018.  Salimans et al. "Improved Techniques for Training GANs." NeurIPS 2016.

    Example::

        from lightning_meta import MAML
        from lightning_meta.models import Conv4
        from lightning_meta.models.generator import TaskConditionedGenerator

        model = MetaGAN(MAML(Conv4(1, 5, hidden_channels=32), inner_lr=0.4),
                        TaskConditionedGenerator(in_channels=1, image_size=28), outer_lr=1e-3)
        pl.Trainer(max_steps=400, inference_mode=False).fit(model, NpzDataModule("hanzi", ways=5, shots=1))
    """

    has_batching_choice = False
    fractions = ("acc", "real_fake_acc")

    def __init__(
        self,
        learner: Union[MetaLearner, dict],
        generator: Optional[Union[TaskConditionedGenerator, dict]] = None,
        support_fakes: int = 1,
        query_fakes: int = 3,
        adversarial_weight: float = 1.0,
        generator_lr: Optional[float] = None,
        offset_lr: float = 0.1,
        augment_support: bool = False,
        matching_queries: Optional[int] = None,
        noise_seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        learner = build_module(learner)
        self.family = learner_family(learner)
        require_positive(MODEL_ARGS + "support_fakes", support_fakes, allow_zero=True)
        require_positive(MODEL_ARGS + "query_fakes", query_fakes, allow_zero=True)
        require_positive(MODEL_ARGS + "adversarial_weight", adversarial_weight, allow_zero=True, integer=False)
        if generator_lr is not None:
            require_positive(MODEL_ARGS + "generator_lr", generator_lr, integer=False)
        require_positive(MODEL_ARGS + "offset_lr", offset_lr, integer=False)
        if matching_queries is not None:
            require_positive(MODEL_ARGS + "matching_queries", matching_queries, allow_zero=True)
        if self.family == "maml" and getattr(learner, "multi_step_loss", False):
            raise ConfigurationError(f"{MODEL_ARGS}learner.init_args.multi_step_loss=true: MetaGAN scores the adapted"
                                     " weights only; set it to false")
        self.learner = learner
        self.generator = None if generator is None else build_module(generator)
        if self.generator is not None and support_fakes + query_fakes == 0:
            raise ConfigurationError(f"{MODEL_ARGS}support_fakes and query_fakes are both 0: the generator would draw"
                                     " nothing; give query_fakes >= 1 (e.g. 3), or set generator to null")
        if augment_support and (self.family != "metric" or self.generator is None or support_fakes == 0):
            raise ConfigurationError(
                f"{MODEL_ARGS}augment_support=true needs a metric learner, a generator and support_fakes >= 1 "
                f"(learner {type(learner).__name__}, support_fakes {support_fakes}); set it to false")
        self.support_fakes, self.query_fakes = support_fakes, query_fakes
        self.adversarial_weight = float(adversarial_weight)
        self.generator_lr = generator_lr
        self.offset_lr = float(offset_lr)
        self.augment_support = augment_support
        self.matching_queries = matching_queries
        self.noise_seed = noise_seed
        # the fake class's logit offset; only with a generator (a parameter no loss reaches would stall DDP)
        self.fake_offset = nn.Parameter(torch.zeros(())) if self.generator is not None else None
        # set once, at the first training batch, so that a typical real query starts at p(real) = 1/2
        self.register_buffer("offset_initialised", torch.tensor(self.generator is None))
        self.evaluation_needs_grad = self.family == "maml"
        self.hparams["learner"] = {"class_path": f"{type(learner).__module__}.{type(learner).__qualname__}",
                                   "init_args": dict(learner.hparams)}

    # ------------------------------------------------------------------ optimizers
    def outer_parameters(self) -> dict[str, list[nn.Parameter]]:
        """One group (``model``) without a generator; else ``discriminator`` (the learner and the offset) and
        ``generator``."""
        if self.generator is None:
            return super().outer_parameters()
        return {"discriminator": [*self.learner.parameters(), self.fake_offset],
                "generator": list(self.generator.parameters())}

    def make_optimizer(self, group: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam: the generator at ``generator_lr`` with betas (0.5, 0.999) (DCGAN's); the discriminator at
        ``outer_lr``, its fake-class offset at ``offset_lr`` (distance logits move by tens; ``--optimizer``
        replaces both with one rate)."""
        if group == "generator":
            return torch.optim.Adam(parameters, lr=self.generator_lr or self.outer_lr, betas=(0.5, 0.999))
        if group == "discriminator":
            rest = [p for p in parameters if p is not self.fake_offset]
            return torch.optim.Adam([{"params": rest}, {"params": [self.fake_offset], "lr": self.offset_lr}],
                                    lr=self.outer_lr)
        return torch.optim.Adam(parameters, lr=self.outer_lr)

    def initialise_offset(self, batch: TaskBatch) -> None:
        """At the first training batch: ``offset = -mean log Z`` of the real queries of the batch (mean over the
        processes), the real/fake boundary at a typical real query.  Distance logits (``-||q - c||^2``) start tens
        below 0, where a zero offset would call every image fake and the gradient of the offset alone would take
        thousands of steps to get there."""
        values = []
        with torch.no_grad(), discarded_running_stats(self.learner):
            for i in range(batch.num_tasks):
                task = batch[i]
                if self.family == "maml":
                    outputs = self.learner.evaluate_task(*task)[0]
                else:
                    outputs = self.learner.task_logits(self.learner.embed(task.support_x), task.support_y,
                                                       self.learner.embed(task.query_x))
                values.append(log_z(self.class_logits(outputs)).mean())
            mean = self.all_reduce_mean(torch.stack(values).mean())
            if not torch.isfinite(mean):  # a non-finite batch stops at the loss check with the weights unchanged
                return
            self.fake_offset.fill_(-float(mean))
        self.offset_initialised.fill_(True)

    # ------------------------------------------------------------------ fakes
    def episode_noise(self, index: int, count: int, stage: str) -> Tensor:
        """Noise ``[count, noise_dim]`` of one episode, from ``(noise_seed, epoch, index)`` (evaluation: no epoch)."""
        epoch = self.current_epoch if stage == "train" else -1
        seed = hash((self.noise_seed, epoch, int(index))) & 0x7FFF_FFFF_FFFF
        noise = torch.randn(count, self.generator.noise_dim, generator=torch.Generator().manual_seed(seed))
        return noise.to(self.device)

    def fakes(self, support_x: Tensor, support_y: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(support fakes, their classes, query fakes)`` of one task from its noise."""
        ways = int(support_y.max()) + 1
        classes = torch.arange(ways, device=support_y.device)
        classes = torch.cat([classes.repeat_interleave(self.support_fakes), classes.repeat_interleave(self.query_fakes)])
        images = self.generator(support_x, support_y, classes, noise[: len(classes)])
        split = ways * self.support_fakes
        return images[:split], classes[:split], images[split:]

    def fake_count(self, ways: int) -> int:
        return ways * (self.support_fakes + self.query_fakes)

    # ------------------------------------------------------------------ the discriminator's task losses
    def class_logits(self, outputs: Tensor) -> Tensor:
        """The ``N`` class logits of the wrapped learner's outputs (a Relation Network's: log relation scores)."""
        return F.logsigmoid(outputs) if isinstance(self.learner, RelationNetwork) else outputs

    def maml_task(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor, fake_support: Tensor,
                  fake_query: Tensor, steps: int, graph: Graph) -> tuple[Tensor, list[Params], Any]:
        """Adapt on ``L_D`` of the support set and its fakes: ``(offset, trajectory, score)`` where
        ``score(weights) -> (real query outputs, fake query outputs)``.  Real and fake images share each forward
        pass (one BatchNorm batch), in the inner loop, the meta-loss and evaluation alike."""
        learner = self.learner
        learner_params = sub_params(params, "learner")
        offset = params["fake_offset"] if graph != "none" else params["fake_offset"].detach()
        fast, forward, support_in, query_in = learner.prepare_task(
            sub_params(learner_params, "backbone"), torch.cat([support_x, fake_support]),
            torch.cat([query_x, fake_query]))
        shots, queries = len(support_x), len(query_x)

        def support_loss(p: Params, step: int) -> Tensor:
            outputs = forward(p, support_in)
            loss = learner.inner_loss(outputs[:shots], support_y)
            if len(outputs) > shots:
                loss = loss + self.adversarial_weight * real_fake_loss(outputs[:shots], outputs[shots:], offset)
            return loss

        def score(p: Params) -> tuple[Tensor, Tensor]:
            outputs = forward(p, query_in)
            return outputs[:queries], outputs[queries:]

        trajectory = adapt(support_loss, fast, steps, learner.inner_update(learner_params), graph,
                           self.inner_loss_scale)
        return offset, trajectory, score

    def metric_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, fake_support: Tensor,
                    fake_classes: Tensor, fake_query: Tensor) -> tuple[Tensor, Tensor]:
        """``(real query outputs, fake outputs)`` of a metric learner: the real support set (plus the labelled
        support fakes with ``augment_support``) makes the classifier.  Real and fake images are embedded in one
        pass (one BatchNorm batch in training, so the running statistics are those of the mixture it trains on)."""
        learner = self.learner
        real = len(support_x) + len(query_x)
        features = learner.embed(torch.cat([support_x, query_x, fake_support, fake_query]))
        support_features, query_features = features[: len(support_x)], features[len(support_x): real]
        fake_features = features[real:]
        labels = support_y
        if self.augment_support:
            support_features = torch.cat([support_features, fake_features[: len(fake_support)]])
            labels = torch.cat([support_y, fake_classes])
            fake_features = fake_features[len(fake_support):]
        state = learner.support_state(support_features, labels, int(support_y.max()) + 1)
        return learner.classify(state, query_features), learner.classify(state, fake_features)

    def discriminator_objective(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                                query_y: Tensor, fakes: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """One task's ``L_D``, its real query outputs and its real/fake balanced accuracy."""
        fake_support, fake_classes, fake_query = fakes
        if self.family == "maml":
            graph: Graph = "first_order" if self.learner.uses_first_order else "second_order"
            offset, trajectory, score = self.maml_task(params, support_x, support_y, query_x, fake_support, fake_query,
                                                       self.learner.inner_steps, graph)
            outputs, fake_outputs = score(trajectory[-1])
            supervised = self.learner.query_loss(outputs, query_y)
        else:
            offset = params["fake_offset"]
            outputs, fake_outputs = self.metric_task(support_x, support_y, query_x, fake_support, fake_classes,
                                                     fake_query)
            supervised = self.learner.task_loss(outputs, query_y)
        real, fake = self.class_logits(outputs), self.class_logits(fake_outputs)
        loss = supervised + self.adversarial_weight * real_fake_loss(real, fake, offset)
        return loss, outputs, real_fake_accuracy(real.detach(), fake.detach(), offset.detach())

    # ------------------------------------------------------------------ training
    def training_objective(self, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor) -> tuple[Tensor, Tensor]:
        """Without a generator: the wrapped learner's objective on its own parameters (with one, the training
        step runs :meth:`discriminator_objective`, which needs each episode's noise)."""
        return self.learner.training_objective(sub_params(params, "learner"), support_x, support_y, query_x, query_y)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        if self.generator is None:
            return super().training_step(batch, batch_idx)
        if not bool(self.offset_initialised):
            self.initialise_offset(batch)
        tasks = [batch[i] for i in range(batch.num_tasks)]
        count = len(tasks)
        noises = [self.episode_noise(int(batch.index[i]) if batch.index is not None else i,
                                     self.fake_count(int(task.support_y.max()) + 1), "train")
                  for i, task in enumerate(tasks)]
        params = self.meta_parameters()
        groups = self.parameter_names()
        losses, predictions, accuracies = [], [], []
        d_grads: dict[str, Tensor] = {}
        # each task's fakes are drawn once, with the generator's graph: constants for the discriminator (detached),
        # and the same images for the generator's step, which the discriminator's update does not change
        drawn = [self.fakes(task.support_x, task.support_y, noises[i]) for i, task in enumerate(tasks)]
        for i, task in enumerate(tasks):  # the discriminator: fakes are constants
            fakes = tuple(t.detach() for t in drawn[i])
            loss, outputs, accuracy = self.discriminator_objective(params, *task, fakes)
            losses.append(self.task_gradients(loss, params, groups["discriminator"], d_grads, count))
            predictions.append(outputs.detach())
            accuracies.append(accuracy)
        self.outer_step(grads=self.all_reduce_mean(d_grads), all_reduced=True, optimizer="discriminator")
        g_losses = []
        g_grads: dict[str, Tensor] = {}
        with self.toggled_optimizer(self.optimizer("generator")):  # no gradient into the discriminator
            g_params = {name: p for name, p in self.named_parameters() if name in groups["generator"]}
            for i, task in enumerate(tasks):
                fake_support, _, fake_query = drawn[i]
                g_loss = self.generator_objective(self.matching_reals(task.support_x, task.query_x, task.query_y),
                                                  torch.cat([fake_support, fake_query]))
                g_losses.append(self.task_gradients(g_loss, g_params, groups["generator"], g_grads, count))
            self.outer_step(grads=self.all_reduce_mean(g_grads), all_reduced=True, optimizer="generator")
        losses_t = torch.stack(losses)
        self.log_training(batch, losses_t, torch.stack(predictions))
        self.log_values("train", {"g_loss": torch.stack(g_losses).mean(), "real_fake_acc": torch.stack(accuracies)})
        return losses_t.mean()

    def parameter_names(self) -> dict[str, list[str]]:
        """The parameter names of each optimizer's group (``discriminator``, ``generator``)."""
        names = {id(p): name for name, p in self.named_parameters()}
        return {group: [names[id(p)] for p in parameters] for group, parameters in self.outer_parameters().items()}

    def task_gradients(self, loss: Tensor, params: dict[str, Tensor], names: list[str], total: dict[str, Tensor],
                       count: int) -> Tensor:
        """Add the gradient of ``loss / count`` w.r.t. the parameters ``names`` (zeros where it does not reach) to
        ``total``; returns ``loss`` detached (a non-finite loss raises before any weight moves).

        The learner takes its gradients with ``torch.autograd.grad`` and averages them over the processes itself
        (:meth:`all_reduce_mean`, then ``outer_step(all_reduced=True)``), so DDP's reducer, which expects every
        parameter in each backward pass, never runs: the alternating updates reach one group each, and plain
        ``strategy: ddp`` needs no ``find_unused_parameters``."""
        detached = loss.detach()
        self.check_finite(detached)
        inputs = [params[name] for name in names]
        grads = torch.autograd.grad(loss / count, inputs, allow_unused=True)
        for name, p, g in zip(names, inputs, grads):
            g = torch.zeros_like(p) if g is None else g.detach()
            total[name] = g if name not in total else total[name] + g
        return detached

    def matching_reals(self, support_x: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """The real minibatch of feature matching: the support set, then the first ``matching_queries`` queries
        of each class (``query_fakes`` if unset), classes in order."""
        per_class = self.query_fakes if self.matching_queries is None else self.matching_queries
        ways = int(query_y.max()) + 1
        if per_class * ways >= len(query_x):
            return torch.cat([support_x, query_x])
        rows = torch.cat([(query_y == c).nonzero().flatten()[:per_class] for c in range(ways)])
        return torch.cat([support_x, query_x[rows]])

    def discriminator_features(self, x: Tensor) -> Tensor:
        """``f`` of feature matching: the MAML backbone's ``features`` (its logits if it has none) at the
        meta-parameters, or the metric learner's embedding."""
        if self.family == "metric":
            return self.learner.embed(x).flatten(1)
        backbone = self.learner.backbone
        return (backbone.features(x) if hasattr(backbone, "features") else backbone(x)).flatten(1)

    def generator_objective(self, real: Tensor, fakes: Tensor) -> Tensor:
        """Feature matching of one task's fakes to its real minibatch (:meth:`matching_reals`).

        The real features are computed again here, not reused from the discriminator's step: Salimans et al.'s
        feature matching takes ``f`` of real data with the discriminator being trained against, i.e. after its
        update (their code evaluates a real minibatch in the generator's step), and here real and fake images share
        one BatchNorm batch, so the real rows depend on the fakes' statistics too.  The discriminator step's
        features (weights before the update, inner-loop weights for MAML) would be a different loss."""
        with discarded_running_stats(self.learner):  # one pass, as the discriminator saw them; statistics unmoved
            features = self.discriminator_features(torch.cat([real, fakes]))
        return feature_matching_loss(features[: len(real)].detach(), features[len(real):])

    # ------------------------------------------------------------------ evaluation
    def evaluate_task(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      query_y: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """The wrapped learner's evaluation of one task (also what ``predict`` uses); with a generator,
        :meth:`evaluate_batch` evaluates with each episode's fakes instead."""
        return self.learner.evaluate_task(support_x, support_y, query_x, query_y)

    def evaluate_batch(self, batch: TaskBatch) -> tuple[Tensor, Optional[Tensor]]:
        after, before, _ = self.evaluate_with_fakes(batch)
        return after, before

    def evaluate_tasks(self, batch: TaskBatch) -> dict[str, Tensor]:
        """The wrapped learner's values and, with a generator, ``real_fake_acc`` per task."""
        if self.generator is None:
            return super().evaluate_tasks(batch)
        after, before, accuracy = self.evaluate_with_fakes(batch)
        values = episode_values(after, before, batch.query_y)
        values["real_fake_acc"] = accuracy
        return values

    def evaluate_with_fakes(self, batch: TaskBatch) -> tuple[Tensor, Optional[Tensor], Tensor]:
        """Query outputs after (and before) adaptation and the real/fake accuracy of every task, each episode
        with its own fakes (MAML adapts on them as in training; metric learners score them, and with
        ``augment_support`` add the support fakes to the support set)."""
        if self.generator is None:
            after, before = super().evaluate_batch(batch)
            return after, before, torch.full((batch.num_tasks,), float("nan"), device=self.device)
        params = {name: p.detach() for name, p in self.named_parameters()}
        afters, befores, accuracies = [], [], []
        for i in range(batch.num_tasks):
            task = batch[i]
            index = int(batch.index[i]) if batch.index is not None else i
            noise = self.episode_noise(index, self.fake_count(int(task.support_y.max()) + 1), "eval")
            with torch.no_grad():
                fake_support, fake_classes, fake_query = self.fakes(task.support_x, task.support_y, noise)
            if self.family == "maml":
                offset, trajectory, score = self.maml_task(
                    params, task.support_x, task.support_y, task.query_x, fake_support, fake_query,
                    self.learner.test_inner_steps, "none")
                with torch.no_grad():
                    after, fake = score(trajectory[-1])
                    befores.append(score(trajectory[0])[0])
            else:
                offset = params["fake_offset"]
                with torch.no_grad():
                    after, fake = self.metric_task(task.support_x, task.support_y, task.query_x, fake_support,
                                                   fake_classes, fake_query)
            after = self.class_logits(after)  # a Relation Network's log relation scores, as it evaluates
            afters.append(after)
            accuracies.append(real_fake_accuracy(after, self.class_logits(fake), offset))
        before = torch.stack(befores) if befores else None
        return torch.stack(afters), before, torch.stack(accuracies)

    # ------------------------------------------------------------------ checks
    def probe(self, x: Tensor) -> Optional[Tensor]:
        return self.learner.probe(x)

    def check_data(self, datamodule: Any, split: str) -> None:
        """The wrapped learner's checks, then: class labels (not regression targets), and images of the shape the
        generator draws."""
        super().check_data(datamodule, split)
        ways, shots, queries = datamodule.setting(split)
        task = datamodule.source(split).sample(torch.Generator().manual_seed(0), ways, shots, queries)
        if task.support_y.is_floating_point():
            raise ConfigurationError(
                "MetaGAN adds a fake class to the learner's class logits, but the data are regression targets: use a"
                " data module of classes (model.init_args.learner outputs no logits here)")
        if split == "train" and self.matching_queries is not None and self.matching_queries > queries:
            raise ConfigurationError(
                f"{MODEL_ARGS}matching_queries={self.matching_queries} but the training episodes have {queries} queries"
                f" per class: give at most {queries} (data.init_args.queries)")
        if self.generator is not None and tuple(task.support_x.shape[1:]) != tuple(self.generator.image_shape):
            raise ConfigurationError(
                f"the data's images are {list(task.support_x.shape[1:])} but the generator draws "
                f"{list(self.generator.image_shape)}: set {MODEL_ARGS}generator.init_args.in_channels and image_size"
                " to the data's")


def real_fake_accuracy(real_logits: Tensor, fake_logits: Tensor, offset: Union[Tensor, float] = 0.0) -> Tensor:
    """Balanced accuracy of ``p(real) > 1/2``: the mean of the real images' and the fakes' accuracies."""
    real = (log_z(real_logits, offset) > 0).float().mean()
    fake = (log_z(fake_logits, offset) <= 0).float().mean()
    return (real + fake) / 2


def episode_values(after: Tensor, before: Optional[Tensor], query_y: Tensor) -> dict[str, Tensor]:
    """``acc`` and ``loss`` per episode (and ``*_before``), as :meth:`MetaLearner.evaluate_tasks` reports them."""
    from lightning_meta.metrics import episode_scores

    values = episode_scores(after, query_y)
    if before is not None:
        values.update({f"{name}_before": v for name, v in episode_scores(before, query_y).items()})
    return values


def learner_family(learner: nn.Module) -> str:
    """``"maml"`` or ``"metric"``; any other learner is refused in one line."""
    if isinstance(learner, MAML):
        return "maml"
    if isinstance(learner, MetricLearner) and type(learner).episode_loss is MetricLearner.episode_loss:
        return "metric"
    raise ConfigurationError(
        f"{MODEL_ARGS}learner={type(learner).__name__}: MetaGAN needs a learner whose query outputs are N class "
        "logits: MAML, ANIL, MetaSGD, PrototypicalNetwork, MatchingNetwork or RelationNetwork")
