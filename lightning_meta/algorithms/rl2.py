"""RL² (Duan et al. 2016): a recurrent policy whose hidden state, carried across the episodes of a trial,
is the learning algorithm; trained with PPO (Schulman et al. 2017) on whole trials.

A trial is ``episodes_per_trial`` episodes of one task, each ``family.horizon`` steps.  The GRU reads the
observation with the previous action, reward and done flag (:func:`~lightning_meta.models.policies.rl2_input`);
its hidden state runs through the trial and starts from zeros at the next one.  Advantages are GAE over
the trial (episode ends inside a trial are not terminal: the trial is RL²'s episode).  A training step
collects ``rollouts`` trials of each task of the meta-batch, then runs ``ppo_epochs`` epochs over
``ppo_minibatches`` minibatches; minibatch ``m`` takes the ``m``-th share of every task's trials (a
permutation drawn from the task's key), so processes that split the tasks take the same step.

Evaluation reports the trial's total undiscounted return, ``return``, as the RL² tables, and the
return of episode ``k`` of the trial, ``return_ep{k}``, for ``k`` in ``report_episodes``.

Reference:
    Y. Duan, J. Schulman, X. Chen, P. Bartlett, I. Sutskever, P. Abbeel, "RL²: Fast Reinforcement Learning
    via Slow Reinforcement Learning", 2016.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.learner import Learner
from lightning_meta.algorithms.rl_checks import check_env_data, check_policy, require_discount
from lightning_meta.envs.family import Task, TaskFamily, rollout_uniforms
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.models.backbone import build_module
from lightning_meta.models.policies import rl2_input, unroll
from lightning_meta.policy_gradient import gae, masked_mean, ppo_clip
from lightning_meta.rollouts import normalised
from lightning_meta.tasks import EnvTaskBatch


class Trials(NamedTuple):
    """``n`` trials of each of ``B`` tasks, ``T = episodes x horizon`` steps each (``[B, n, T, ...]``)."""

    inputs: Tensor       # [B, n, T, input_size]: what the GRU read at each step
    actions: Tensor      # [B, n, T] (long) or [B, n, T, action_size]
    rewards: Tensor      # [B, n, T]
    masks: Tensor        # [B, n, T]: 1 until an episode's end, 0 on its remaining steps
    log_probs: Tensor    # [B, n, T] under the collecting policy
    values: Tensor       # [B, n, T] of the collecting policy's value head

    def episode_returns(self, horizon: int) -> Tensor:
        """Undiscounted return of each episode of each trial ``[B, n, episodes]``."""
        rewards = self.rewards * self.masks
        return rewards.reshape(*rewards.shape[:2], -1, horizon).sum(-1)


def collect_trials(policy: nn.Module, family: TaskFamily, task: Task, n: int, episodes: int, keys: Tensor,
                   phase: int, dtype: torch.dtype) -> Trials:
    """``n`` trials of ``episodes`` episodes per task, the hidden state kept across the episodes of a trial
    (and frozen on an episode's steps after its end); noise from ``(keys[b], phase)``."""
    device, horizon = keys.device, family.horizon
    tasks, steps = keys.shape[0], episodes * horizon
    width = family.action_size if not family.discrete else 1
    action_noise = rollout_uniforms(keys, 2 * phase, (n, steps, width), torch.float64, device).to(dtype)
    env_noise = rollout_uniforms(keys, 2 * phase + 1, (n, steps + episodes, max(family.noise_size, 1)),
                                 torch.float64, device)[..., :family.noise_size]
    hidden = policy.initial_hidden((tasks, n))
    previous_action = (torch.full((tasks, n), -1, dtype=torch.long, device=device) if family.discrete
                       else torch.zeros(tasks, n, family.action_size, dtype=dtype, device=device))
    previous_reward = torch.zeros(tasks, n, dtype=dtype, device=device)
    previous_done = torch.zeros(tasks, n, dtype=torch.bool, device=device)
    records: list[tuple[Tensor, ...]] = []
    with torch.no_grad():
        for episode in range(episodes):
            row = episode * (horizon + 1)
            state, observation = family.reset(task, n, env_noise[:, :, row])
            alive = torch.ones(tasks, n, dtype=dtype, device=device)
            for t in range(horizon):
                x = rl2_input(observation.to(dtype), previous_action, previous_reward, previous_done,
                              family.num_actions)
                distribution, value, new_hidden = policy(x, hidden)
                u = action_noise[:, :, episode * horizon + t]
                action = distribution.sample(u[..., 0] if family.discrete else u)
                state, observation, reward, done = family.step(task, state, action, env_noise[:, :, row + t + 1])
                reward = reward.to(dtype) * alive
                records.append((x, action, reward, alive, distribution.log_prob(action), value))
                keep = alive.bool().unsqueeze(-1)
                hidden = torch.where(keep, new_hidden, hidden)
                previous_action = torch.where(keep if not family.discrete else alive.bool(), action, previous_action)
                previous_reward = torch.where(alive.bool(), reward, previous_reward)
                previous_done = torch.where(alive.bool(), done | (t == horizon - 1), previous_done)
                alive = alive * (~done).to(dtype)
    return Trials(*(torch.stack(parts, dim=2) for parts in zip(*records)))


class RL2(Learner):
    """RL² with PPO on a batched task family (see the module docstring).

    Args:
        policy: a recurrent policy, ``GRUPolicy(observation_size, num_actions=...)``: input size
            ``observation_size + actions + 2``.
        ppo_clip, ppo_epochs, ppo_minibatches: PPO's clip range, epochs per meta-batch and minibatches
            per epoch (``ppo_minibatches`` must divide the trials per task, ``data.rollouts``).
        value_coef, entropy_coef: weights of the value loss and of the entropy bonus.
        gamma, gae_lambda: the discount and GAE's parameter, over a whole trial.
        report_episodes: the episodes ``k`` of a trial whose return is reported (``return_ep{k}``);
            those beyond the trial are skipped.
        **kwargs: the :class:`~lightning_meta.algorithms.learner.Learner`'s (``outer_lr``, ...).

    Example::

        model = RL2(GRUPolicy(1, num_actions=5), outer_lr=3e-3)
        data = EnvTaskDataModule(BernoulliBandits(5), episodes_per_trial=10, rollouts=8, meta_batch_size=64)
        pl.Trainer(max_epochs=5).fit(model, data)
    """

    selection_metric = "return"
    selection_mode = "max"
    supported_precisions = ("32-true", "64-true")
    throughput_unit = "tasks"
    summary_names = ("return",)

    def __init__(self, policy: nn.Module, ppo_clip: float = 0.2, ppo_epochs: int = 4, ppo_minibatches: int = 2,
                 value_coef: float = 0.5, entropy_coef: float = 0.01, gamma: float = 0.99, gae_lambda: float = 0.95,
                 report_episodes: Sequence[int] = (1, 2, 10), **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 < ppo_clip < 1:
            raise ConfigurationError(f"{MODEL_ARGS}ppo_clip={ppo_clip!r} is invalid: it must lie in (0, 1), e.g. 0.2")
        require_positive(MODEL_ARGS + "ppo_epochs", ppo_epochs)
        require_positive(MODEL_ARGS + "ppo_minibatches", ppo_minibatches)
        require_positive(MODEL_ARGS + "value_coef", value_coef, integer=False, allow_zero=True)
        require_positive(MODEL_ARGS + "entropy_coef", entropy_coef, integer=False, allow_zero=True)
        require_discount(MODEL_ARGS + "gamma", gamma)
        require_discount(MODEL_ARGS + "gae_lambda", gae_lambda)
        for k in report_episodes:
            require_positive(MODEL_ARGS + "report_episodes", k)
        self.save_hyperparameters(ignore=["policy"])
        self.hparams["policy"] = policy
        self._make_hparams_primitive()
        self.policy = build_module(policy)
        self.ppo_clip, self.ppo_epochs, self.ppo_minibatches = ppo_clip, ppo_epochs, ppo_minibatches
        self.value_coef, self.entropy_coef = value_coef, entropy_coef
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.report_episodes = sorted(set(int(k) for k in report_episodes))

    def check_stage(self, datamodule: Any, stage: str) -> None:
        super().check_stage(datamodule, stage)
        check_env_data(self, datamodule)
        check_policy(self.policy, datamodule.family, MODEL_ARGS + "policy", recurrent=True)
        if stage == "fit" and datamodule.rollouts % self.ppo_minibatches:
            raise ConfigurationError(
                f"{MODEL_ARGS}ppo_minibatches={self.ppo_minibatches} does not divide data.init_args.rollouts="
                f"{datamodule.rollouts} (the trials of each task): choose a divisor")

    def trials(self, batch: EnvTaskBatch, phase: int) -> Trials:
        """``batch.rollouts`` trials of ``batch.episodes_per_trial`` episodes per task."""
        task = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in batch.task.items()}
        return collect_trials(self.policy, batch.family, task, batch.rollouts, batch.episodes_per_trial, batch.key,
                              phase, self.dtype)

    # ------------------------------------------------------------------ training
    def minibatch_losses(self, trials: Trials, advantages: Tensor, returns: Tensor,
                         params: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
        """PPO's losses on ``trials`` (whole trials, re-run from a zero hidden state)."""
        params = dict(self.policy.named_parameters()) if params is None else params
        hidden = self.policy.initial_hidden(trials.masks.shape[:2])
        distribution, values, _ = unroll(lambda x, h: functional_call(self.policy, params, (x, h)), trials.inputs,
                                         hidden)
        log_probs = distribution.log_prob(trials.actions)
        masks = trials.masks
        policy_loss = -masked_mean(ppo_clip(log_probs, trials.log_probs, advantages, masks, self.ppo_clip), masks)
        value_loss = masked_mean((values - returns).square(), masks)
        entropy = masked_mean(distribution.entropy(), masks)
        clipped = ((log_probs - trials.log_probs).exp() - 1).abs() > self.ppo_clip
        return {"loss": policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy,
                "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                "clip_fraction": masked_mean(clipped.to(masks.dtype), masks)}

    def training_step(self, batch: EnvTaskBatch, batch_idx: int) -> None:
        n = batch.rollouts
        trials = self.trials(batch, phase=0)
        advantages = gae(trials.rewards, trials.values, trials.masks, self.gamma, self.gae_lambda)
        returns = advantages + trials.values * trials.masks
        advantages = normalised(advantages, trials.masks)
        size = n // self.ppo_minibatches
        logged: dict[str, Tensor] = {}
        for epoch in range(self.ppo_epochs):
            order = rollout_uniforms(batch.key, 1 + epoch, (n,), torch.float64, batch.key.device).argsort(-1)
            for m in range(self.ppo_minibatches):
                chosen = order[:, m * size:(m + 1) * size]
                part = Trials(*(gather_trials(x, chosen) for x in trials))
                leaves = {name: p.detach().requires_grad_() for name, p in self.policy.named_parameters()}
                losses = self.minibatch_losses(part, gather_trials(advantages, chosen), gather_trials(returns, chosen),
                                               leaves)
                self.check_finite(losses["loss"].detach())
                grads = torch.autograd.grad(losses["loss"], list(leaves.values()), allow_unused=True)
                grads = {n: g if g is not None else torch.zeros_like(p) for (n, p), g in zip(leaves.items(), grads)}
                reduced = self.all_reduce_mean(grads)
                self.outer_step(grads={f"policy.{name}": g for name, g in reduced.items()}, all_reduced=True)
                logged = {k: v.detach() for k, v in losses.items()}
        logged["return"] = trials.episode_returns(batch.family.horizon).sum(-1).mean()
        self.log_values("train", logged, units=batch.num_tasks)

    # ------------------------------------------------------------------ evaluation
    def evaluate_tasks(self, batch: EnvTaskBatch) -> dict[str, Tensor]:
        trials = self.trials(batch, phase=0)
        episodes = trials.episode_returns(batch.family.horizon).mean(1)  # [B, episodes]
        values = {"return": episodes.sum(-1)}
        values.update({f"return_ep{k}": episodes[:, k - 1] for k in self.report_episodes if k <= episodes.shape[1]})
        return values

    def adaptation_curve_names(self) -> tuple[str, dict[int, str]]:
        """The points of :class:`~lightning_meta.callbacks.AdaptationCurve`: the mean return of episode ``k`` of
        the trial for ``k`` in ``report_episodes``, as :meth:`evaluate_tasks` reports them."""
        return "episode of the trial", {k: f"return_ep{k}" for k in self.report_episodes}

    def adaptation_episodes(self, batch: EnvTaskBatch) -> tuple[Tensor, Tensor]:
        """Observations ``[2, B, n, T, obs]`` and masks ``[2, B, n, T]`` of the first (row 0) and last (row 1)
        episode of each trial :meth:`evaluate_tasks` collects: before and after the hidden state adapted
        (:class:`~lightning_meta.callbacks.TrajectoryPlot` draws them)."""
        family = batch.family
        trials = self.trials(batch, phase=0)
        observations = trials.inputs[..., :family.observation_size].unflatten(2, (-1, family.horizon))
        masks = trials.masks.unflatten(2, (-1, family.horizon))
        return observations[:, :, [0, -1]].movedim(2, 0), masks[:, :, [0, -1]].movedim(2, 0)


def gather_trials(x: Tensor, chosen: Tensor) -> Tensor:
    """The trials ``chosen [B, m]`` of each task from ``x [B, n, ...]``."""
    index = chosen.view(*chosen.shape, *([1] * (x.dim() - 2))).expand(*chosen.shape, *x.shape[2:])
    return torch.gather(x, 1, index)
