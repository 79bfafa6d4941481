"""Checks the meta-RL learners run before training: the data are environment tasks and the policy fits them.

A policy that does not fit its family (an observation or action size, a Gaussian on discrete actions, a
feed-forward policy for RL²) would otherwise fail deep inside the first rollout, with a shape error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_meta.envs.family import TaskFamily
from lightning_meta.errors import ConfigurationError
from lightning_meta.models.distributions import Categorical, DiagonalGaussian


def require_discount(field: str, value: float) -> None:
    """A discount or GAE parameter lies in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigurationError(f"{field}={value!r} is invalid: it must lie in (0, 1], e.g. 0.99")


def check_env_data(learner: Any, datamodule: Any) -> None:
    """The data module serves environment tasks (it has a task family)."""
    if not isinstance(getattr(datamodule, "family", None), TaskFamily):
        raise ConfigurationError(
            f"data: {type(learner).__name__} learns from environment tasks, but {type(datamodule).__name__} serves"
            " none; use data.class_path: lightning_meta.data.EnvTaskDataModule with a family such as"
            " lightning_meta.envs.Navigation2D")


def family_actions(family: TaskFamily) -> str:
    return f"{family.num_actions} discrete actions" if family.discrete else f"{family.action_size}-d continuous actions"


def check_policy(policy: nn.Module, family: TaskFamily, field: str, recurrent: bool) -> None:
    """Raise :class:`ConfigurationError` naming ``field`` unless ``policy`` takes the family's observations
    (with RL²'s extra inputs when ``recurrent``) and returns a distribution over its actions."""
    name = type(policy).__name__
    is_recurrent = hasattr(policy, "initial_hidden")
    if recurrent and not is_recurrent:
        raise ConfigurationError(f"{field}: {name} is feed-forward, but RL2 keeps a hidden state across a trial's"
                                 " episodes: use lightning_meta.models.GRUPolicy")
    if not recurrent and is_recurrent:
        raise ConfigurationError(f"{field}: {name} is recurrent; this learner adapts a feed-forward policy: use"
                                 " GaussianMLPPolicy or CategoricalMLPPolicy")
    parameter = next(policy.parameters())
    width = family.observation_size
    if recurrent:
        width += max(family.num_actions, family.action_size) + 2
    probe = torch.zeros(1, width, dtype=parameter.dtype, device=parameter.device)
    try:
        with torch.no_grad():
            output = policy(probe, policy.initial_hidden((1,))) if recurrent else policy(probe)
    except RuntimeError as error:
        raise ConfigurationError(
            f"{field}: {name} does not take {type(family).__name__}'s inputs of size {width}"
            f" ({family.observation_size} observation values{' + previous action, reward, done' if recurrent else ''}):"
            f" set its observation_size to {family.observation_size} ({str(error).splitlines()[0]})") from None
    distribution = output[0] if recurrent else output
    if family.discrete:
        if not isinstance(distribution, Categorical):
            raise ConfigurationError(f"{field}: {name} gives {type(distribution).__name__} actions, but"
                                     f" {type(family).__name__} takes {family_actions(family)}: use a categorical"
                                     " policy"
                                     " (CategoricalMLPPolicy, or GRUPolicy with num_actions)")
        size = distribution.logits.shape[-1]
        wanted = family.num_actions
    else:
        if not isinstance(distribution, DiagonalGaussian):
            raise ConfigurationError(f"{field}: {name} gives {type(distribution).__name__} actions, but"
                                     f" {type(family).__name__} takes {family_actions(family)}: use a Gaussian policy"
                                     " (GaussianMLPPolicy, or GRUPolicy with action_size)")
        size = distribution.mean.shape[-1]
        wanted = family.action_size
    if size != wanted:
        raise ConfigurationError(f"{field}: {name} gives {size} action values, but {type(family).__name__} takes"
                                 f" {family_actions(family)}: set the policy's action size to {wanted}")
