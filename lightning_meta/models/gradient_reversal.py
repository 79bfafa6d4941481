"""The gradient reversal layer of domain-adversarial training (Ganin & Lempitsky 2015).

Forward: the identity.  Backward: the incoming gradient times ``-lambda``.  Placed between a
feature extractor and a domain classifier, it lets one optimiser step *minimise* the domain
classifier's loss in the classifier's own weights while *maximising* it in the feature
extractor's weights, pushing the features towards domain invariance.

Reference:
    Y. Ganin and V. Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
    Y. Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class GradientReversalFunction(torch.autograd.Function):
    """``y = x`` forward; ``dL/dx = -lambda * dL/dy`` backward (no gradient for ``lambda``).

    Example::

        x = torch.randn(4, 3, requires_grad=True)
        GradientReversalFunction.apply(x, 0.5).sum().backward()
        x.grad                                   # all -0.5
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * -ctx.lambda_, None


def reverse_gradient(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """Functional form of :class:`GradientReversal`."""
    return GradientReversalFunction.apply(x, lambda_)


class GradientReversal(nn.Module):
    """Identity in the forward pass; multiplies the gradient by ``-lambda_`` in the backward pass.

    ``lambda_`` is a plain attribute (not a parameter or buffer), so a training loop can change it
    every step (:func:`dann_lambda` gives the paper's schedule).

    Args:
        lambda_: the reversal coefficient (``0`` blocks the gradient; ``1`` flips it).

    Example::

        grl = GradientReversal(lambda_=0.3)
        domain_logits = domain_classifier(grl(features))
        grl.lambda_ = dann_lambda(progress=0.5)       # update as training advances
    """

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        if not math.isfinite(lambda_):
            raise ValueError(f"GradientReversal lambda_ must be finite, got {lambda_}")
        self.lambda_ = float(lambda_)

    def forward(self, x: Tensor) -> Tensor:
        return reverse_gradient(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def dann_lambda(progress: float, gamma: float = 10.0, lambda_max: float = 1.0) -> float:
    """The adaptation factor of Ganin & Lempitsky: ``lambda_max * (2 / (1 + exp(-gamma * p)) - 1)``.

    ``p`` (``progress``, clamped to ``[0, 1]``) is the fraction of training done; lambda rises from
    0 to about ``lambda_max`` (0.9999 of it at ``p = 1`` for ``gamma = 10``), so the noisy domain
    classifier of early training does not disturb the features.

    Example::

        dann_lambda(0.0), dann_lambda(0.1), dann_lambda(1.0)    # 0.0, 0.462, 0.9999
    """
    p = min(max(float(progress), 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def dann_learning_rate_factor(progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """The paper's learning-rate annealing factor ``1 / (1 + alpha * p) ** beta`` (``mu_p = mu_0 * factor``)."""
    p = min(max(float(progress), 0.0), 1.0)
    return 1.0 / (1.0 + alpha * p) ** beta
