"""Prototypical networks (Snell, Swersky, Zemel 2017)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.errors import MODEL_ARGS, require_choice, require_positive

Distance = Literal["euclidean", "cosine"]


class PrototypicalNetwork(MetricLearner):
    """Classify a query by its distance to each class's prototype, the mean of its support embeddings.

    Logits are minus the squared Euclidean distances to the prototypes (``distance="euclidean"``,
    the paper's choice), or the cosine similarities times ``temperature`` (``distance="cosine"``).
    Train with more ways than at test ("higher way" training, as the paper does) by setting the data
    module's ``ways`` above its ``test_ways``.

    Args:
        embedding: the embedding network (see :class:`~lightning_meta.algorithms.metric.MetricLearner`);
            the paper's is ``Conv4(out_features=None, pooling="max", batch_norm_stats="running")``.
        distance: ``"euclidean"`` (squared) or ``"cosine"``.
        temperature: scale of cosine logits (cosine similarities alone lie in [-1, 1], too flat
            for a softmax); ignored for the Euclidean distance.
        Remaining arguments: see :class:`~lightning_meta.algorithms.metric.MetricLearner`.

    Override :meth:`prototypes` or :meth:`distance_logits` to change how classes are summarised or
    compared (see ``examples/protonet_custom_distance.py``).

    Reference:
        Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning." NeurIPS 2017.

    Example::

        from lightning_meta import OmniglotDataModule, PrototypicalNetwork
        from lightning_meta.models import Conv4

        model = PrototypicalNetwork(Conv4(out_features=None, pooling="max", batch_norm_stats="running"))
        data = OmniglotDataModule("data", ways=60, test_ways=5, shots=1, queries=5, test_queries=15)
        pl.Trainer(max_epochs=10).fit(model, data)
    """

    def __init__(
        self,
        embedding: nn.Module,
        distance: Distance = "euclidean",
        temperature: float = 10.0,
        embed_together: bool = False,
        **kwargs: Any,
    ):
        super().__init__(embedding, embed_together=embed_together, **kwargs)
        require_choice(MODEL_ARGS + "distance", distance, Distance)
        require_positive(MODEL_ARGS + "temperature", temperature, integer=False)
        self.distance = distance
        self.temperature = temperature

    def prototypes(self, support_features: Tensor, support_y: Tensor, ways: int) -> Tensor:
        """Class means ``[ways, D]`` of the flattened support embeddings."""
        features = support_features.flatten(1)
        sums = features.new_zeros(ways, features.shape[1]).index_add(0, support_y, features)
        counts = torch.bincount(support_y, minlength=ways).to(features.dtype)
        return sums / counts.unsqueeze(1)

    def distance_logits(self, query_features: Tensor, prototypes: Tensor) -> Tensor:
        """Logits ``[M, ways]``: minus squared Euclidean distances, or scaled cosine similarities."""
        query = query_features.flatten(1)
        if self.distance == "cosine":
            return self.temperature * F.normalize(query, dim=1) @ F.normalize(prototypes, dim=1).T
        # ||q||^2 - 2 q.p + ||p||^2: a matrix product, not an [M, ways, D] difference tensor
        squared = query.pow(2).sum(1, keepdim=True) - 2 * query @ prototypes.T + prototypes.pow(2).sum(1)
        return -squared

    def support_state(self, support_features: Tensor, support_y: Tensor, ways: int) -> Tensor:
        return self.prototypes(support_features, support_y, ways)

    def classify(self, state: Tensor, query_features: Tensor) -> Tensor:
        return self.distance_logits(query_features, state)
