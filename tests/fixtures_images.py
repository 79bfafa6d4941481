"""Tiny on-disk datasets in the real formats, built in ``tmp_path`` by the data-adapter tests.

* :func:`make_omniglot`: torchvision's extracted Omniglot layout (PNG, 1-bit, black strokes on
  white, 105 x 105), without the zip files.
* :func:`make_mini_imagenet`: learn2learn's ``mini-imagenet-cache-<split>.pkl`` pickles.
* :func:`make_image_folder`: ``root/<class>/<image>.png`` (optionally of mixed sizes or modes).
* :func:`make_npz`: an .npz of ``X`` uint8 ``[classes, samples, H, W]``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def glyph(character_seed: int, drawing: int, size: int = 105) -> Image.Image:
    """A "character": a few thick black strokes fixed by ``character_seed``, jittered per ``drawing``."""
    shape = np.random.default_rng(character_seed)
    jitter = np.random.default_rng([character_seed, drawing])
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        points = shape.uniform(0.15, 0.85, size=4) * size + jitter.normal(0, size * 0.02, size=4)
        draw.line([tuple(points[:2]), tuple(points[2:])], fill=0, width=max(1, size // 15))
    return image.convert("1")


def make_omniglot(root: Path, background: Sequence[int] = (3, 3, 3, 3), evaluation: Sequence[int] = (3, 3),
                  drawings: int = 5, size: int = 105) -> Path:
    """``root/omniglot-py/images_{background,evaluation}/<alphabet>/characterNN/*.png``.

    ``background[a]`` is the number of characters of background alphabet ``a`` (named
    ``Alpha_a``), likewise ``evaluation`` (``Omega_a``).  Returns ``root``.
    """
    seed = 0
    for folder, prefix, alphabets in (("images_background", "Alpha", background),
                                      ("images_evaluation", "Omega", evaluation)):
        for a, characters in enumerate(alphabets):
            for c in range(characters):
                path = root / "omniglot-py" / folder / f"{prefix}_{a}" / f"character{c + 1:02d}"
                path.mkdir(parents=True)
                for d in range(drawings):
                    glyph(seed, d, size).save(path / f"{seed:04d}_{d + 1:02d}.png")
                seed += 1
    return root


def make_mini_imagenet(root: Path, classes: Sequence[int] = (6, 3, 4), per_class: int = 8, size: int = 84,
                       shuffle_rows: bool = False) -> Path:
    """learn2learn's pickles: ``{"image_data": uint8 [N, size, size, 3], "class_dict": {name: rows}}``.

    Class ``n`` of a split has pixels ``(10 * n + row-in-class) % 256`` on channel 0, so tests can
    tell classes apart; ``shuffle_rows`` interleaves the classes' rows.  Returns ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for mode, count in zip(("train", "validation", "test"), classes):
        total = count * per_class
        order = rng.permutation(total) if shuffle_rows else np.arange(total)
        images = rng.integers(0, 256, size=(total, size, size, 3), dtype=np.uint8)
        class_dict = {}
        for n in range(count):
            rows = order[n * per_class:(n + 1) * per_class]
            class_dict[f"n{mode[:2]}{n:05d}"] = [int(r) for r in rows]
            for j, r in enumerate(rows):
                images[r, :, :, 0] = (10 * n + j) % 256
        with open(root / f"mini-imagenet-cache-{mode}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    return root


def make_image_folder(root: Path, classes: int = 10, per_class: int = 4, size: int = 20, mode: str = "RGB",
                      size_of: Optional[Callable[[int, int], tuple[int, int]]] = None,
                      mode_of: Optional[Callable[[int, int], str]] = None, ext: str = "png") -> Path:
    """``root/class_XX/img_YY.<ext>``: class ``c`` has pixels ``(20 * c + 3 * i) % 256`` (image ``i``).

    ``size_of(c, i)`` / ``mode_of(c, i)`` give per-image sizes ``(w, h)`` and PIL modes.
    """
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = size_of(c, i) if size_of else (size, size)
            m = mode_of(c, i) if mode_of else mode
            value = (20 * c + 3 * i) % 256
            color = value if m in ("L", "1") else (value, (value + 85) % 256, (value + 170) % 256)
            Image.new(m, (w, h), color).save(folder / f"img_{i:02d}.{ext}")
    return root


def make_npz(path: Path, classes: int = 30, samples: int = 6, size: int = 12, channels: Optional[int] = None,
             key: str = "X", dtype=np.uint8) -> Path:
    """An .npz whose ``key`` is ``[classes, samples, (channels,) size, size]``; class ``c`` has pixels ``c``."""
    shape = (classes, samples) + ((channels,) if channels else ()) + (size, size)
    x = np.zeros(shape, dtype=dtype)
    for c in range(classes):
        x[c] = c
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{key: x})
    return path
