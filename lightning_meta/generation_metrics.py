"""Judge metrics of few-shot image generation, computed without any downloaded network.

A *judge* embeds images: a frozen Prototypical Network trained on the meta-train classes (load one with
:meth:`Judge.from_checkpoint`, e.g. the ``best.ckpt`` of ``python -m lightning_meta fit --config
configs/protonet_hanzi_5w1s.yaml``), or raw pixels (:meth:`Judge.pixels`, the fallback when no checkpoint
is given).  Inception networks are neither available offline nor trained on glyphs; a few-shot judge
trained on the same family of images is both.

For one episode of ``N`` classes, each with ``K`` support images, ``M`` real held-out images and ``G``
generated ones (all embedded by the judge), :func:`generation_scores` gives per class:

* ``class_fidelity``: the share of generated images whose nearest prototype (mean support embedding,
  Euclidean) among the episode's ``N`` classes is their class.  Real held-out images score the judge's
  accuracy; noise scores chance (``1 / N``).
* ``kid``: the kernel inception distance in the judge's embedding, the unbiased MMD² between generated
  and real embeddings with the cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3`` (Bińkowski et al.
  2018).  Unbiased, so two samples of one distribution score 0 in expectation (single values can be
  negative).  Per-class FID is not usable: ``M = 16`` images in ``D >= 64`` dimensions give a singular
  covariance and a large small-sample bias.
* ``diversity``: the mean pairwise distance among generated embeddings over that among the real ones
  (1: as varied as real images; near 0: mode collapse).
* ``support_distance``: the mean distance of generated embeddings to their nearest support embedding over
  that of the real images (below 1: closer to the supports than new real images are, i.e. copying them;
  returning the supports scores 0).

Baselines: :func:`affine_jitter` makes "generated" images from the supports by random affine transforms.

Example::

    judge = Judge.from_checkpoint("runs/protonet_hanzi_5w1s/<run>/checkpoints/best.ckpt")
    scores = generation_scores(judge(generated).unflatten(0, (N, G)), judge(real).unflatten(0, (N, M)),
                               judge(support).unflatten(0, (N, K)))
    scores["class_fidelity"]          # [N]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.errors import ConfigurationError

#: the names of :func:`generation_scores`, in the order a summary shows them
METRICS = ("class_fidelity", "kid", "diversity", "support_distance")


class Judge:
    """A frozen image embedding for the judge metrics: ``judge(images [B, C, H, W]) -> [B, D]`` (no gradients).

    ``embed`` is any function of a batch of images; :meth:`from_learner` takes a metric learner's
    ``embedding`` (in ``eval()`` mode: running BatchNorm statistics, so an image's embedding does not depend
    on the batch), :meth:`from_checkpoint` loads one, :meth:`pixels` is the identity.

    Example::

        judge = Judge.pixels()
        judge(torch.rand(3, 1, 28, 28)).shape        # (3, 784)
    """

    def __init__(self, embed: Callable[[Tensor], Tensor], name: str, module: Optional[nn.Module] = None):
        self.embed, self.name, self.module = embed, name, module

    @classmethod
    def pixels(cls) -> "Judge":
        """Raw pixels as the embedding (the fallback judge, and the issue's prototype measurement)."""
        return cls(lambda x: x, "pixels")

    @classmethod
    def from_learner(cls, learner: nn.Module, name: str = "protonet") -> "Judge":
        """The ``embedding`` of a trained metric learner (a :class:`~lightning_meta.PrototypicalNetwork`), frozen."""
        embedding = getattr(learner, "embedding", None)
        if not isinstance(embedding, nn.Module):
            raise TypeError(f"{type(learner).__name__} has no embedding network: the judge is a metric learner"
                            " (PrototypicalNetwork)")
        embedding.eval()
        embedding.requires_grad_(False)
        return cls(embedding, name, embedding)

    @classmethod
    def from_checkpoint(cls, path: str, field: str = "judge_ckpt") -> "Judge":
        """Load a metric learner's checkpoint (e.g. of ``configs/protonet_hanzi_5w1s.yaml``) as the judge.

        ``field`` names the setting in the one-line error of a missing or unusable file."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigurationError(
                f"{field}={path!r}: {file.resolve()} is not a file: point it at a PrototypicalNetwork checkpoint"
                " trained on the meta-train classes (python -m lightning_meta fit --config"
                " configs/protonet_hanzi_5w1s.yaml writes runs/protonet_hanzi_5w1s/<run>/checkpoints/best.ckpt),"
                " or leave it null for the raw-pixel judge")
        from lightning_meta.algorithms.metric import MetricLearner

        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        class_path = checkpoint.get("hyper_parameters", {}).get("_class_path",
                                                                 "lightning_meta.algorithms.protonet.PrototypicalNetwork")
        learner_class = _import(class_path)
        keys = checkpoint.get("state_dict", {})
        if (learner_class is None or not issubclass(learner_class, MetricLearner)
                or not any(key.startswith("embedding.") for key in keys)):
            raise ConfigurationError(
                f"{field}={path!r} is not a metric learner's checkpoint ({class_path}): the judge is a"
                " PrototypicalNetwork trained on the meta-train classes (configs/protonet_hanzi_5w1s.yaml)")
        learner = learner_class.load_from_checkpoint(str(file), map_location="cpu", weights_only=True)
        return cls.from_learner(learner, f"{learner_class.__name__}:{file.name}")

    def to(self, device: torch.device) -> "Judge":
        if self.module is not None:
            self.module.to(device)
        return self

    def __call__(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            if self.module is not None:
                self.module.to(images.device)
            return self.embed(images).flatten(1).float()


def _import(class_path: str) -> Optional[type]:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


# --------------------------------------------------------------------------- the metrics
def pairwise_distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``[..., A, B]`` between the rows of ``a [..., A, D]`` and ``b [..., B, D]``."""
    squared = a.pow(2).sum(-1, keepdim=True) - 2 * a @ b.transpose(-1, -2) + b.pow(2).sum(-1).unsqueeze(-2)
    return squared.clamp_min(0).sqrt()


def mean_pairwise_distance(x: Tensor) -> Tensor:
    """Mean distance ``[...]`` between distinct rows of ``x [..., n, D]`` (n >= 2)."""
    n = x.shape[-2]
    return pairwise_distances(x, x).sum((-1, -2)) / (n * (n - 1))


def kernel_inception_distance(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD² ``[...]`` between ``x [..., n, D]`` and ``y [..., m, D]`` with ``k(a, b) = (a.b / D + 1)^3``.

    Example::

        kernel_inception_distance(torch.randn(8, 64), torch.randn(8, 64))     # near 0 (can be negative)
    """
    n, m, dim = x.shape[-2], y.shape[-2], x.shape[-1]
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {n} and {m}")

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.transpose(-1, -2) / dim + 1) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    within_y = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    return within_x + within_y - 2 * kxy.mean((-1, -2))


def generation_scores(generated: Tensor, real: Tensor, support: Tensor) -> dict[str, Tensor]:
    """The judge metrics of one episode, per class: ``{name: [N]}`` for the names of :data:`METRICS`.

    Args:
        generated: judge embeddings ``[N, G, D]`` of each class's generated images (G >= 2).
        real: embeddings ``[N, M, D]`` of each class's real held-out images (M >= 2).
        support: embeddings ``[N, K, D]`` of each class's support images (the prototypes are their means).
    """
    generated, real, support = generated.double(), real.double(), support.double()
    ways = support.shape[0]
    prototypes = support.mean(1)                                                   # [N, D]
    nearest = pairwise_distances(generated, prototypes.expand(ways, -1, -1)).argmin(-1)   # [N, G]
    fidelity = (nearest == torch.arange(ways, device=nearest.device).unsqueeze(1)).double().mean(1)
    to_support_generated = pairwise_distances(generated, support).amin(-1).mean(-1)
    to_support_real = pairwise_distances(real, support).amin(-1).mean(-1)
    return {
        "class_fidelity": fidelity,
        "kid": kernel_inception_distance(generated, real),
        "diversity": mean_pairwise_distance(generated) / mean_pairwise_distance(real).clamp_min(1e-12),
        "support_distance": to_support_generated / to_support_real.clamp_min(1e-12),
    }


# --------------------------------------------------------------------------- the jitter baseline
def affine_jitter(images: Tensor, count: int, generator: Optional[torch.Generator] = None, degrees: float = 10.0,
                  translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1), fill: float = 0.0) -> Tensor:
    """``count`` random affine transforms of ``images [K, C, H, W]`` (image ``i % K`` for output ``i``):
    the "support images with random jitter" baseline of the judge metrics.

    Rotation uniform in ``±degrees``, translation uniform in ``±translate`` of the size, zoom uniform in
    ``scale``; pixels from outside the image take ``fill`` (the glyphs' black background: 0).

    Example::

        fakes = affine_jitter(support_x, 16, torch.Generator().manual_seed(0))     # [16, C, H, W]
    """
    source = images[torch.arange(count) % images.shape[0]]
    device, dtype = images.device, images.dtype

    def uniform(low: float, high: float) -> Tensor:
        return (torch.rand(count, generator=generator) * (high - low) + low).to(device, dtype)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(*scale)
    shift_x, shift_y = uniform(-translate, translate) * 2, uniform(-translate, translate) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], -1), torch.stack([sin, cos, shift_y], -1)], 1)
    grid = F.affine_grid(theta, list(source.shape), align_corners=False)
    return F.grid_sample(source - fill, grid, align_corners=False, padding_mode="zeros") + fill
