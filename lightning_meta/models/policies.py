"""Policies for meta-reinforcement learning: MLP policies for MAML-style adaptation, a GRU policy for RL².

Every policy is pure under ``torch.func.functional_call`` and ``vmap`` over per-task weights: no
in-place operation, no data-dependent Python branch, no ``torch.distributions`` (their argument checks
are data-dependent); they return the tensor-only distributions of
:mod:`lightning_meta.models.distributions`, which ``vmap`` hands back as they are. Weights are
initialised as in the MAML-RL authors' code and its PyTorch port (Finn et al. 2017, ``cbfinn/maml_rl``;
``tristandeleu/pytorch-maml-rl``): Xavier-uniform matrices, zero biases.

Example::

    policy = GaussianMLPPolicy(observation_size=2, action_size=2)
    params = dict(policy.named_parameters())
    dist = torch.func.functional_call(policy, params, (observations,))       # [B, n] batch
    actions = dist.sample(noise).detach()
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_meta.errors import ConfigurationError, require_choice, require_positive
from lightning_meta.models.backbone import Backbone
from lightning_meta.models.distributions import Categorical, DiagonalGaussian


Activation = Literal["tanh", "relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def hidden_mlp(input_size: int, hidden_sizes: Sequence[int], activation: Activation = "tanh") -> nn.Sequential:
    """``Linear -> activation`` layers of widths ``hidden_sizes`` (an empty stack is the identity).

    ``tanh`` is the MAML-RL authors' code (``cbfinn/maml_rl``, rllab's default) and ``pytorch-maml-rl``'s;
    ``relu`` is what the MAML paper's text states (Sec. 5.3), and its second derivative is zero, which
    makes MAML-TRPO's curvature products cheaper (``benchmarks/meta_rl_step.py``).
    """
    require_choice("activation", activation, Activation)
    layers: list[nn.Module] = []
    width = input_size
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    return nn.Sequential(*layers)


def init_linear_layers(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases in every ``nn.Linear`` of ``module`` (MAML-RL's init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def check_sizes(hidden_sizes: Sequence[int], **sizes: int) -> None:
    for name, value in sizes.items():
        require_positive(name, value)
    if any(not isinstance(h, int) or h < 1 for h in hidden_sizes):
        raise ConfigurationError(f"hidden_sizes={list(hidden_sizes)!r} is invalid: every width must be an integer >= 1")


class GaussianMLPPolicy(Backbone):
    """A Gaussian policy for continuous actions: an MLP (tanh or ReLU hidden layers) gives the mean, a learned state-independent
    ``log_std`` (one per action dimension, floored at ``log(min_std)``) the spread.

    The policy of MAML's locomotion and 2D-navigation experiments (Finn et al. 2017: two hidden layers
    of 100 units; ``cbfinn/maml_rl``'s ``MAMLGaussianMLPPolicy`` with ``init_std=1``, ``min_std=1e-6``).
    ``features`` are the hidden layers, ``head`` the mean layer.

    Example::

        policy = GaussianMLPPolicy(observation_size=2, action_size=2)
        dist = policy(torch.zeros(20, 2))              # DiagonalGaussian, mean [20, 2]
        dist.sample(torch.rand(20, 2)).shape           # torch.Size([20, 2])
    """

    def __init__(self, observation_size: int, action_size: int, hidden_sizes: Sequence[int] = (100, 100),
                 init_std: float = 1.0, min_std: float = 1e-6, activation: Activation = "tanh"):
        super().__init__()
        check_sizes(hidden_sizes, observation_size=observation_size, action_size=action_size)
        require_positive("init_std", init_std, integer=False)
        require_positive("min_std", min_std, integer=False)
        self.features = hidden_mlp(observation_size, hidden_sizes, activation)
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else observation_size, action_size)
        init_linear_layers(self)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))
        self.min_log_std = math.log(min_std)

    def forward(self, observation: Tensor) -> DiagonalGaussian:
        """The action distribution at ``observation [..., observation_size]``: batch shape ``[...]``."""
        mean = self.head(self.features(observation))
        log_std = self.log_std.clamp_min(self.min_log_std).expand_as(mean)
        return DiagonalGaussian(mean, log_std)


class CategoricalMLPPolicy(Backbone):
    """A softmax policy over ``num_actions`` discrete actions on an MLP (tanh or ReLU hidden layers).

    Example::

        policy = CategoricalMLPPolicy(observation_size=4, num_actions=2)
        policy(torch.zeros(20, 4)).sample(torch.rand(20))    # long [20]
    """

    def __init__(self, observation_size: int, num_actions: int, hidden_sizes: Sequence[int] = (100, 100),
                 activation: Activation = "tanh"):
        super().__init__()
        check_sizes(hidden_sizes, observation_size=observation_size, num_actions=num_actions)
        self.features = hidden_mlp(observation_size, hidden_sizes, activation)
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else observation_size, num_actions)
        init_linear_layers(self)

    def forward(self, observation: Tensor) -> Categorical:
        return Categorical.from_logits(self.head(self.features(observation)))


class GRUCell(nn.Module):
    """``nn.GRUCell``'s equations on two ``nn.Linear`` layers, for any batch shape ``[...]``.

    ``nn.GRUCell`` takes 1-D or 2-D inputs only and has no ``vmap`` batching rule (functorch falls back
    to a slow loop over the tasks, with a warning); this one is made of ops that vmap natively.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input = nn.Linear(input_size, 3 * hidden_size)
        self.hidden = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        x_r, x_z, x_n = self.input(x).chunk(3, dim=-1)
        h_r, h_z, h_n = self.hidden(h).chunk(3, dim=-1)
        reset = torch.sigmoid(x_r + h_r)
        update = torch.sigmoid(x_z + h_z)
        candidate = torch.tanh(x_n + reset * h_n)
        return (1 - update) * candidate + update * h


class GRUPolicy(Backbone):
    """The recurrent policy of RL² (Duan et al. 2016): a GRU over ``observation ⊕ previous action ⊕
    previous reward ⊕ previous done`` (:func:`rl2_input`), with a policy head and a value head.

    Give ``num_actions`` for a discrete action space (softmax head, previous action one-hot) or
    ``action_size`` for a continuous one (Gaussian head with a learned state-independent ``log_std``).
    The hidden state runs across the episodes of a trial and starts at :meth:`initial_hidden`.
    ``features`` is the GRU cell, ``head`` the action layer, ``value_head`` the value layer.

    Example::

        policy = GRUPolicy(observation_size=4, num_actions=2)
        h = policy.initial_hidden((8,))
        x = rl2_input(obs, previous_action, previous_reward, previous_done, num_actions=2)    # [8, 8]
        dist, value, h = policy(x, h)            # Categorical [8], value [8], hidden [8, 64]
    """

    def __init__(self, observation_size: int, num_actions: int = 0, action_size: int = 0, hidden_size: int = 64,
                 init_std: float = 1.0):
        super().__init__()
        require_positive("observation_size", observation_size)
        require_positive("hidden_size", hidden_size)
        require_positive("init_std", init_std, integer=False)
        require_positive("num_actions", num_actions, allow_zero=True)
        require_positive("action_size", action_size, allow_zero=True)
        if (num_actions > 0) == (action_size > 0):
            raise ConfigurationError(f"num_actions={num_actions}, action_size={action_size}: give exactly one of "
                                     "them (num_actions for discrete actions, action_size for continuous ones)")
        self.num_actions = num_actions
        self.input_size = observation_size + max(num_actions, action_size) + 2
        self.hidden_size = hidden_size
        self.features = GRUCell(self.input_size, hidden_size)
        self.head = nn.Linear(hidden_size, max(num_actions, action_size))
        self.value_head = nn.Linear(hidden_size, 1)
        init_linear_layers(self)
        if action_size:
            self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))

    def initial_hidden(self, batch_shape: Sequence[int]) -> Tensor:
        """Zeros ``[*batch_shape, hidden_size]`` on the weights' device and dtype: the state at a trial's start."""
        weight = self.value_head.weight
        return torch.zeros(*batch_shape, self.hidden_size, dtype=weight.dtype, device=weight.device)

    def forward(self, x: Tensor, hidden: Tensor) -> tuple[Union[Categorical, DiagonalGaussian], Tensor, Tensor]:
        """One step: ``x [..., input_size]`` and ``hidden [..., hidden_size]`` to ``(distribution, value [...],
        new hidden)``."""
        hidden = self.features(x, hidden)
        return self.distribution(self.head(hidden)), self.value_head(hidden).squeeze(-1), hidden

    def distribution(self, out: Tensor) -> Union[Categorical, DiagonalGaussian]:
        """The action distribution of the head's output ``out [..., A]``."""
        if self.num_actions:
            return Categorical.from_logits(out)
        return DiagonalGaussian(out, self.log_std.expand_as(out))


Step = Callable[[Tensor, Tensor], tuple[Union[Categorical, DiagonalGaussian], Tensor, Tensor]]


def unroll(step: Step, inputs: Tensor, hidden: Tensor) -> tuple[Union[Categorical, DiagonalGaussian], Tensor, Tensor]:
    """A recurrent policy over time: ``inputs [..., T, input_size]`` from ``hidden`` to the distributions and
    values ``[..., T]`` and the last hidden state (PPO epochs on a collected trial re-run the policy so).

    ``step(x, hidden) -> (distribution, value, hidden)`` is the policy or its functional call.  Example::

        dist, values, _ = unroll(lambda x, h: functional_call(policy, params, (x, h)), inputs, h0)
        log_probs = dist.log_prob(actions)          # [..., T]
    """
    dists, values = [], []
    for t in range(inputs.shape[-2]):
        dist, value, hidden = step(inputs[..., t, :], hidden)
        dists.append(dist)
        values.append(value)
    fields = (torch.stack(field, dim=-2) for field in zip(*dists))
    return type(dists[0])(*fields), torch.stack(values, dim=-1), hidden


def rl2_input(observation: Tensor, previous_action: Tensor, previous_reward: Tensor, previous_done: Tensor,
              num_actions: int = 0) -> Tensor:
    """RL²'s input ``[..., observation_size + A + 2]``: the observation, the previous action (one-hot over
    ``num_actions`` for discrete actions, as given for continuous ones, ``A`` wide), the previous reward and
    the previous done flag (Duan et al. 2016, Sec. 2.2).

    At a trial's first step there is no previous action: pass ``-1`` (discrete: an all-zero one-hot) or
    zeros (continuous), and zero reward and done.

    Example::

        x = rl2_input(obs, torch.full((8,), -1), torch.zeros(8), torch.zeros(8, dtype=torch.bool), num_actions=2)
    """
    dtype = observation.dtype
    if num_actions:
        actions = torch.arange(num_actions, device=observation.device)
        action = (previous_action.unsqueeze(-1) == actions).to(dtype)
    else:
        action = previous_action.to(dtype)
    extras = torch.stack([previous_reward.to(dtype), previous_done.to(dtype)], dim=-1)
    return torch.cat([observation, action, extras], dim=-1)
