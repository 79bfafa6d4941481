"""Meta-SGD (Li et al. 2017): MAML with a learned step size for every parameter element."""

from __future__ import annotations

from torch import nn

from lightning_meta.algorithms.maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: meta-learns the initialisation *and* a step size per weight (direction and rate).

    The inner update is ``theta - alpha * grad`` with ``alpha`` a learned tensor shaped like
    ``theta`` (initialised to ``inner_lr``), trained by the outer optimiser with the weights.
    Other arguments as :class:`~lightning_meta.MAML` (``step_sizes`` is fixed to ``"per_parameter"``); with
    ``inner_optimizer`` (``"momentum"``, ``"nesterov"``, ``"adam"``) the learned tensor is that rule's rate.

    References:
        Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning." 2017.

    Example::

        model = MetaSGD(Conv4(out_features=5), inner_lr=0.1, inner_steps=1)
        model.step_sizes.rates[0].shape == model.backbone.features[0][0].weight.shape   # True
    """

    def __init__(self, backbone: nn.Module, inner_lr: float = 0.1, **kwargs):
        super().__init__(backbone, inner_lr, step_sizes="per_parameter", **kwargs)
        self.remove_ignored_hparams(["step_sizes"])
