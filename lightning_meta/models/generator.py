"""``TaskConditionedGenerator``: images of a few-shot task's classes from noise and the task's support set.

MetaGAN (Zhang et al. 2018) conditions its generator on the task: a small encoder embeds the support
images, pools them, and the generator draws fake images from noise and that summary.  Here each fake is
drawn for one class of the task: its condition is ``[mean embedding of the class's support images, mean
embedding of the whole support set]``, so a fake can also be labelled with its class (the support
augmentation of :class:`~lightning_meta.algorithms.metagan.MetaGAN`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.models.backbone import Backbone

FIELD = MODEL_ARGS + "generator.init_args."


class TaskConditionedGenerator(Backbone):
    """A DCGAN-style generator conditioned on a support set (``features``: the support encoder; ``head``: the
    image decoder).

    The encoder is two stride-2 3x3 convolutions (``encoder_channels``) with ReLU, averaged over space: one
    vector per support image.  The decoder maps ``[class condition, task condition, noise]`` through a linear
    layer to ``hidden_channels`` maps of a quarter of the image side, then two (upsample x2, 3x3 convolution)
    blocks with ``hidden_channels // 2`` and ``in_channels`` outputs, and a sigmoid: pixels in ``[0, 1]``,
    the scaling of lightning-meta's image data modules without ``mean``/``std``.  No BatchNorm: a fake
    depends on its own episode only.

    Args:
        in_channels: channels of the images (1 for Omniglot and hanzi).
        image_size: side of the square images; a multiple of 4.
        noise_dim: dimensions of the noise ``z`` per fake.
        hidden_channels: channels of the decoder's first maps (64: a "64/32-channel" generator).
        encoder_channels: channels of the support encoder, the width of each half of the condition.

    Example::

        generator = TaskConditionedGenerator(in_channels=1, image_size=28)
        classes = torch.arange(5).repeat_interleave(3)                    # 3 fakes per class
        fakes = generator(support_x, support_y, classes, torch.randn(15, generator.noise_dim))
        fakes.shape                                                        # [15, 1, 28, 28]
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, noise_dim: int = 32, hidden_channels: int = 64,
                 encoder_channels: int = 32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size), ("noise_dim", noise_dim),
                            ("encoder_channels", encoder_channels)):
            require_positive(FIELD + name, value)
        if hidden_channels < 2:
            raise ConfigurationError(f"{FIELD}hidden_channels={hidden_channels!r}: give at least 2 (the decoder halves"
                                     " it), e.g. 64")
        if image_size % 4:
            raise ConfigurationError(
                f"{FIELD}image_size={image_size}: the generator upsamples twice by 2, so the image side must be a "
                f"multiple of 4 (e.g. 28 or 84); resize the data or set it to the data's image size")
        self.in_channels, self.image_size, self.noise_dim = in_channels, image_size, noise_dim
        self.hidden_channels = hidden_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, encoder_channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(encoder_channels, encoder_channels, 3, stride=2, padding=1), nn.ReLU())
        side = image_size // 4
        self.project = nn.Linear(2 * encoder_channels + noise_dim, hidden_channels * side * side)
        half = hidden_channels // 2
        self.head = nn.Sequential(
            nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(hidden_channels, half, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(half, in_channels, 3, padding=1), nn.Sigmoid())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images it draws (and takes as support images)."""
        return self.in_channels, self.image_size, self.image_size

    def condition(self, support_x: Tensor, support_y: Tensor, classes: Tensor) -> Tensor:
        """``[n, 2 * encoder_channels]``: per fake, its class's mean support embedding and the task's."""
        embedded = self.features(support_x).mean((-2, -1))
        ways = int(support_y.max()) + 1
        sums = embedded.new_zeros(ways, embedded.shape[1]).index_add(0, support_y, embedded)
        means = sums / support_y.bincount(minlength=ways).clamp_min(1).unsqueeze(1).to(embedded.dtype)
        task = embedded.mean(0, keepdim=True).expand(len(classes), -1)
        return torch.cat([means[classes], task], dim=1)

    def forward(self, support_x: Tensor, support_y: Tensor, classes: Tensor, noise: Tensor) -> Tensor:  # type: ignore[override]
        """Fakes ``[n, C, H, W]``, one per entry of ``classes`` (class indices of the task) and row of ``noise``."""
        hidden = self.project(torch.cat([self.condition(support_x, support_y, classes), noise], dim=1))
        side = self.image_size // 4
        return self.head(hidden.view(len(classes), self.hidden_channels, side, side))

