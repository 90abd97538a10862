"""A messy photo folder for the robustness tests: every format and name that must work, and
every kind of file that must be skipped with a reason (built from real CIFAR-10 test images)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from PIL import Image

# Relative path → expected reason fragment in skipped.csv.
BAD: dict[str, str] = {
    "bad/empty.jpg": "empty",
    "bad/truncated.jpg": "truncated",
    "bad/notes.png": "cannot identify",
    "bad/page.jpeg": "cannot identify",
    "bad/noise.webp": "cannot identify",
    "bad/bomb.png": "too large",
    "bad/dangling.jpg": "broken symlink",
    "bad/outside.jpg": "leaves the source",
}


def _real(data_root: Path, n: int) -> list[Image.Image]:
    """``n`` real CIFAR-10 test images (RGB, 32×32), a few per class."""
    files = sorted((data_root / "cifar10-test").glob("*/*.jpg"))
    step = max(1, len(files) // n)
    return [Image.open(f).convert("RGB") for f in files[::step][:n]]


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring ``width×height`` pixels, with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write_good(src: Path, images: list[Image.Image]) -> list[str]:
    """Every format, mode, geometry and awkward name that must be assigned; their paths."""
    it = iter(images)
    good: dict[str, Image.Image | tuple[Image.Image, dict]] = {
        "formats/cmyk.jpg": next(it).convert("CMYK"),
        "formats/sixteen.png": next(it).convert("L").convert("I;16"),
        "formats/palette.png": next(it).convert("P", palette=Image.Palette.ADAPTIVE),
        "formats/alpha.png": next(it).convert("RGBA"),
        "formats/gray.png": next(it).convert("L"),
        "formats/pic.webp": next(it),
        "formats/pic.bmp": next(it),
        "formats/pic.tiff": next(it),
        "formats/UPPER.JPG": next(it),
        "formats/Mixed.Png": next(it),
        "geometry/one.png": next(it).resize((1, 1)),
        "geometry/wide.png": next(it).resize((4000, 20)),
        "geometry/large.jpg": next(it).resize((3000, 2000)),
        "a/same.jpg": next(it),
        "b/same.jpg": next(it),
        "names/ünïcödé 写真.jpg": next(it),
        "names/with space, comma.jpg": next(it),
        "names/quote\"s'.png": next(it),
        "names/new\nline.png": next(it),
        "names/[bold]markup[red].png": next(it),
    }
    for rel, im in good.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".png": "PNG"}.get(Path(rel).suffix.lower())
        im.save(path, format=fmt)
    frames = [next(it), next(it)]
    frames[0].save(src / "formats/anim.gif", save_all=True, append_images=frames[1:], duration=50)
    rotated = next(it).resize((40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(src / "formats/rotated.jpg", exif=exif.tobytes())
    return sorted([*good, "formats/anim.gif", "formats/rotated.jpg"])


def _write_bad(src: Path, outside: Path, sample: Image.Image) -> None:
    """Files that must be skipped with a reason, and entries to pass over silently."""
    bad = src / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    sample.resize((64, 64)).save(bad / "whole.jpg.tmp", format="JPEG")
    whole = (bad / "whole.jpg.tmp").read_bytes()
    (bad / "whole.jpg.tmp").unlink()
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (bad / "notes.png").write_text("just some text\n")
    (bad / "page.jpeg").write_text("<!doctype html><html><body>404</body></html>")
    (bad / "noise.webp").write_bytes(os.urandom(3000))
    (bad / "bomb.png").write_bytes(_bomb_png(60_000, 60_000))
    os.symlink(bad / "missing.jpg", bad / "dangling.jpg")
    outside.mkdir(exist_ok=True)
    sample.save(outside / "elsewhere.jpg")
    os.symlink(outside / "elsewhere.jpg", bad / "outside.jpg")
    # Passed over without a word: a folder named like an image, a cycle, other files.
    (src / "folder.jpg").mkdir()
    sample.save(src / "folder.jpg" / "inside.png")
    os.symlink(src, src / "loop")
    os.symlink(bad / "cycle-b.jpg", bad / "cycle-a.jpg")
    os.symlink(bad / "cycle-a.jpg", bad / "cycle-b.jpg")
    (src / "readme.txt").write_text("not an image")
    (src / "data.json").write_text("{}")


def build_corpus(data_root: Path, src: Path, outside: Path) -> tuple[list[str], dict[str, str]]:
    """Write the corpus under ``src`` (links pointing to ``outside`` too).

    Returns the relative paths that must be assigned and the bad ones with their reasons
    (cycle links count as broken: a loop cannot be followed).
    """
    src.mkdir(parents=True)
    images = _real(data_root, 40)
    good = _write_good(src, images) + ["folder.jpg/inside.png"]
    _write_bad(src, outside, images[-1])
    bad = dict(BAD)
    bad["bad/cycle-a.jpg"] = "broken symlink"
    bad["bad/cycle-b.jpg"] = "broken symlink"
    return sorted(good), bad
