"""FIGR's networks (Clouâtre & Demers 2019): a DCGAN generator and a WGAN critic, LayerNorm and no BatchNorm.

After the authors' ``DCGANGenerator`` / ``DCGANDiscriminator`` (``model.py`` of LuEE-C/FIGR, its default
networks): the generator maps ``z`` (100-d) through a linear layer to a ``[hidden * 2**blocks, s, s]``
map (``s = image_size / 2**blocks``), then ``blocks`` times a 5x5 convolution halving the channels,
PReLU, LayerNorm over ``[C, H, W]`` and a 2x nearest upsampling, and a last 5x5 convolution to the image
channels with ``tanh`` (images in ``[-1, 1]``).  The critic mirrors it: a 5x5 convolution, LayerNorm,
PReLU, then ``blocks`` times a 5x5 convolution doubling the channels, LayerNorm, PReLU and 2x2 average
pooling, and a linear layer to one score.  LayerNorm, not BatchNorm: a WGAN-GP critic must score each
image independently (the penalty is per image), and Reptile's inner loop adapts copies of the weights,
which running statistics would not follow.

The authors' code runs 32x32 images with ``blocks=4`` and ``hidden_channels=64``; the bundled hanzi
glyphs are 28x28, so ``configs/figr_glyphs.yaml`` uses ``blocks=2`` (7 -> 14 -> 28), 32 channels in the
generator (0.93M parameters) and 16 in the critic (0.17M; 32 would be 0.46M and cost 2.3x the CPU time per
inner step).  ``image_size`` must be divisible by ``2**blocks``.

Example::

    generator = DCGANGenerator(z_dim=100, in_channels=1, image_size=28, hidden_channels=32, blocks=2)
    critic = DCGANDiscriminator(in_channels=1, image_size=28, hidden_channels=32, blocks=2)
    scores = critic(generator(torch.randn(4, 100)))          # [4, 1]
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_meta.errors import MODEL_ARGS, ConfigurationError, require_positive
from lightning_meta.models.backbone import Backbone


def check_sizes(role: str, in_channels: int, image_size: int, hidden_channels: int, blocks: int) -> None:
    """Refuse sizes the network cannot build, naming ``model.init_args.<role>.init_args.<field>``."""
    field = f"{MODEL_ARGS}{role}.init_args."
    for name, value in (("in_channels", in_channels), ("image_size", image_size),
                        ("hidden_channels", hidden_channels), ("blocks", blocks)):
        require_positive(field + name, value)
    if image_size % 2 ** blocks:
        raise ConfigurationError(
            f"{field}image_size={image_size} is not divisible by 2**{field}blocks = {2 ** blocks}: the {role} halves"
            f" (or doubles) the image {blocks} times; choose blocks so that 2**blocks divides the image size (28: 2,"
            " 32: 4)")


class DCGANGenerator(Backbone):
    """FIGR's DCGAN generator: ``z [B, z_dim]`` to images ``[B, in_channels, image_size, image_size]`` in ``[-1, 1]``.

    Args:
        z_dim: the noise dimension (100 in FIGR).
        in_channels: image channels (1 for glyphs).
        image_size: image height and width, divisible by ``2**blocks``.
        hidden_channels: channels of the last block (the first has ``hidden_channels * 2**(blocks - 1)``).
        blocks: convolution + upsampling blocks.

    Example::

        images = DCGANGenerator(100, 1, 28, 32, 2)(torch.randn(16, 100))     # [16, 1, 28, 28]
    """

    role = "generator"

    def __init__(self, z_dim: int = 100, in_channels: int = 1, image_size: int = 32, hidden_channels: int = 64,
                 blocks: int = 4):
        super().__init__()
        check_sizes(self.role, in_channels, image_size, hidden_channels, blocks)
        require_positive(f"{MODEL_ARGS}{self.role}.init_args.z_dim", z_dim)
        self.z_dim, self.in_channels, self.image_size = z_dim, in_channels, image_size
        self.start = image_size // 2 ** blocks
        self.start_channels = hidden_channels * 2 ** blocks
        width = self.start_channels * self.start * self.start
        self.features = nn.Sequential(nn.Linear(z_dim, width), nn.PReLU(width), nn.LayerNorm(width))
        layers: list[nn.Module] = []
        for i in range(blocks):
            channels, size = hidden_channels * 2 ** (blocks - i - 1), self.start * 2 ** i
            layers += [nn.Conv2d(channels * 2, channels, 5, padding=2), nn.PReLU(channels),
                       nn.LayerNorm([channels, size, size]), nn.Upsample(scale_factor=2)]
        layers += [nn.Conv2d(hidden_channels, in_channels, 5, padding=2), nn.Tanh()]
        self.head = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        x = self.features(z).view(-1, self.start_channels, self.start, self.start)
        return self.head(x)


class DCGANDiscriminator(Backbone):
    """FIGR's DCGAN critic: images ``[B, in_channels, image_size, image_size]`` to scores ``[B, 1]`` (WGAN: no sigmoid).

    Args: as :class:`DCGANGenerator` (no ``z_dim``); ``hidden_channels`` are the first convolution's.

    Example::

        scores = DCGANDiscriminator(1, 28, 32, 2)(torch.rand(4, 1, 28, 28) * 2 - 1)     # [4, 1]
    """

    role = "discriminator"

    def __init__(self, in_channels: int = 1, image_size: int = 32, hidden_channels: int = 64, blocks: int = 4):
        super().__init__()
        check_sizes(self.role, in_channels, image_size, hidden_channels, blocks)
        self.in_channels, self.image_size = in_channels, image_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden_channels, 5, padding=2),
                                   nn.LayerNorm([hidden_channels, image_size, image_size]), nn.PReLU(hidden_channels)]
        for i in range(blocks):
            channels, size = hidden_channels * 2 ** (i + 1), image_size // 2 ** i
            layers += [nn.Conv2d(channels // 2, channels, 5, padding=2), nn.LayerNorm([channels, size, size]),
                       nn.PReLU(channels), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        end = image_size // 2 ** blocks
        self.head = nn.Linear(hidden_channels * 2 ** blocks * end * end, 1)
