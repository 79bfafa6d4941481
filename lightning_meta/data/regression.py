"""Regression task families: sinusoids (Finn et al. 2017) and lines, as episodes."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.tasks import Task


def _uniform(generator: torch.Generator, bounds: Sequence[float], shape: tuple[int, ...] = ()) -> torch.Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * torch.rand(shape, generator=generator)


class FunctionTasks:
    """A family of 1-D functions; each task is one function, ``shots`` support and ``queries`` query points.

    Subclasses draw the function's parameters and evaluate it.  Targets are float ``[points, 1]``,
    which is what tells the learners that this is regression.
    """

    num_classes = 1
    min_samples: Optional[int] = None

    def __init__(self, x_range: Sequence[float] = (-5.0, 5.0), noise_std: float = 0.0):
        _check_range("x_range", x_range)
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.x_range, self.noise_std = tuple(x_range), float(noise_std)

    def function(self, generator: torch.Generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, generator: torch.Generator, ways: int, shots: int, queries: int) -> Task:
        f = self.function(generator)
        x = _uniform(generator, self.x_range, (shots + queries, 1))
        y = f(x)
        if self.noise_std:
            y = y + self.noise_std * torch.randn(y.shape, generator=generator)
        return Task(x[:shots], y[:shots], x[shots:], y[shots:])


class SinusoidTasks(FunctionTasks):
    """``y = A sin(x - phase)``, ``A`` in ``amplitude_range``, phase in ``phase_range`` (Finn et al. 2017)."""

    def __init__(self, amplitude_range: Sequence[float] = (0.1, 5.0), phase_range: Sequence[float] = (0.0, math.pi),
                 x_range: Sequence[float] = (-5.0, 5.0), noise_std: float = 0.0):
        super().__init__(x_range, noise_std)
        _check_range("amplitude_range", amplitude_range)
        _check_range("phase_range", phase_range)
        self.amplitude_range, self.phase_range = tuple(amplitude_range), tuple(phase_range)

    def function(self, generator: torch.Generator):
        amplitude = _uniform(generator, self.amplitude_range)
        phase = _uniform(generator, self.phase_range)
        return lambda x: amplitude * torch.sin(x - phase)


class LinearTasks(FunctionTasks):
    """``y = slope * x + intercept``, both drawn uniformly from their ranges."""

    def __init__(self, slope_range: Sequence[float] = (-3.0, 3.0), intercept_range: Sequence[float] = (-3.0, 3.0),
                 x_range: Sequence[float] = (-5.0, 5.0), noise_std: float = 0.0):
        super().__init__(x_range, noise_std)
        _check_range("slope_range", slope_range)
        _check_range("intercept_range", intercept_range)
        self.slope_range, self.intercept_range = tuple(slope_range), tuple(intercept_range)

    def function(self, generator: torch.Generator):
        slope = _uniform(generator, self.slope_range)
        intercept = _uniform(generator, self.intercept_range)
        return lambda x: slope * x + intercept


def _check_range(name: str, bounds: Sequence[float]) -> None:
    if len(bounds) != 2 or not float(bounds[0]) <= float(bounds[1]):
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(bounds)}")


class RegressionDataModule(EpisodicDataModule):
    """Episodes of a 1-D function family: ``shots`` support and ``queries`` query points per task.

    Subclasses say which family (:meth:`tasks`).  There are no classes, so ``ways`` is fixed at 1;
    the other arguments are those of :class:`~lightning_meta.data.EpisodicDataModule`.
    """

    def __init__(self, shots: int = 10, queries: int = 10, test_shots: Optional[int] = None,
                 test_queries: Optional[int] = None, meta_batch_size: int = 25, episodes_per_epoch: int = 2500,
                 val_episodes: int = 100, test_episodes: int = 600, num_workers: int = 0, seed: int = 0):
        super().__init__(ways=1, shots=shots, queries=queries, test_shots=test_shots, test_queries=test_queries,
                         meta_batch_size=meta_batch_size, episodes_per_epoch=episodes_per_epoch,
                         val_episodes=val_episodes, test_episodes=test_episodes, num_workers=num_workers, seed=seed)

    is_regression = True

    def tasks(self) -> FunctionTasks:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_split(self, split: str) -> FunctionTasks:
        return self.tasks()


class SinusoidDataModule(RegressionDataModule):
    """Sinusoid regression of Finn et al. (2017): ``A sin(x - phase)``, A in [0.1, 5], phase in [0, pi],
    x in [-5, 5], 10 support points (``shots``) per task.  Other arguments as
    :class:`RegressionDataModule`.

    Example::

        dm = SinusoidDataModule(shots=10, queries=10, meta_batch_size=25)
    """

    def __init__(self, amplitude_range: Sequence[float] = (0.1, 5.0), phase_range: Sequence[float] = (0.0, math.pi),
                 x_range: Sequence[float] = (-5.0, 5.0), noise_std: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.family = SinusoidTasks(amplitude_range, phase_range, x_range, noise_std)

    def tasks(self) -> FunctionTasks:
        return self.family


class LinearDataModule(RegressionDataModule):
    """Linear regression tasks: ``slope * x + intercept``, both uniform in [-3, 3] by default.  Other
    arguments as :class:`RegressionDataModule`.

    Example::

        dm = LinearDataModule(shots=5, queries=10, noise_std=0.3)
    """

    def __init__(self, slope_range: Sequence[float] = (-3.0, 3.0), intercept_range: Sequence[float] = (-3.0, 3.0),
                 x_range: Sequence[float] = (-5.0, 5.0), noise_std: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.family = LinearTasks(slope_range, intercept_range, x_range, noise_std)

    def tasks(self) -> FunctionTasks:
        return self.family
