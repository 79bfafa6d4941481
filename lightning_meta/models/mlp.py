"""A fully connected network, as MAML uses for sinusoid regression (1-40-40-1)."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from lightning_meta.models.backbone import Backbone, linear_head


class MLP(Backbone):
    """ReLU multi-layer perceptron: ``features`` are the hidden layers, ``head`` the output layer.

    Example::

        net = MLP(in_features=1, out_features=1, hidden=(40, 40))   # Finn et al. 2017, sinusoid
        net(torch.randn(10, 1)).shape                                 # torch.Size([10, 1])
    """

    def __init__(self, in_features: int = 1, out_features: Optional[int] = 1, hidden: Sequence[int] = (40, 40)):
        super().__init__()
        if in_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"MLP sizes must be positive: in_features={in_features}, hidden={list(hidden)}")
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.features = nn.Sequential(*layers)
        self.head = linear_head(width, out_features)
