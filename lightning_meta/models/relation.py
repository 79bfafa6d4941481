"""The two networks of Relation networks (Sung et al. 2018): a feature-map embedding and a relation module.

* :class:`RelationEmbedding` (the paper's "embedding module"): four conv 3x3 (64 channels) ->
  BatchNorm -> ReLU blocks, 2x2 max-pooling after the first two only, unpadded convolutions in the
  first two blocks and padded ones in the last two (as the official code).  Its output is a feature
  *map*, not a vector: ``64 x 5 x 5`` for Omniglot 28x28 and ``64 x 19 x 19`` for mini-ImageNet
  84x84, the sizes of the paper.
* :class:`RelationModule`: two conv 3x3 -> BatchNorm -> ReLU -> 2x2 max-pool blocks on the
  channel-wise concatenation of a class feature map and a query feature map, then ``FC(8) -> ReLU
  -> FC(1)``; the sigmoid of its output is the relation score.  Sized from the embedding's
  feature-map shape: the official code pads its convolutions for Omniglot's 5x5 maps
  (5 -> 2 -> 1, FC input 64) and not for mini-ImageNet's 19x19 maps (19 -> 8 -> 3, FC input 576).

Both use BatchNorm with running statistics, so episodes are evaluated in ``eval()`` mode
independently of each other.  Weights are initialised as in the official code: He-normal
convolutions, ``N(0, 0.01)`` linear weights with biases of one.

Reference:
    Sung, Yang, Zhang, Xiang, Torr, Hospedales. "Learning to Compare: Relation Network for Few-Shot
    Learning." CVPR 2018.  Official code: github.com/floodsung/LearningToCompare_FSL.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.internals import is_norm_layer
from lightning_meta.models.backbone import Backbone
from lightning_meta.models.norm import BatchNorm2d


def relation_block(in_channels: int, out_channels: int, padding: int, pool: bool) -> nn.Sequential:
    """conv 3x3 -> BatchNorm (running statistics) -> ReLU [-> 2x2 max-pool].

    The convolution has no bias: the BatchNorm right after it subtracts the batch mean anyway.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=False),
        BatchNorm2d(out_channels, track_running_stats=True),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def block_output_size(size: int, padding: int, pool: bool) -> int:
    """Side of a square map after a 3x3 convolution with ``padding`` (and a floor 2x2 max-pool)."""
    size = size + 2 * padding - 2
    return size // 2 if pool else size


def init_like_official_code(module: nn.Module) -> None:
    """He-normal convolutions (fan-out), BatchNorm ``1, 0``, linear weights ``N(0, 0.01)`` with biases of 1."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif is_norm_layer(m):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.ones_(m.bias)


class RelationEmbedding(Backbone):
    """The embedding module of Relation networks: images ``[n, C, H, W]`` to feature maps ``[n, 64, h, w]``.

    Four blocks of conv 3x3 -> BatchNorm -> ReLU with ``hidden_channels`` channels; the first two
    are unpadded and followed by 2x2 max-pooling, the last two are padded and not pooled.  BatchNorm
    keeps running statistics (metric learners evaluate episodes in ``eval()`` mode).  There is no
    head (``head`` is the identity): the feature maps are the output.

    Args:
        in_channels: image channels (1 for Omniglot, 3 for mini-ImageNet).
        hidden_channels: channels of every block (64 in the paper).
        image_size: side of the (square) input images; only used to compute :attr:`output_shape`,
            from which :class:`~lightning_meta.algorithms.relation.RelationNetwork` sizes its
            relation module.

    Attributes:
        output_shape: ``(hidden_channels, h, w)`` of the feature maps of ``image_size`` images.

    Example::

        net = RelationEmbedding(in_channels=1, image_size=28)     # Omniglot
        net(torch.randn(10, 1, 28, 28)).shape                     # torch.Size([10, 64, 5, 5])
        RelationEmbedding(3, image_size=84).output_shape          # (64, 19, 19), mini-ImageNet
    """

    def __init__(self, in_channels: int = 1, hidden_channels: int = 64, image_size: int = 28):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                            ("image_size", image_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RelationEmbedding {name}={value!r} must be a positive integer")
        layout = ((0, True), (0, True), (1, False), (1, False))  # (padding, max-pool) of the four blocks
        size = image_size
        for padding, pool in layout:
            size = block_output_size(size, padding, pool)
        if size < 1:
            raise ValueError(f"RelationEmbedding image_size={image_size} is too small: the two unpadded, pooled "
                             "blocks need images of at least 10x10")
        self.features = nn.Sequential(*[
            relation_block(in_channels if i == 0 else hidden_channels, hidden_channels, padding, pool)
            for i, (padding, pool) in enumerate(layout)])
        self.head = nn.Identity()
        self.output_shape: tuple[int, int, int] = (hidden_channels, size, size)
        init_like_official_code(self)


class RelationModule(nn.Module):
    """The relation module: relation logits of every (query, class) pair of feature maps.

    ``[class map, query map]`` concatenated along channels -> two blocks of conv 3x3 (``hidden_channels``)
    -> BatchNorm -> ReLU -> 2x2 max-pool -> flatten -> ``Linear(hidden_features)`` -> ReLU -> ``Linear(1)``.
    The output is the relation *logit*; the paper's relation score is its sigmoid.

    :meth:`forward` never builds the ``[M * N, 2C, H, W]`` tensor of concatenated pairs: the first
    convolution of a concatenation is the sum of two convolutions, one of the class maps with the
    first half of the kernel and one of the query maps with the second half, so it convolves the
    ``N + M`` maps once and adds them pairwise (the same numbers as :meth:`pair_logits`, which
    takes the literal concatenations, at a fraction of the cost of the largest layer).

    Args:
        feature_shape: ``(channels, height, width)`` of one feature map of the embedding.
        hidden_channels: channels of the two convolutional blocks (64 in the paper).
        hidden_features: width of the hidden fully connected layer (8 in the paper).
        padding: padding of the two convolutions; ``None`` chooses the official code's: 1 for maps
            smaller than 10x10 (Omniglot's 5x5), else 0 (mini-ImageNet's 19x19).

    Example::

        relation = RelationModule((64, 5, 5))
        relation(torch.randn(5, 64, 5, 5), torch.randn(12, 64, 5, 5)).shape   # torch.Size([12, 5])
    """

    def __init__(self, feature_shape: Sequence[int], hidden_channels: int = 64, hidden_features: int = 8,
                 padding: Optional[int] = None):
        super().__init__()
        channels, height, width = (int(s) for s in feature_shape)
        if padding is None:
            padding = 1 if min(height, width) < 10 else 0
        out_h, out_w = height, width
        for _ in range(2):
            out_h, out_w = block_output_size(out_h, padding, True), block_output_size(out_w, padding, True)
        if min(out_h, out_w) < 1:
            raise ValueError(f"RelationModule: feature maps of {height}x{width} vanish after two conv (padding "
                             f"{padding}) and max-pool blocks; they need to be at least {10 - 2 * padding} pixels wide")
        self.channels = channels
        self.padding = padding
        self.layer1 = relation_block(2 * channels, hidden_channels, padding, pool=True)
        self.layer2 = relation_block(hidden_channels, hidden_channels, padding, pool=True)
        self.fc1 = nn.Linear(hidden_channels * out_h * out_w, hidden_features)
        self.fc2 = nn.Linear(hidden_features, 1)
        init_like_official_code(self)

    def _head(self, first_conv_output: Tensor) -> Tensor:
        x = self.layer1[1:](first_conv_output)
        x = self.layer2(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x))).squeeze(-1)

    def pair_logits(self, pairs: Tensor) -> Tensor:
        """Relation logits ``[P]`` of concatenated pairs ``[P, 2C, H, W]`` (class map first, as the paper)."""
        return self._head(self.layer1[0](pairs))

    def forward(self, class_maps: Tensor, query_maps: Tensor) -> Tensor:
        """Relation logits ``[M, N]`` of every query map ``[M, C, H, W]`` with every class map ``[N, C, H, W]``."""
        conv: nn.Conv2d = self.layer1[0]
        channels = self.channels
        from_classes = F.conv2d(class_maps, conv.weight[:, :channels], None, padding=self.padding)
        from_queries = F.conv2d(query_maps, conv.weight[:, channels:], conv.bias, padding=self.padding)
        pairs = (from_queries.unsqueeze(1) + from_classes.unsqueeze(0)).flatten(0, 1)  # query-major
        return self._head(pairs).view(len(query_maps), len(class_maps))
