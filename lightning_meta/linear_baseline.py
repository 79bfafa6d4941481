"""The linear feature baseline of MAML-RL and ProMP, fitted for a meta-batch of tasks in one batched solve."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_meta.errors import require_positive


class LinearFeatureBaseline:
    """A value baseline linear in ``[obs, obs², t, t², t³, 1]`` with ``t = step / 100`` and the observation
    clipped to [-10, 10] (Duan et al. 2016, "Benchmarking Deep RL for Continuous Control", supp. 2;
    ``rllab/baselines/linear_feature_baseline.py``, ProMP's and ``pytorch-maml-rl``'s copies), fitted to
    the returns of each task on its own by ridge regression.

    The normal equations ``(XᵀX + reg I) w = Xᵀy`` of all ``B`` tasks are one batched
    ``torch.linalg.solve_ex``; a task whose solve fails (singular or non-finite) is solved again with ten
    times its ``reg``, up to ``retries`` times, as rllab does.  Padded steps (``masks`` 0) have zero features,
    so they neither enter the fit nor get a value.  Fitting runs in float64 whatever the rollouts' dtype
    (rllab fits in NumPy float64; these polynomial features lose most digits in float32).

    Stateless: :meth:`fit` returns the coefficients ``[B, F]``, :meth:`predict` takes them, so the same
    object serves every task, inner step and process.

    Example::

        baseline = LinearFeatureBaseline()
        returns = discounted_returns(rewards, masks, gamma=0.99)                  # [B, n, T]
        coefficients = baseline.fit(observations, returns, masks)                  # observations [B, n, T, obs]
        advantages = gae(rewards, baseline.predict(coefficients, observations, masks), masks, 0.99, 1.0)
    """

    def __init__(self, reg_coeff: float = 1e-5, retries: int = 5):
        require_positive("reg_coeff", reg_coeff, integer=False)
        require_positive("retries", retries)
        self.reg_coeff = reg_coeff
        self.retries = retries

    @staticmethod
    def features(observations: Tensor, masks: Tensor) -> Tensor:
        """``[..., T, 2 * observation_size + 4]`` features of ``observations [..., T, observation_size]``,
        zero where ``masks [..., T]`` is 0."""
        clipped = observations.clamp(-10, 10)
        time = torch.arange(observations.shape[-2], dtype=observations.dtype, device=observations.device) / 100
        time = time.unsqueeze(-1).expand(*observations.shape[:-1], 1)
        powers = [time, time.square(), time.pow(3), torch.ones_like(time)]
        features = torch.cat([clipped, clipped.square(), *powers], dim=-1)
        return features * masks.to(observations.dtype).unsqueeze(-1)

    def fit(self, observations: Tensor, returns: Tensor, masks: Tensor) -> Tensor:
        """Coefficients ``[B, F]`` (float64) fitted per task: dim 0 of ``observations [B, ..., T, obs]``,
        ``returns [B, ..., T]`` and ``masks [B, ..., T]`` is the task; the other dims are pooled."""
        tasks = observations.shape[0]
        x = self.features(observations.double(), masks).reshape(tasks, -1, 2 * observations.shape[-1] + 4)
        y = (returns.double() * masks.double()).reshape(tasks, -1, 1)
        broken = ~(x.isfinite().all(dim=(1, 2)) & y.isfinite().all(dim=(1, 2)))
        if bool(broken.any()):
            raise FloatingPointError(
                f"LinearFeatureBaseline: the observations or returns of tasks {broken.nonzero().flatten().tolist()} are"
                " not finite (a NaN or infinite reward, state or task parameter); check the task family")
        gram, target = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        reg = torch.full((tasks, 1, 1), self.reg_coeff, dtype=gram.dtype, device=gram.device)
        for _ in range(self.retries):
            coefficients, info = torch.linalg.solve_ex(gram + reg * eye, target)
            solved = (info == 0) & coefficients.isfinite().all(dim=(1, 2))
            if bool(solved.all()):
                return coefficients.squeeze(-1)
            reg = torch.where(solved.view(-1, 1, 1), reg, 10 * reg)
        failed = (~solved).nonzero().flatten().tolist()
        raise FloatingPointError(f"LinearFeatureBaseline: the normal equations of tasks {failed} stay singular or "
                                 f"non-finite up to reg_coeff={reg.max().item():g}; check the observations and returns")

    def predict(self, coefficients: Tensor, observations: Tensor, masks: Tensor) -> Tensor:
        """Values ``[B, ..., T]`` (in the dtype of ``observations``) of the coefficients of :meth:`fit`."""
        features = self.features(observations.double(), masks)
        weights = coefficients.view(coefficients.shape[0], *([1] * (features.dim() - 2)), -1)
        return (features * weights).sum(-1).to(observations.dtype)
