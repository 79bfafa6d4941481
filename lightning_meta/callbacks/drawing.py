"""Small Pillow drawings for the visual callbacks: line charts, image tiles, grids (no matplotlib).

The callbacks that draw (:class:`~lightning_meta.callbacks.AdaptationCurve`,
:class:`~lightning_meta.callbacks.EpisodeGallery`, :class:`~lightning_meta.callbacks.RegressionPlot`)
need a handful of plain pictures; Pillow is already a dependency (torchvision, W&B images), so a few
lines here spare the package a plotting library.

Example::

    from lightning_meta.callbacks.drawing import Series, line_chart, save_png

    image = line_chart([Series([0, 1, 2], [0.2, 0.6, 0.7], label="epoch 3", band=[0.05, 0.04, 0.04])],
                       title="val: accuracy after k inner steps", x_label="inner step", y_label="accuracy")
    save_png(image, "curve.png")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

Colour = tuple[int, int, int]

WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)
GREY: Colour = (150, 150, 150)
LIGHT_GREY: Colour = (225, 225, 225)
GREEN: Colour = (0, 160, 60)
RED: Colour = (215, 30, 30)
BLUE: Colour = (31, 119, 180)
ORANGE: Colour = (255, 127, 14)

#: distinct series colours (the "tab10" colours)
PALETTE: tuple[Colour, ...] = (BLUE, ORANGE, (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (a bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, text_font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=text_font)
    return right - left, bottom - top


def blend(colour: Colour, towards: Colour = WHITE, amount: float = 0.5) -> Colour:
    """``colour`` moved ``amount`` of the way to ``towards`` (a lighter shade with the default)."""
    return tuple(round(c + (t - c) * amount) for c, t in zip(colour, towards))  # type: ignore[return-value]


@dataclass
class Series:
    """One series of a :func:`line_chart`.

    ``style``: ``"line"``, ``"dashed"`` or ``"points"``; ``band``: half-widths of a shaded interval
    around ``y`` (e.g. a 95% CI), or ``None``; ``markers``: dots at the data points of a line.
    """

    x: Sequence[float]
    y: Sequence[float]
    label: str = ""
    colour: Colour = BLUE
    style: str = "line"
    band: Optional[Sequence[float]] = None
    width: int = 2
    markers: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(0.0 if abs(value) < 1e-12 * step else value)
        value += step
    return ticks


def _tick_label(value: float, step: float) -> str:
    if step >= 1 and float(value).is_integer():
        return str(int(value))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if not round(step * 10 ** decimals, 6).is_integer():   # 2.5 x 10^k
        decimals += 1
    return f"{value:.{decimals}f}"


def _range(values: list[float], given: Optional[tuple[float, float]]) -> tuple[float, float]:
    if given is not None:
        return given
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        pad = abs(high) * 0.1 or 0.5
        return low - pad, high + pad
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def line_chart(series: Sequence[Series], *, title: str = "", x_label: str = "", y_label: str = "",
               size: tuple[int, int] = (640, 480), x_range: Optional[tuple[float, float]] = None,
               y_range: Optional[tuple[float, float]] = None, integer_x: bool = False,
               legend: bool = True) -> Image.Image:
    """An RGB chart of ``series`` with axes, ticks, grid, optional title, axis labels and legend.

    Axis ranges default to the data (bands included) with a 5% margin; ``integer_x`` puts ticks on
    whole numbers only (inner steps).
    """
    width, height = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    small, large = font(11), font(14)
    xs = [float(v) for s in series for v in s.x]
    ys = [float(v) for s in series for v in s.y]
    for s in series:
        if s.band is not None:
            ys += [float(v) + float(b) for v, b in zip(s.y, s.band)]
            ys += [float(v) - float(b) for v, b in zip(s.y, s.band)]
    x_low, x_high = _range(xs, x_range)
    if integer_x and x_range is None and xs:
        x_low, x_high = min(xs) - 0.25, max(xs) + 0.25
    y_low, y_high = _range(ys, y_range)

    left, right = 62, width - 14
    top = 34 if title else 14
    bottom = height - (46 if x_label else 30)
    if title:
        w, _ = text_size(draw, title, large)
        draw.text(((width - w) // 2, 9), title, fill=BLACK, font=large)

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_low) / (y_high - y_low) * (bottom - top)

    y_ticks = nice_ticks(y_low, y_high)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for value in y_ticks:
        y = py(value)
        draw.line([(left, y), (right, y)], fill=LIGHT_GREY)
        label = _tick_label(value, y_step)
        w, h = text_size(draw, label, small)
        draw.text((left - w - 6, y - h / 2 - 2), label, fill=BLACK, font=small)
    if integer_x:
        span = max(1, math.ceil((x_high - x_low) / 10))
        x_ticks = [float(v) for v in range(math.ceil(x_low), math.floor(x_high) + 1) if v % span == 0]
    else:
        x_ticks = nice_ticks(x_low, x_high)
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for value in x_ticks:
        x = px(value)
        draw.line([(x, top), (x, bottom)], fill=LIGHT_GREY)
        label = _tick_label(value, x_step)
        w, _ = text_size(draw, label, small)
        draw.text((x - w / 2, bottom + 5), label, fill=BLACK, font=small)
    draw.rectangle([left, top, right, bottom], outline=BLACK)
    if x_label:
        w, _ = text_size(draw, x_label, small)
        draw.text(((left + right - w) / 2, height - 18), x_label, fill=BLACK, font=small)
    if y_label:
        w, h = text_size(draw, y_label, small)
        rotated = Image.new("RGB", (w + 4, h + 6), WHITE)
        ImageDraw.Draw(rotated).text((2, 0), y_label, fill=BLACK, font=small)
        rotated = rotated.rotate(90, expand=True)
        image.paste(rotated, (2, int((top + bottom - rotated.height) / 2)))

    plot = Image.new("RGB", size, WHITE)  # drawn clipped to the plot area, then pasted
    canvas = ImageDraw.Draw(plot, "RGBA")   # translucent bands: overlapping intervals stay visible
    for s in series:
        if s.band is not None and len(s.x) > 1:
            upper = [(px(float(x)), py(float(y) + float(b))) for x, y, b in zip(s.x, s.y, s.band)]
            lower = [(px(float(x)), py(float(y) - float(b))) for x, y, b in zip(s.x, s.y, s.band)]
            canvas.polygon(upper + lower[::-1], fill=(*s.colour, 64))
    for s in series:
        points = [(px(float(x)), py(float(y))) for x, y in zip(s.x, s.y) if math.isfinite(float(y))]
        if s.style == "points":
            for x, y in points:
                canvas.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=s.colour, outline=BLACK)
            continue
        if s.style == "dashed":
            _dashed(canvas, points, s.colour, s.width)
        elif len(points) > 1:
            canvas.line(points, fill=s.colour, width=s.width, joint="curve")
        if s.markers or len(points) == 1:
            for x, y in points:
                canvas.ellipse([x - 3, y - 3, x + 3, y + 3], fill=s.colour)
    box = (left + 1, top + 1, right, bottom)
    drawn = plot.crop(box)
    drawn_mask = _differs(drawn, Image.new("RGB", drawn.size, WHITE))   # the series, clipped to the plot
    image.paste(Image.composite(drawn, image.crop(box), drawn_mask), box[:2])

    if legend:
        _legend(draw, [s for s in series if s.label], right - 8, top + 8, small)
    return image


def _differs(a: Image.Image, b: Image.Image) -> Image.Image:
    """A mask, 255 where ``a`` and ``b`` differ."""
    from PIL import ImageChops

    return ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)


def _dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: Colour, width: int,
            dash: float = 8.0, gap: float = 5.0) -> None:
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        position = 0.0
        while position < length:
            step = min(left, length - position)
            if on:
                a, b = position / length, (position + step) / length
                draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                          fill=colour, width=width)
            position += step
            left -= step
            if left <= 0:
                on = not on
                left = dash if on else gap


def _legend(draw: ImageDraw.ImageDraw, series: Sequence[Series], right: float, top: float,
            text_font: ImageFont.ImageFont) -> None:
    if not series:
        return
    sizes = [text_size(draw, s.label, text_font) for s in series]
    row = max(14, max(h for _, h in sizes) + 5)
    width = max(w for w, _ in sizes) + 34
    left = right - width
    draw.rectangle([left, top, right, top + row * len(series) + 6], fill=WHITE, outline=GREY)
    for i, s in enumerate(series):
        y = top + 4 + i * row + row / 2
        if s.style == "points":
            draw.ellipse([left + 11, y - 3.5, left + 18, y + 3.5], fill=s.colour, outline=BLACK)
        elif s.style == "dashed":
            _dashed(draw, [(left + 5, y), (left + 25, y)], s.colour, s.width, dash=5, gap=3)
        else:
            draw.line([(left + 5, y), (left + 25, y)], fill=s.colour, width=s.width)
        draw.text((left + 30, y - row / 2 + 1), s.label, fill=BLACK, font=text_font)


def image_tile(image: Tensor, size: int, low: Optional[float] = None, high: Optional[float] = None) -> Image.Image:
    """One image tensor ``[C, H, W]`` (or ``[H, W]``) as an RGB tile whose longer side is ``size`` pixels.

    Pixel values are mapped linearly from ``[low, high]`` (default: the image's own range) to
    ``0..255``; one channel is drawn grey, three as RGB, any other count by its first channel.
    """
    x = image.detach().float().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"image_tile takes [C, H, W] images, got shape {tuple(image.shape)}")
    if x.shape[0] != 3:
        x = x[:1]
    low = float(x.min()) if low is None else low
    high = float(x.max()) if high is None else high
    scaled = ((x - low) / max(high - low, 1e-12)).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = scaled.permute(1, 2, 0).numpy()
    tile = Image.fromarray(array[..., 0], "L") if array.shape[-1] == 1 else Image.fromarray(array, "RGB")
    h, w = array.shape[:2]
    scale = size / max(h, w)
    return tile.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)


def stack_vertically(images: Sequence[Image.Image], gap: int = 8, background: Colour = WHITE) -> Image.Image:
    """``images`` one below the other, left-aligned, ``gap`` pixels apart."""
    width = max(im.width for im in images)
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), background)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out


def grid(images: Sequence[Image.Image], columns: int, gap: int = 6, background: Colour = WHITE) -> Image.Image:
    """``images`` (all of the first one's size) in rows of ``columns``."""
    cell_w, cell_h = images[0].size
    rows = math.ceil(len(images) / columns)
    out = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), background)
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * (cell_w + gap), (i // columns) * (cell_h + gap)))
    return out


def save_png(image: Image.Image, path: Union[str, os.PathLike]) -> Path:
    """Write ``image`` to ``path`` atomically (a temporary file, then a rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)
    return path
