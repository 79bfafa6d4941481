"""Toy learners on the root ``Learner`` (not ``MetaLearner``) showing that the planned families fit it,
and the small data they train on.

* :class:`RidgeRegression`: the complete example of ``docs/architecture.md`` ("Add a learner"), run
  from the page's code block as written (so the page and the tests never drift apart);
* :class:`GradientDictRidge`, :class:`LineSearchRidge`: the same learner stepping with gradients given
  as a dict, and with a closure optimizer (LBFGS);
* :class:`TwoGroupRidge`, :class:`OwnOptimizerRidge`: two parameter groups (the features and the
  ridge hyper-parameter), and a learner writing its own ``configure_optimizers`` (the CLI flags are
  then refused);
* :class:`ToyGAN`: a generator and a discriminator, one optimizer and step scheduler each;
* :class:`QuadraticDescent`: batches of seeds only; the training step draws a random quadratic per
  seed and unrolls gradient descent on it, and evaluation reports the "return" (higher is better).

Also :class:`RandomImages`, few-shot episodes of random 8x8 images, and :class:`SeedData`, batches
of seeds (:class:`Seeds`, an ``index [B]``).  Imported by the tests and by ``tests/toy_ddp_check.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from lightning_meta import ClassImages, EpisodicDataModule
from lightning_meta.algorithms.learner import Learner
from lightning_meta.tasks import TaskBatch

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def example_code() -> str:
    """The Python block of ``docs/architecture.md`` that defines its example learner, as written there."""
    blocks = re.findall(r"```python\n(.*?)```", ARCHITECTURE.read_text(), flags=re.S)
    return next(block for block in blocks if "class RidgeRegression(Learner)" in block)


def _example_learner() -> type[Learner]:
    namespace: dict[str, Any] = {"__name__": __name__}  # the class is toy_learners.RidgeRegression (CLI class path)
    exec(compile(example_code(), str(ARCHITECTURE), "exec"), namespace)
    return namespace["RidgeRegression"]


RidgeRegression = _example_learner()


# ---------------------------------------------------------------------- data
class RandomImages(EpisodicDataModule):
    """Few-shot episodes of random ``size x size`` images: 8 classes of 6 images per split."""

    def __init__(self, size: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        self.size = size

    def load_split(self, split: str) -> ClassImages:
        generator = torch.Generator().manual_seed(["train", "val", "test"].index(split))
        images = torch.randint(0, 256, (8, 6, self.size, self.size), generator=generator, dtype=torch.uint8)
        return ClassImages.from_array(images)


@dataclass
class Seeds:
    """A batch that is only seeds: the training step collects its own data from them."""

    index: Tensor

    @classmethod
    def collate(cls, seeds: list[int]) -> "Seeds":
        return cls(torch.tensor(seeds, dtype=torch.long))


class SeedData(pl.LightningDataModule):
    """Batches of ``batch_size`` seeds: ``train`` 0, 1, ... (``train_seeds`` of them), validation and test
    seeds from 10,000 and 20,000, in order.  Under DDP each process takes every other seed (so
    ``batch_size`` is per process); Lightning's own sampler would shuffle the training seeds."""

    def __init__(self, batch_size: int = 4, train_seeds: int = 16, eval_seeds: int = 8):
        super().__init__()
        self.batch_size, self.train_seeds, self.eval_seeds = batch_size, train_seeds, eval_seeds

    def loader(self, first: int, count: int) -> DataLoader:
        seeds = list(range(first, first + count))
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(seeds, trainer.world_size, trainer.global_rank, shuffle=False)
        return DataLoader(seeds, batch_size=self.batch_size, sampler=sampler, collate_fn=Seeds.collate)

    def train_dataloader(self) -> DataLoader:
        return self.loader(0, self.train_seeds)

    def val_dataloader(self) -> DataLoader:
        return self.loader(10_000, self.eval_seeds)

    def test_dataloader(self) -> DataLoader:
        return self.loader(20_000, self.eval_seeds)


def seeded(seed: Tensor) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# ---------------------------------------------------------------------- the outer step, three ways
class GradientDictRidge(RidgeRegression):
    """:class:`RidgeRegression` handing its gradients to ``outer_step`` as a dict (as a ``vmap`` or
    implicit-gradient learner does) instead of its loss."""

    def training_step(self, batch: TaskBatch, batch_idx: int) -> None:
        names, params = zip(*[(name, p) for name, p in self.named_parameters() if p.requires_grad])
        loss = self.query_errors(batch).mean()
        self.outer_step(grads=dict(zip(names, torch.autograd.grad(loss, params))))
        self.log_values("train", {"loss": loss}, units=batch.num_tasks)


class LineSearchRidge(RidgeRegression):
    """:class:`RidgeRegression` trained with LBFGS, whose ``step`` calls a closure to re-evaluate the loss."""

    def make_optimizer(self, group: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(parameters, lr=self.outer_lr, max_iter=4)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> None:
        def closure() -> Tensor:
            self.optimizer().zero_grad()
            return self.backpropagate(self.query_errors(batch).mean())

        self.outer_step(closure=closure)
        self.log_values("train", {"loss": self.query_errors(batch).mean().detach()}, units=batch.num_tasks)


class TwoGroupRidge(RidgeRegression):
    """:class:`RidgeRegression` with the ridge hyper-parameter in a parameter group (an optimizer) of its
    own; one backward pass, then a step of each optimizer."""

    def outer_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"features": list(self.features.parameters()), "ridge": [self.log_ridge]}

    def training_step(self, batch: TaskBatch, batch_idx: int) -> None:
        loss = self.backpropagate(self.query_errors(batch).mean())
        for group in self.optimizer_names:
            self.outer_step(optimizer=group)
        self.log_values("train", {"loss": loss}, units=batch.num_tasks)


class OwnOptimizerRidge(RidgeRegression):
    """:class:`RidgeRegression` building its optimizer in ``configure_optimizers`` (discouraged)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.outer_lr)


# ---------------------------------------------------------------------- two optimizers
class ToyGAN(Learner):
    """A GAN in one dimension: the generator ``mu + sigma z`` learns to imitate N(2, 0.5^2) against a
    small discriminator.  Each seed draws ``samples`` real and noise values; each group has its own
    optimizer and a step scheduler (``StepLR``, ``gamma`` per group).  Evaluation: the gap between
    the generated and the real means of each seed's samples."""

    selection_metric = "mean_gap"
    throughput_unit = "samples"
    #: the StepLR factor of each group's learning rate, per step of that group's optimizer
    gammas = {"generator": 0.5, "discriminator": 0.8}

    def __init__(self, samples: int = 16, **kwargs: Any):
        super().__init__(**kwargs)
        self.samples = samples
        self.generator = nn.Linear(1, 1)
        self.discriminator = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))

    def outer_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.generator.parameters()), "discriminator": list(self.discriminator.parameters())}

    def make_scheduler(self, group: str, optimizer: torch.optim.Optimizer) -> Optional[dict[str, Any]]:
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, self.gammas[group]), "interval": "step"}

    def draws(self, batch: Seeds) -> tuple[Tensor, Tensor]:
        """Real samples and generator noise ``[B, samples, 1]``, each seed's from its own generator."""
        pairs = [torch.randn(2, self.samples, 1, generator=seeded(seed)) for seed in batch.index.cpu()]
        real, noise = torch.stack(pairs).to(self.device).unbind(1)
        return 2 + 0.5 * real, noise

    def training_step(self, batch: Seeds, batch_idx: int) -> None:
        real, noise = self.draws(batch)
        fake = self.generator(noise)
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        self.outer_step(d_loss, optimizer="discriminator")
        with self.toggled_optimizer(self.optimizer("generator")):  # no gradient into the discriminator
            logits = self.discriminator(fake)
            g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            self.outer_step(g_loss, optimizer="generator")
        self.log_values("train", {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}, units=real.numel())

    def evaluate_tasks(self, batch: Seeds) -> dict[str, Tensor]:
        real, noise = self.draws(batch)
        return {"mean_gap": (self.generator(noise) - real).mean((1, 2)).abs()}


# ---------------------------------------------------------------------- data collected in the step
class QuadraticDescent(Learner):
    """Learns the start and the step size of ``steps`` steps of gradient descent on random quadratics.

    A batch is only seeds; each draws ``f(x) = a/2 |x - c|^2`` (``a`` in [0.5, 2], ``c`` uniform in
    [-1, 3]^2) inside the step, and the learner's unrolled descent on it is scored by its return ``-f(x_T)``:
    higher is better (``selection_mode = "max"``).
    """

    selection_metric = "return"
    selection_mode = "max"
    throughput_unit = "episodes"

    def __init__(self, steps: int = 3, **kwargs: Any):
        super().__init__(**kwargs)
        self.steps = steps
        self.start = nn.Parameter(torch.zeros(2))
        self.log_step_size = nn.Parameter(torch.tensor(-3.0))

    def returns(self, batch: Seeds) -> Tensor:
        """``-f(x_T)`` per seed ``[B]`` after the unrolled descent (differentiable w.r.t. the parameters)."""
        draws = torch.stack([torch.rand(3, generator=seeded(seed)) for seed in batch.index.cpu()]).to(self.device)
        curvature = 0.5 + 1.5 * draws[:, 0]
        centre = 4 * draws[:, 1:] - 1
        x = self.start.expand_as(centre)
        for _ in range(self.steps):
            x = x - self.log_step_size.exp() * curvature[:, None] * (x - centre)
        return -(curvature / 2) * ((x - centre) ** 2).sum(1)

    def training_step(self, batch: Seeds, batch_idx: int) -> None:
        returns = self.returns(batch)
        self.outer_step(-returns.mean())
        self.log_values("train", {"return": returns.mean()}, units=len(returns), prog_bar=("return",))

    def evaluate_tasks(self, batch: Seeds) -> dict[str, Tensor]:
        return {"return": self.returns(batch)}
