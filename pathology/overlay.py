"""The picture to check a tiling by eye: thumbnail, tissue contours (green), holes (blue), kept tiles (shaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MAX_SIDE = 1024  # the overlay's longest side (TRIDENT draws its contour/patch previews at 1000 px)


def draw_overlay(
    thumb: np.ndarray,
    scale: tuple[float, float],
    polygons: list,
    coords: np.ndarray,
    size0: int,
    caption: str,
    path: str | Path,
) -> None:
    """Save a PNG of ``thumb`` (``scale`` = level-0 px per thumbnail px, x and y) with the tissue ``polygons``
    (level-0 coordinates) and the tiles ``coords`` of side ``size0`` (level 0) drawn over it."""
    image = Image.fromarray(thumb).convert("RGBA")
    shrink = min(1.0, MAX_SIDE / max(image.size))
    if shrink < 1.0:
        image = image.resize((max(1, round(image.width * shrink)), max(1, round(image.height * shrink))))
    sx, sy = scale[0] / shrink, scale[1] / shrink
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    side = size0 / sx
    for x, y in coords:
        box = [x / sx, y / sy, x / sx + side, y / sy + side]
        draw.rectangle(box, fill=(40, 90, 255, 50), outline=(40, 90, 255, 160) if side >= 6 else None)
    width = max(1, round(max(image.size) / 400))
    for poly in polygons:
        for part in getattr(poly, "geoms", [poly]):
            draw.line([(px / sx, py / sy) for px, py in part.exterior.coords], fill=(0, 170, 0, 255), width=width)
            for ring in part.interiors:
                draw.line([(px / sx, py / sy) for px, py in ring.coords], fill=(0, 60, 255, 255), width=width)
    out = Image.alpha_composite(image, layer)
    header = ImageDraw.Draw(out)
    text_box = header.textbbox((4, 4), caption)
    header.rectangle([0, 0, text_box[2] + 4, text_box[3] + 4], fill=(0, 0, 0, 170))
    header.text((4, 4), caption, fill=(255, 255, 255, 255))
    out.convert("RGB").save(path, format="PNG")
