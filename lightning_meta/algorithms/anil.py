"""ANIL (Raghu et al. 2020): MAML that adapts only the head, on body features computed once per task."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.maml import MAML
from lightning_meta.errors import MODEL_ARGS, ConfigurationError
from lightning_meta.inner_loop import Forward, Params, sub_params
from lightning_meta.models.backbone import build_module


class ANIL(MAML):
    """Almost No Inner Loop: the body is meta-learned, only the head adapts per task.

    The backbone must be ``head(body(x))`` with submodules named by ``body`` and ``head`` (all
    lightning-meta models: ``features`` and ``head``).  Body features of the support and query sets
    are computed once per task; the inner loop runs on the head alone, so it is cheap, and the
    meta-gradient still reaches the body through those features (second order unless
    ``first_order``).  Other arguments as :class:`~lightning_meta.MAML`.

    References:
        Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding the
        Effectiveness of MAML." ICLR 2020.

    Example::

        model = ANIL(Conv4(out_features=5), inner_lr=0.1, inner_steps=5)
    """

    def __init__(self, backbone: nn.Module, inner_lr: float = 0.1, body: str = "features", head: str = "head",
                 **kwargs):
        self.body_name, self.head_name = body, head
        net = build_module(backbone)
        for role, name in (("body", body), ("head", head)):
            if not isinstance(getattr(net, name, None), nn.Module):
                raise ConfigurationError(
                    f"ANIL needs the backbone to be head(body(x)) but {type(net).__name__} has no submodule "
                    f"{name!r} ({role}): set {MODEL_ARGS}{role} to the name of that submodule")
        super().__init__(net, inner_lr, **kwargs)

    def is_adapted(self, name: str) -> bool:
        return name.startswith(self.head_name + ".")

    def prepare_task(self, params: Params, support_x: Tensor, query_x: Tensor) -> tuple[Params, Forward, Tensor, Tensor]:
        body = getattr(self.backbone, self.body_name)
        head = getattr(self.backbone, self.head_name)
        body_params = sub_params(params, self.body_name)
        support_features = functional_call(body, body_params, (support_x,))
        query_features = functional_call(body, body_params, (query_x,))
        fast = {name: p for name, p in params.items() if self.is_adapted(name)}

        def forward(p: Params, features: Tensor) -> Tensor:
            return functional_call(head, sub_params(p, self.head_name), (features,))

        return fast, forward, support_features, query_features
