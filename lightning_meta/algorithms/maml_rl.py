"""MAML for reinforcement learning (Finn et al. 2017, Sec. 3.2): policy-gradient inner steps, a TRPO or
PPO-clip outer step on the post-adaptation rollouts.

Per meta-batch of ``B`` tasks (one loop over time per collection, all tasks and episodes at once)::

    D_0      = collect(theta)                          n episodes per task, phase 0
    theta_1  = theta - alpha grad L_in(theta; D_0)     per task; L_in: the LVC or DiCE surrogate
    D_1      = collect(theta_1)                        phase 1 (and so on for inner_steps > 1)
    outer    = TRPO (trust region on the mean KL) or PPO-clip (ppo_epochs Adam steps) on the
               likelihood ratio of D_K under theta_K(theta), differentiated through the adaptation

Advantages are GAE over a linear feature baseline fitted to each task's own episodes, standardised
per task (the authors' code).  The inner surrogate is ``lvc`` (ProMP's low-variance curvature, the
default) or ``dice`` (unbiased, high-variance Hessian); the plain ``log pi A`` of MAML's code is not
offered, its Hessian lacks the sampling term (``tests/test_policy_gradient.py`` shows it).

Evaluation collects before and after each of ``test_inner_steps`` steps and reports the mean
undiscounted return per task: ``return_before``, ``return_step{k}`` and ``return`` (the last step).

References:
    C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    J. Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_meta.algorithms.learner import Learner
from lightning_meta.algorithms.rl_checks import check_env_data, check_policy, require_discount
from lightning_meta.errors import MODEL_ARGS, ConfigurationError, optional_positive, require_choice, require_positive
from lightning_meta.inner_loop import Graph, Params, adapt, detached, inner_gradients
from lightning_meta.inner_updates import SGD
from lightning_meta.linear_baseline import LinearFeatureBaseline
from lightning_meta.models.backbone import build_module
from lightning_meta.policy_gradient import dice, lvc, masked_mean, ppo_clip
from lightning_meta.rollouts import Trajectories, collect, policy_at, with_advantages
from lightning_meta.tasks import EnvTaskBatch
from lightning_meta.trpo import trpo_step

Estimator = Literal["lvc", "dice"]
Outer = Literal["trpo", "ppo"]
RLBatching = Literal["vmap", "loop"]


class MAMLPolicyGradient(Learner):
    """MAML-TRPO / MAML-PPO (ProMP) on a batched task family (see the module docstring).

    Args:
        policy: the policy network, e.g. ``GaussianMLPPolicy(2, 2)`` for 2D navigation.
        inner_lr: the inner step size (0.1 in the paper for 2D navigation).
        inner_steps: inner policy-gradient steps in training (0: no adaptation, a pretrained baseline).
        test_inner_steps: inner steps at validation and test (default ``inner_steps``).
        test_inner_lrs: one step size per test step (the paper: ``[0.1, 0.05]``); default ``inner_lr``.
        first_order: drop the inner gradients' own derivatives (first-order MAML).
        estimator: the inner surrogate, ``lvc`` or ``dice``.
        outer: ``trpo`` (Finn et al.) or ``ppo`` (ProMP's clipped objective, ``ppo_epochs`` Adam steps at
            ``outer_lr``).
        max_kl, cg_iters, cg_damping, ls_steps, ls_backtrack: TRPO's trust region, conjugate gradient and
            line search.
        ppo_clip, ppo_epochs: PPO's clip range and its optimisation epochs per meta-batch.
        gamma, gae_lambda: the discount and the GAE parameter (1: Monte-Carlo returns minus the baseline).
        batching: ``vmap`` the meta-objective over tasks, or ``loop`` over them (same numbers; tested).
        **kwargs: the :class:`~lightning_meta.algorithms.learner.Learner`'s (``outer_lr``, ...).

    Example::

        model = MAMLPolicyGradient(GaussianMLPPolicy(2, 2), inner_lr=0.1, outer="trpo")
        data = EnvTaskDataModule(Navigation2D(), rollouts=20, meta_batch_size=20, episodes_per_epoch=400)
        pl.Trainer(max_epochs=3).fit(model, data)
    """

    selection_metric = "return"
    selection_mode = "max"
    #: how :meth:`kl_hvp` builds its per-task graphs, whatever :attr:`batching` is: ``loop`` (same numbers).
    #: A vmapped graph differentiates as ``bmm``, whose backward returns some activation gradients
    #: transposed (column-major); summed with row-major ones they make each double-backward elementwise
    #: pass several times slower, while ``mm``'s backward matches its input's layout.  Measured at the
    #: paper's sizes (20 tasks x 2,000 steps, 100x100 tanh): an inner-loss Hessian product 0.11-0.12 s
    #: looped against 0.25-0.27 s vmapped (one thread, CPU time, loaded machine).
    curvature_batching: RLBatching = "loop"
    evaluation_needs_grad = True
    supported_precisions = ("32-true", "64-true")
    summary_names = ("return_before",)

    def __init__(self, policy: nn.Module, inner_lr: float = 0.1, inner_steps: int = 1,
                 test_inner_steps: Optional[int] = None, test_inner_lrs: Optional[Sequence[float]] = None,
                 first_order: bool = False, estimator: Estimator = "lvc", outer: Outer = "trpo",
                 max_kl: float = 0.01, cg_iters: int = 10, cg_damping: float = 1e-5, ls_steps: int = 15,
                 ls_backtrack: float = 0.8, ppo_clip: float = 0.2, ppo_epochs: int = 5, gamma: float = 0.99,
                 gae_lambda: float = 1.0, batching: RLBatching = "vmap", **kwargs: Any):
        super().__init__(**kwargs)
        require_choice(MODEL_ARGS + "estimator", estimator, Estimator)
        require_choice(MODEL_ARGS + "outer", outer, Outer)
        require_choice(MODEL_ARGS + "batching", batching, RLBatching)
        require_positive(MODEL_ARGS + "inner_lr", inner_lr, integer=False)
        require_positive(MODEL_ARGS + "inner_steps", inner_steps, allow_zero=True)
        optional_positive(MODEL_ARGS + "test_inner_steps", test_inner_steps, allow_zero=True)
        for name, value in (("max_kl", max_kl), ("cg_damping", cg_damping)):
            require_positive(MODEL_ARGS + name, value, integer=False, allow_zero=name == "cg_damping")
        for name, value in (("cg_iters", cg_iters), ("ls_steps", ls_steps), ("ppo_epochs", ppo_epochs)):
            require_positive(MODEL_ARGS + name, value)
        if not 0 < ls_backtrack < 1:
            raise ConfigurationError(f"{MODEL_ARGS}ls_backtrack={ls_backtrack!r} is invalid: it must lie in (0, 1)")
        if not 0 < ppo_clip < 1:
            raise ConfigurationError(f"{MODEL_ARGS}ppo_clip={ppo_clip!r} is invalid: it must lie in (0, 1), e.g. 0.2")
        require_discount(MODEL_ARGS + "gamma", gamma)
        require_discount(MODEL_ARGS + "gae_lambda", gae_lambda)
        test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        if test_inner_lrs is not None:
            test_inner_lrs = [float(lr) for lr in test_inner_lrs]
            if len(test_inner_lrs) != test_inner_steps:
                raise ConfigurationError(
                    f"{MODEL_ARGS}test_inner_lrs has {len(test_inner_lrs)} step sizes for test_inner_steps="
                    f"{test_inner_steps}: give one per test step")
            for lr in test_inner_lrs:
                require_positive(MODEL_ARGS + "test_inner_lrs", lr, integer=False)
        if outer == "trpo" and self.gradient_clip_val:
            raise ConfigurationError(f"{MODEL_ARGS}gradient_clip_val={self.gradient_clip_val}: TRPO's step is bounded"
                                     " by max_kl, clipping it would leave the trust region; unset gradient_clip_val")
        self.save_hyperparameters(ignore=["policy"])
        self.hparams["policy"] = policy
        self._make_hparams_primitive()
        self.policy = build_module(policy)
        self.inner_lr, self.inner_steps, self.test_inner_steps = inner_lr, inner_steps, test_inner_steps
        self.test_inner_lrs = test_inner_lrs
        self.first_order, self.estimator, self.outer, self.batching = first_order, estimator, outer, batching
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.ls_steps, self.ls_backtrack = ls_steps, ls_backtrack
        self.ppo_clip, self.ppo_epochs = ppo_clip, ppo_epochs
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.baseline = LinearFeatureBaseline()

    # ------------------------------------------------------------------ optimizer and data
    def make_optimizer(self, group: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        """TRPO computes its update itself and applies it as a gradient step of size 1; PPO uses Adam."""
        if self.outer == "trpo":
            return torch.optim.SGD(parameters, lr=1.0)
        return torch.optim.Adam(parameters, lr=self.outer_lr)

    def use_optimizer(self, optimizer: dict[str, Any], scheduler: Optional[dict[str, Any]] = None) -> None:
        if self.outer == "trpo":
            raise ConfigurationError("--optimizer/--lr_scheduler: with model.init_args.outer=trpo the update is TRPO's"
                                     " own (max_kl sets its size); drop the flags or set outer: ppo")
        super().use_optimizer(optimizer, scheduler)

    def check_stage(self, datamodule: Any, stage: str) -> None:
        super().check_stage(datamodule, stage)
        check_env_data(self, datamodule)
        check_policy(self.policy, datamodule.family, MODEL_ARGS + "policy", recurrent=False)

    # ------------------------------------------------------------------ adaptation
    def step_sizes(self, training: bool) -> list[float]:
        steps = self.inner_steps if training else self.test_inner_steps
        if not training and self.test_inner_lrs is not None:
            return list(self.test_inner_lrs)
        return [self.inner_lr] * steps

    def inner_loss(self, params: Params, trajectories: Trajectories) -> Tensor:
        """The inner surrogate loss of one task's episodes, per valid step."""
        distribution = functional_call(self.policy, params, (trajectories.observations,))
        log_probs = distribution.log_prob(trajectories.actions)
        masks = trajectories.masks
        if self.estimator == "dice":
            objective = dice(log_probs, trajectories.rewards, masks, self.gamma, trajectories.values)
        else:
            objective = lvc(log_probs, trajectories.advantages, masks)
        return -masked_mean(objective, masks)

    def adapt_task(self, theta: Params, support: Sequence[Trajectories], step_sizes: Sequence[float],
                   graph: Graph) -> Params:
        """One task's parameters after an inner step on each of its ``support`` collections."""
        update = SGD(lambda name, step: step_sizes[step])
        trajectory = adapt(lambda params, step: self.inner_loss(params, support[step]), theta, len(support),
                           update, graph)
        return trajectory[-1]

    def batch_adapt(self, theta: Params, support: Sequence[Trajectories], step_sizes: Sequence[float],
                    graph: Graph, tasks: int) -> Params:
        """Each of the ``tasks`` tasks' adapted weights, stacked ``[B, ...]`` (vmapped or looped, :attr:`batching`)."""
        if not support:
            return {name: p.expand(tasks, *p.shape) for name, p in theta.items()}
        if self.batching == "vmap":
            return vmap(lambda s: self.adapt_task(theta, s, step_sizes, graph))(list(support))
        per_task = [self.adapt_task(theta, [pick(s, b) for s in support], step_sizes, graph) for b in range(tasks)]
        return {name: torch.stack([p[name] for p in per_task]) for name in theta}

    def explore(self, batch: EnvTaskBatch, step_sizes: Sequence[float]) -> tuple[list[Trajectories], Trajectories]:
        """Collect, adapt, collect: ``batch.rollouts`` episodes per task of each inner step (the support of the
        next step), and the episodes after the last step."""
        family, n = batch.family, batch.rollouts
        task = self.cast_task(batch.task)
        theta = detached(dict(self.policy.named_parameters()))
        support: list[Trajectories] = []
        params, per_task = theta, False
        for step in range(len(step_sizes)):
            episodes = collect(family, task, policy_at(self.policy, params, per_task), n, batch.key, step, self.dtype)
            support.append(with_advantages(episodes, self.gamma, self.gae_lambda, self.baseline))
            params = detached(self.batch_adapt(theta, support, step_sizes[:step + 1], "none", batch.num_tasks))
            per_task = True
        query = collect(family, task, policy_at(self.policy, params, per_task), n, batch.key, len(step_sizes),
                        self.dtype)
        return support, with_advantages(query, self.gamma, self.gae_lambda, self.baseline)

    def cast_task(self, task: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value.to(self.dtype) if value.is_floating_point() else value for name, value in task.items()}

    # ------------------------------------------------------------------ the outer objective
    @property
    def outer_graph(self) -> Graph:
        return "first_order" if self.first_order else "second_order"

    def task_terms(self, params: Params, query: Trajectories) -> Tensor:
        """One task's ``[loss, kl, entropy]`` of its post-adaptation episodes under its adapted ``params``."""
        distribution = functional_call(self.policy, params, (query.observations,))
        log_probs = distribution.log_prob(query.actions)
        masks = query.masks
        if self.outer == "ppo":
            objective = ppo_clip(log_probs, query.log_probs, query.advantages, masks, self.ppo_clip)
        else:
            objective = torch.exp(log_probs - query.log_probs) * query.advantages
        kl = masked_mean(query.old.kl(distribution), masks)
        entropy = masked_mean(distribution.entropy(), masks)
        return torch.stack([-masked_mean(objective, masks), kl, entropy])

    def per_task_terms(self, adapted: Params, query: Trajectories) -> Tensor:
        """``[B, 3]``: :meth:`task_terms` of every task, from the stacked adapted weights."""
        if self.batching == "vmap":
            return vmap(self.task_terms)(adapted, query)
        return torch.stack([self.task_terms({k: v[b] for k, v in adapted.items()}, pick(query, b))
                            for b in range(query.masks.shape[0])])

    def batch_terms(self, theta: Params, support: Sequence[Trajectories], query: Trajectories) -> Tensor:
        """``[loss, kl, entropy]`` averaged over the batch's tasks, differentiable in ``theta`` through the
        adaptation (second order unless ``first_order``)."""
        adapted = self.batch_adapt(theta, support, self.step_sizes(True), self.outer_graph, query.masks.shape[0])
        return self.per_task_terms(adapted, query).mean(0)

    def training_step(self, batch: EnvTaskBatch, batch_idx: int) -> None:
        start = time.perf_counter()
        support, query = self.explore(batch, self.step_sizes(True))
        theta = dict(self.policy.named_parameters())
        if self.outer == "trpo":
            loss, kl, entropy = self.trpo_update(theta, support, query)
        else:
            for _ in range(self.ppo_epochs):
                leaves = {name: p.detach().requires_grad_() for name, p in theta.items()}
                loss, kl, entropy = self.batch_terms(leaves, support, query)
                grads = self.all_reduce_mean(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())))))
                self.check_finite(loss.detach())
                self.outer_step(grads={f"policy.{name}": g for name, g in grads.items()}, all_reduced=True)
        before = support[0].returns() if support else query.returns()
        env_steps = sum(s.steps() for s in support) + query.steps()
        elapsed = max(time.perf_counter() - start, 1e-9)
        self.log_values("train", {"loss": loss.detach(), "return_before": before.mean(),
                                  "return": query.returns().mean(),
                                  "kl": kl.detach(), "entropy": entropy.detach(),
                                  "env_steps_per_s": torch.tensor(env_steps / elapsed)}, units=batch.num_tasks)

    def trpo_update(self, theta: Params, support: Sequence[Trajectories], query: Trajectories) -> tuple[Tensor, ...]:
        """A TRPO step of the meta-objective; every process takes the same one (reduced HVPs and line search)."""
        evaluated: list[Tensor] = []

        def loss_and_kl(params: Params) -> tuple[Tensor, Tensor]:
            terms = self.batch_terms(params, support, query)
            evaluated.append(terms.detach())
            return terms[0], terms[1]

        result = trpo_step(loss_and_kl, theta, max_kl=self.max_kl, cg_iters=self.cg_iters, cg_damping=self.cg_damping,
                           ls_steps=self.ls_steps, ls_backtrack=self.ls_backtrack, reduce=self.all_reduce_mean,
                           kl_hvp=self.kl_hvp(detached(theta), support, query))
        self.check_finite(result.loss.detach())
        update = {f"policy.{name}": theta[name].detach() - result.params[name] for name in theta}
        self.outer_step(grads=update, all_reduced=True)  # SGD with lr 1: theta <- result.params
        # the terms at the new weights: the accepted point is the last the line search evaluated; with no
        # step accepted the weights are those of the first evaluation (no extra forward pass for the log)
        _, kl, entropy = evaluated[-1] if result.step_fraction > 0 else evaluated[0]
        return result.loss_before, kl, entropy

    def kl_hvp(self, theta: Params, support: Sequence[Trajectories], query: Trajectories) -> Callable[[Params], Params]:
        """``v -> H v`` for the Hessian at ``theta`` of the batch's mean post-adaptation KL, as
        ``mean_b J_b^T F_b J_b v``: ``J_b`` the Jacobian of task ``b``'s adapted weights, ``F_b`` the KL's
        Hessian at them.

        Exact at ``theta``: the KL's gradient at the adapted weights is 0 (the new policy is the sampling
        one), so the chain rule's second term vanishes.  The inner steps are SGD,
        ``theta_{k+1} = theta_k - a_k grad L_k(theta_k)``, so ``J = (I - a_{K-1} H_{K-1}) ... (I - a_0 H_0)``
        with ``H_k`` the symmetric Hessian of step ``k``'s support loss at ``theta_k``: ``J v`` and ``J^T u``
        are inner-loss Hessian-vector products, double backward through each step's own gradient graph
        (built once per TRPO step).  Half the matrix products of differentiating the whole adaptation twice
        (``benchmarks/meta_rl_step.py``); first-order MAML has ``J = I``.
        """
        tasks = query.masks.shape[0]
        second_order = not self.first_order
        hessians: list[tuple[float, Params, Params]] = []
        params = {name: p.detach().expand(tasks, *p.shape) for name, p in theta.items()}
        with torch.enable_grad():
            for step_size, trajectories in zip(self.step_sizes(True), support):
                leaves = {name: p.detach().requires_grad_(second_order) for name, p in params.items()}
                grads = self.support_gradients(leaves, trajectories, "second_order" if second_order else "none",
                                               self.curvature_batching)
                hessians.append((step_size, leaves, grads))
                params = {name: leaves[name].detach() - step_size * grads[name].detach() for name in params}
        fisher = self.fisher_product(params, query)

        def hessian_product(outputs: Params, leaves: Params, vector: Params) -> Params:
            return dict(zip(leaves, torch.autograd.grad(list(outputs.values()), list(leaves.values()),
                                                        list(vector.values()), retain_graph=True,
                                                        materialize_grads=True)))

        def through_step(step: tuple[float, Params, Params], vector: Params) -> Params:
            step_size, leaves, grads = step
            if not second_order:
                return vector
            curvature = hessian_product(grads, leaves, vector)
            return {name: vector[name] - step_size * curvature[name] for name in vector}

        def product(vector: Params) -> Params:
            moved = {name: vector[name].expand(tasks, *vector[name].shape) for name in theta}
            for step in hessians:
                moved = through_step(step, moved)
            moved = fisher(moved)
            for step in reversed(hessians):
                moved = through_step(step, moved)
            return {name: m.sum(0) / tasks for name, m in moved.items()}

        return product

    def task_distributions(self, params: Params, observations: Tensor, batching: Optional[RLBatching] = None) -> Any:
        """The policy's distribution at every task's own ``params`` (``[B, ...]``), its fields stacked ``[B, ...]``
        (``batching``: default :attr:`batching`)."""
        if (batching or self.batching) == "vmap":
            return vmap(lambda p, o: functional_call(self.policy, p, (o,)))(params, observations)
        per_task = [functional_call(self.policy, {k: v[b] for k, v in params.items()}, (observations[b],))
                    for b in range(observations.shape[0])]
        return type(per_task[0])(*(torch.stack(fields) for fields in zip(*per_task)))

    def fisher_product(self, adapted: Params, query: Trajectories) -> Callable[[Params], Params]:
        """``u -> F_b u`` for every task ``b`` (``[B, ...]`` in and out): the Hessian at the adapted weights of
        the sum over tasks of the mean ``KL(old || new)`` of the query episodes, the sampling policy being
        the one at ``adapted``.

        Gauss-Newton form, exact here: with ``f`` the distribution's fields (a Gaussian's mean and log-std)
        and ``G = df/dw``, ``d2 KL/dw2 = G^T (d2 KL/df2) G + sum_k dKL/df_k d2 f_k/dw2``, and ``dKL/df = 0``
        where the new distribution is the old one, so ``F u = G^T K G u`` (``K`` and the check that
        ``dKL/df`` vanishes are taken at the sampling policy's recorded fields, which the fields at
        ``adapted`` equal up to rounding).  ``G u`` is the derivative of
        ``G^T c`` in a dummy cotangent ``c`` (both built once per TRPO step), ``K`` a double backward
        through the KL on the fields only, ``G^T`` a backward pass: four of the large matrix products of
        a forward-backward pass and no second derivatives of the activations, against six and two
        ``tanh`` second derivatives per hidden layer for the KL's double backward through the network.
        A distribution whose KL gradient in its fields is not 0 there (a :class:`Categorical` on
        normalised log-probabilities) takes the double backward instead.
        """
        masks = query.masks
        with torch.enable_grad():
            leaves = {name: p.detach().requires_grad_() for name, p in adapted.items()}
            distribution = self.task_distributions(leaves, query.observations, self.curvature_batching)
            fields = list(distribution)
            at = [f.detach().clone().requires_grad_() for f in query.old]  # the sampling policy's own fields
            kl = vmap(lambda old, new, m: masked_mean(old.kl(new), m))(query.old, type(distribution)(*at), masks)
            kl_gradient = torch.autograd.grad(kl.sum(), at, create_graph=True)
            if any(bool(g.detach().ne(0).any()) for g in kl_gradient):
                return self.kl_double_backward(adapted, query)
            cotangents = [torch.zeros_like(f, requires_grad=True) for f in fields]
            transposed = torch.autograd.grad(fields, list(leaves.values()), cotangents, create_graph=True,
                                             materialize_grads=True)

        def product(vector: Params) -> Params:
            with torch.enable_grad():
                moved = torch.autograd.grad(transposed, cotangents, [vector[name] for name in leaves],
                                            retain_graph=True, materialize_grads=True)
                curved = torch.autograd.grad(kl_gradient, at, moved, retain_graph=True, materialize_grads=True)
                back = torch.autograd.grad(fields, list(leaves.values()), curved, retain_graph=True,
                                           materialize_grads=True)
            return dict(zip(leaves, back))

        return product

    def kl_double_backward(self, adapted: Params, query: Trajectories) -> Callable[[Params], Params]:
        """:meth:`fisher_product` by double backward of the KL through the network (any distribution)."""
        with torch.enable_grad():
            leaves = {name: p.detach().requires_grad_() for name, p in adapted.items()}
            kl = self.per_task_terms(leaves, query)[:, 1].sum()
            kl_gradient = torch.autograd.grad(kl, list(leaves.values()), create_graph=True)

        def product(vector: Params) -> Params:
            with torch.enable_grad():
                return dict(zip(leaves, torch.autograd.grad(kl_gradient, list(leaves.values()),
                                                            [vector[name] for name in leaves], retain_graph=True,
                                                            materialize_grads=True)))

        return product

    def support_gradients(self, params: Params, trajectories: Trajectories, graph: Graph,
                          batching: Optional[RLBatching] = None) -> Params:
        """Each task's gradient of its inner loss on ``trajectories`` at its own ``params`` (``[B, ...]``;
        ``batching``: default :attr:`batching`)."""
        def task_gradient(task_params: Params, task_trajectories: Trajectories) -> Params:
            return inner_gradients(lambda p: self.inner_loss(p, task_trajectories), task_params, graph)[0]

        if (batching or self.batching) == "vmap":
            return vmap(task_gradient)(params, trajectories)
        per_task = [task_gradient({k: v[b] for k, v in params.items()}, pick(trajectories, b))
                    for b in range(trajectories.masks.shape[0])]
        return {name: torch.stack([g[name] for g in per_task]) for name in params}

    # ------------------------------------------------------------------ evaluation
    def evaluate_tasks(self, batch: EnvTaskBatch) -> dict[str, Tensor]:
        support, query = self.explore(batch, self.step_sizes(False))
        returns = [s.returns().mean(1) for s in support] + [query.returns().mean(1)]
        values = {"return_before": returns[0]}
        values.update({f"return_step{k}": returns[k] for k in range(1, len(returns))})
        values["return"] = returns[-1]
        return values

    def adaptation_curve_names(self) -> tuple[str, dict[int, str]]:
        """The points of :class:`~lightning_meta.callbacks.AdaptationCurve`: the mean return before (0) and after
        each test inner step ``k``, as :meth:`evaluate_tasks` reports them."""
        return "inner step", {0: "return_before", **{k: f"return_step{k}" for k in range(1, self.test_inner_steps + 1)}}

    def adaptation_episodes(self, batch: EnvTaskBatch) -> tuple[Tensor, Tensor]:
        """Observations ``[2, B, n, T, obs]`` and masks ``[2, B, n, T]`` of each task's episodes before (row 0)
        and after (row 1) the test inner steps: the rollouts :meth:`evaluate_tasks` collects
        (:class:`~lightning_meta.callbacks.TrajectoryPlot` draws them)."""
        support, query = self.explore(batch, self.step_sizes(False))
        before = support[0] if support else query
        return torch.stack([before.observations, query.observations]), torch.stack([before.masks, query.masks])


def pick(trajectories: Trajectories, b: int) -> Trajectories:
    """Task ``b``'s episodes (dim 0 of every tensor, in the old distribution too)."""
    return Trajectories(*(None if v is None else (type(v)(*(x[b] for x in v)) if isinstance(v, tuple) else v[b])
                          for v in trajectories))
