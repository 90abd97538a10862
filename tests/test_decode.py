"""Tests for imgcluster.data.decode: every Pillow mode to RGB, orientation, geometry, bad files."""

from __future__ import annotations

import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from imgcluster.data.decode import MAX_PIXELS, DecodeError, decode_image, image_shape

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny valid-looking PNG whose IHDR declares ``width`` x ``height`` (pixel data absent)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    assert path.stat().st_size < 200
    return path


def _close(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    im = Image.new("RGB", (width, height), BLUE)
    im.paste(RED, (0, 0, width // 2, height))
    return im


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"),
                                     ("BMP", "bmp"), ("TIFF", "tif"), ("GIF", "gif"),
                                     ("PPM", "ppm")])  # fmt: skip
def test_formats_give_square_rgb(tmp_path: Path, fmt: str, ext: str) -> None:
    path = tmp_path / f"im.{ext}"
    Image.new("RGB", (50, 40), RED).save(path, fmt)
    out = decode_image(path, 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    assert _close(out[:, 8, 8], RED)


def test_large_jpeg_uses_shorter_side_and_centre(tmp_path: Path) -> None:
    # 400x200: shorter side -> 32, centre crop keeps the middle (red|blue boundary in the middle).
    path = tmp_path / "wide.jpg"
    _halves(400, 200).save(path, quality=95)
    out = decode_image(path, 32)
    assert out.shape == (3, 32, 32)
    assert _close(out[:, 16, 2], RED) and _close(out[:, 16, 29], BLUE)


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _halves(40, 20).save(path, exif=exif.tobytes(), quality=95)
    reference = ImageOps.exif_transpose(Image.open(path))
    assert reference.size == (20, 40)
    assert image_shape(path) == (20, 40)
    out = decode_image(path, 16)
    # Orientation 6 turns the picture 90 degrees clockwise: the left (red) half ends on top.
    ref_top = reference.getpixel((10, 2))
    assert _close(np.array(ref_top), RED)
    assert _close(out[:, 1, 8], RED) and _close(out[:, 14, 8], BLUE)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(path)  # red in CMYK
    assert Image.open(path).mode == "CMYK"
    assert _close(decode_image(path, 8)[:, 4, 4], RED, tol=50)


@pytest.mark.parametrize("value,expected", [(32768, 128), (65535, 255), (0, 0), (257 * 10, 10)])
def test_16bit_png_scaled_not_clipped(tmp_path: Path, value: int, expected: int) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((12, 12), value, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    out = decode_image(path, 8)
    assert abs(int(out[0, 4, 4]) - expected) <= 1
    assert np.all(out == out[0, 4, 4])


def test_32bit_int_tiff_in_16bit_range(tmp_path: Path) -> None:
    path = tmp_path / "int.tif"
    Image.fromarray(np.full((10, 10), 32768, dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert abs(int(decode_image(path, 4)[0, 0, 0]) - 128) <= 1


def test_float_tiff_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((10, 10), 0.5, dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert abs(int(decode_image(path, 4)[0, 0, 0]) - 128) <= 1


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (0, 0, 5, 10))  # left half palette index 1 = red, right half index 0
    im.save(path, transparency=0)
    out = decode_image(path, 10)
    assert _close(out[:, 5, 1], RED, tol=0) and _close(out[:, 5, 8], (255, 255, 255), tol=0)


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    im.save(path)
    assert _close(decode_image(path, 10)[:, 5, 5], BLUE, tol=0)


def test_rgba_and_la_composite_onto_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (5, 0, 10, 10))  # fully transparent black -> white
    rgba.save(tmp_path / "rgba.png")
    out = decode_image(tmp_path / "rgba.png", 10)
    assert _close(out[:, 5, 1], RED, tol=0) and _close(out[:, 5, 8], (255, 255, 255), tol=0)
    Image.new("LA", (10, 10), (0, 0)).save(tmp_path / "la.png")
    assert np.all(decode_image(tmp_path / "la.png", 4) == 255)
    Image.new("LA", (10, 10), (0, 128)).save(tmp_path / "la_half.png")
    assert np.all(np.abs(decode_image(tmp_path / "la_half.png", 4).astype(int) - 127) <= 1)


def test_gray_and_bilevel_give_equal_channels(tmp_path: Path) -> None:
    Image.new("L", (10, 10), 77).save(tmp_path / "gray.png")
    out = decode_image(tmp_path / "gray.png", 6)
    assert np.all(out == 77)
    Image.new("1", (10, 10), 1).save(tmp_path / "bw.png")
    assert np.all(decode_image(tmp_path / "bw.png", 6) == 255)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    assert _close(decode_image(path, 8)[:, 4, 4], RED, tol=10)


@pytest.mark.parametrize("dims", [(1, 1), (3000, 4), (4, 3000), (5000, 3)])
def test_extreme_geometry(tmp_path: Path, dims: tuple[int, int]) -> None:
    path = tmp_path / "odd.png"
    Image.new("RGB", dims, (10, 200, 30)).save(path)
    start = time.perf_counter()
    out = decode_image(path, 32)
    assert time.perf_counter() - start < 2.0
    assert out.shape == (3, 32, 32)
    assert _close(out[:, 16, 16], (10, 200, 30), tol=2)


def test_real_images(data_root: Path) -> None:
    cifar = decode_image(data_root / "cifar10-test" / "cat" / "0000.jpg", 32)
    assert cifar.shape == (3, 32, 32) and cifar.std() > 0
    gray = data_root / "imagenette-val" / "English_springer" / "n02102040_1980.JPEG"
    out = decode_image(gray, 96)
    assert out.shape == (3, 96, 96)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


def test_deterministic(data_root: Path) -> None:
    path = data_root / "imagenette-val" / "church"
    first = sorted(path.iterdir())[0]
    assert np.array_equal(decode_image(first, 96), decode_image(first, 96))


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not an image\n"), "cannot identify image file"),
    ],
)
def test_bad_files(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(DecodeError, match=reason):
        decode_image(path, 32)


def test_truncated_jpeg(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(cut, 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="not found"):
        decode_image(tmp_path / "nope.png", 32)
    with pytest.raises(DecodeError):
        image_shape(tmp_path / "nope.png")


def test_decompression_bomb_refused_fast(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="too large"):
        decode_image(bomb, 32)
    assert time.perf_counter() - start < 1.0
    assert warnings.filters == filters_before and limit_before == Image.MAX_IMAGE_PIXELS


def test_over_our_limit_but_under_pillows(tmp_path: Path) -> None:
    # 70 Mpx: Pillow would only warn; MAX_PIXELS refuses it before any pixel is decoded.
    path = _png_header_only(tmp_path / "big.png", 10_000, 7_000)
    assert MAX_PIXELS < 10_000 * 7_000
    with pytest.raises(DecodeError, match="too large \\(10000\u00d77000 pixels\\)"):
        decode_image(path, 32)
    assert image_shape(path) == (10_000, 7_000)


def test_image_shape_reads_header(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (31, 17)).save(path)
    assert image_shape(path) == (31, 17)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DecodeError):
        image_shape(tmp_path / "bad.png")
