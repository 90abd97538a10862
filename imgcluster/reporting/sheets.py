"""Contact sheets (the paper's Fig. 6): a cluster's images as one PNG grid, made with Pillow.

Each tile is the image's centre square (:func:`imgcluster.data.decode.decode_image`, so EXIF
orientation and odd modes are handled as in training) with its confidence printed under it.
An image that cannot be read again shows its decoded training copy if one is given, else a grey
tile with a question mark. Never imports torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imgcluster.data.decode import DecodeError, decode_image, image_shape

TILE = 112  # pixels per tile side
COLUMNS = 8
_GAP = 6
_CAPTION = 18
_BACKGROUND = (255, 255, 255)
_TEXT = (90, 90, 100)


def contact_sheet(
    root: Path,
    paths: Sequence[str],
    captions: Sequence[str],
    fallback: Sequence[np.ndarray | None] | None = None,
    *,
    tile: int = TILE,
    columns: int = COLUMNS,
) -> Image.Image:
    """A grid of ``paths`` (relative to ``root``), ``columns`` wide, each tile captioned.

    ``fallback[i]``, a uint8 ``3×S×S`` array, stands in for an image that cannot be read.
    """
    (width, height), boxes = tile_boxes(len(paths), tile, columns)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for i, (path, caption) in enumerate(zip(paths, captions)):
        x, y = boxes[i][:2]
        spare = fallback[i] if fallback is not None else None
        sheet.paste(_tile(root / path, tile, spare), (x, y))
        draw.text((x + tile / 2, y + tile + 3), caption, fill=_TEXT, font=font, anchor="ma")
    return sheet


def tile_boxes(
    n: int, tile: int = TILE, columns: int = COLUMNS
) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    """The layout of a sheet of ``n`` tiles: its (width, height) and each tile's image box
    (x, y, width, height) in pixels, so that a page can put a link over every image."""
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    cell_w, cell_h = tile + _GAP, tile + _CAPTION + _GAP
    boxes = [
        (_GAP + (i % cols) * cell_w, _GAP + (i // cols) * cell_h, tile, tile) for i in range(n)
    ]
    return (cols * cell_w + _GAP, rows * cell_h + _GAP), boxes


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG file content (optimised: contact sheets are viewed, not edited)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _tile(path: Path, size: int, spare: np.ndarray | None) -> Image.Image:
    """The image's centre square at ``size`` px; tiny images are enlarged with visible pixels
    (a 8-px digit blurred to 112 px is unreadable)."""
    try:
        side = min(min(image_shape(path)), size)
        return _enlarge(decode_image(path, side), size)
    except DecodeError:
        pass
    if spare is not None:
        return _enlarge(spare, size)
    blank = Image.new("RGB", (size, size), (225, 225, 230))
    ImageDraw.Draw(blank).text(
        (size / 2, size / 2), "?", fill=(150, 150, 160), font=_font(size // 3), anchor="mm"
    )
    return blank


def _enlarge(image: np.ndarray, size: int) -> Image.Image:
    """uint8 ``3×s×s`` → ``size``-px RGB tile: blocky when enlarged 4× or more, else smooth."""
    tile = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB")
    if tile.width == size:
        return tile
    blocky = tile.width * 4 <= size
    method = Image.Resampling.NEAREST if blocky else Image.Resampling.BICUBIC
    return tile.resize((size, size), method)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (a fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()
