"""Decode-once image cache: every image of a run as one memory-mapped ``uint8`` array.

Scope: choosing the cache folder and key, decoding a list of files (in parallel worker
processes) into ``<cache_dir>/<key>.npy`` of shape ``N x 3 x S x S`` with a JSON manifest beside
it, reusing a complete cache from an earlier run on the same files, and picking a default image
size from the image headers. Files are written to a temporary name and renamed into place, and a
torn or mismatched cache is rebuilt, never used. This module must not import torch: its worker
processes only need numpy and Pillow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from imgcluster.atomic import fsync_dir, process_alive, replace_atomically
from imgcluster.data import workers as workers_mod
from imgcluster.data.cache_folder import cache_dir_default
from imgcluster.data.decode import DecodeError, decode_image, image_shape, resize_array
from imgcluster.events import Callback, Progress

FORMAT_VERSION = 2  # bump when the decode pipeline or file layout changes (2: bilinear resize)
_DECODER_ID = f"imgcluster-decode-v{FORMAT_VERSION}/pillow-{PIL.__version__}"
_COPY_ROWS = 1024  # rows per step when compacting, bounds RAM use

ChunkResult = tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]
Written = tuple[int, list[tuple[int, str]]]  # rows written into the array file, failures
Stamps = Mapping[str, tuple[int, int]]  # relative path -> (byte size, mtime in ns)


class CacheWriteError(OSError):
    """The array file could not be written (a full disk, say). Unlike a broken worker pool,
    decoding in this process instead would fail the same way, so it is not retried."""


@dataclass(frozen=True)
class ArrayFile:
    """The ``.npy`` being built: its rows (``row_bytes`` each) start ``offset`` bytes in.

    Rows are written with plain writes, never through a memory map: on a full disk a write
    raises (:class:`CacheWriteError`), where a store into a mapped page would kill the process
    with SIGBUS.
    """

    file: str
    offset: int
    row_bytes: int

    @classmethod
    def create(cls, path: Path, rows: int, size: int) -> ArrayFile:
        """A new ``rows×3×size×size`` uint8 ``.npy`` at ``path``, all zero until written."""
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, 3, size, size), np.uint8))
        try:
            with open(path, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {**header, "shape": (rows, 3, size, size)})
                target = cls(str(path), fh.tell(), 3 * size * size)
                fh.truncate(target.offset + rows * target.row_bytes)
        except OSError as exc:
            raise CacheWriteError(exc.errno, exc.strerror or str(exc)) from exc
        return target

    def write_rows(self, runs: Iterable[tuple[int, np.ndarray]]) -> None:
        """Write each ``(first row, consecutive rows)`` of ``runs`` at its place."""
        try:
            with open(self.file, "r+b", buffering=0) as fh:
                for first, rows in runs:
                    fh.seek(self.offset + first * self.row_bytes)
                    _write_all(fh, memoryview(np.ascontiguousarray(rows)).cast("B"))
        except OSError as exc:
            raise CacheWriteError(exc.errno, exc.strerror or str(exc)) from exc


@dataclass
class ImageCache:
    """Decoded images of one run.

    ``images`` is a read-only memory map of shape ``(N, 3, S, S)``; row ``i`` is ``paths[i]``.
    ``skipped`` lists ``(path, reason)`` for files that failed to decode. ``reused`` is true
    when the arrays came from an earlier run and nothing was decoded.
    """

    images: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]]
    file: Path
    reused: bool


def cache_key(root: Path, paths: Sequence[str], size: int, stamps: Stamps | None = None) -> str:
    """Hex key over each file's relative path, byte size and mtime, the image size and decoder.

    Editing, adding, removing or reordering files gives a new key. A file that cannot be
    stat-ed is hashed as missing (it will fail to decode and be skipped). ``stamps`` (a scan's
    :attr:`imgcluster.data.scan.ScanResult.stamps`) saves stat-ing the files it holds again.
    """
    digest = hashlib.sha256()
    digest.update(f"{_DECODER_ID}\0size={int(size)}\0n={len(paths)}\0".encode())
    known = stamps or {}
    for rel in paths:
        try:
            file_size, mtime_ns = known.get(rel) or _stamp(os.path.join(root, rel))
            stamp = f"{file_size}\0{mtime_ns}"
        except OSError:
            stamp = "missing\0"
        # NUL cannot occur in a file name, so the fields cannot run into each other.
        digest.update(f"{rel}\0{stamp}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Survey:
    """What the headers of an evenly spaced sample of a folder's images say (nothing decoded):
    the median shorter side (None: no sample readable)."""

    shorter_side: float | None

    @property
    def small(self) -> bool:
        """Images of at most ~48 px (CIFAR's 32, MNIST's 28): upscaled for any network."""
        return self.shorter_side is not None and self.shorter_side <= SMALL_IMAGE_SIDE


SMALL_IMAGE_SIDE = 48


def survey(root: Path, paths: Sequence[str], sample: int = 64) -> Survey:
    """:class:`Survey` of ``paths`` (relative to ``root``) from up to ``sample`` headers;
    unreadable samples are ignored."""
    if not paths or sample < 1:
        return Survey(None)
    picks = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int))
    headers = []
    for i in picks:
        try:
            headers.append(image_shape(os.path.join(root, paths[i])))
        except DecodeError:
            continue
    if not headers:
        return Survey(None)
    return Survey(float(np.median([min(w, h) for w, h in headers])))


def default_image_size(
    root: Path, paths: Sequence[str], sample: int = 64, sides: tuple[int, int] = (32, 96)
) -> int:
    """``sides[0]`` when the median shorter side of a sample is at most ~48 px, else
    ``sides[1]`` (also when no sample is readable). Only image headers are read."""
    return sides[0] if survey(root, paths, sample).small else sides[1]


def build_cache(
    root: Path,
    paths: Sequence[str],
    size: int,
    cache_dir: Path | None = None,
    *,
    workers: int | None = None,
    progress: Callback | None = None,
    stamps: Stamps | None = None,
) -> ImageCache:
    """Decode ``paths`` (relative to ``root``) once into a memory-mapped array, or reuse it.

    Files that fail to decode are left out of the array and listed in ``skipped``; if every
    file fails the result has ``N == 0``. ``workers`` defaults to the usable CPU count; ``1``
    decodes in this process. ``progress`` gets a 'decode' event after each decoded chunk (not
    on reuse). ``stamps``: see :func:`cache_key`.
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    paths = list(paths)
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(root, paths, size, stamps)
    npy, manifest = folder / f"{key}.npy", folder / f"{key}.json"
    cached = _load_existing(npy, manifest, paths, size)
    if cached is not None:
        return cached
    # A stale manifest must not vouch for the new array if this build is interrupted.
    manifest.unlink(missing_ok=True)
    _remove_dead_temporaries(folder, key)
    failures = _write_array(Path(root), paths, size, npy, workers, progress)
    good, skipped = _split(paths, failures)
    _write_manifest(manifest, npy, size, len(paths), good, skipped)
    images = np.load(npy, mmap_mode="r")
    return ImageCache(images=images, paths=good, skipped=skipped, file=npy, reused=False)


def find_cache(
    root: Path,
    paths: Sequence[str],
    size: int,
    cache_dir: Path | None = None,
    stamps: Stamps | None = None,
) -> ImageCache | None:
    """The complete cache of exactly these files at this size, if an earlier run built one.

    Never decodes nor writes (``assign`` uses it to skip decoding a run's own images).
    ``stamps``: see :func:`cache_key`.
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    key = cache_key(root, paths, size, stamps)
    return _load_existing(folder / f"{key}.npy", folder / f"{key}.json", list(paths), size)


def cache_arrays(
    images: np.ndarray,
    paths: Sequence[str],
    key: str,
    size: int,
    cache_dir: Path | None = None,
    *,
    progress: Callback | None = None,
) -> ImageCache:
    """Images that already are arrays (a benchmark's data files) as a cache, written once.

    ``images`` is ``N x 3 x H x W`` uint8 and row ``i`` is named ``paths[i]`` (a name, not
    necessarily a file). Rows are resized to ``size`` like decoded files. ``key`` identifies
    the source, e.g. :func:`cache_key` over the data files; a complete cache under it is reused.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"need N x 3 x H x W uint8 images, got {images.dtype} {images.shape}")
    if len(paths) != len(images):
        raise ValueError(f"{len(paths)} paths for {len(images)} images")
    paths = list(paths)
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    folder.mkdir(parents=True, exist_ok=True)
    npy, manifest = folder / f"{key}.npy", folder / f"{key}.json"
    cached = _load_existing(npy, manifest, paths, size)
    if cached is not None:
        return cached
    manifest.unlink(missing_ok=True)
    tmp = npy.with_name(f"{npy.name}.tmp-{os.getpid()}")
    try:
        out = ArrayFile.create(tmp, len(paths), size)
        for begin in range(0, len(paths), _COPY_ROWS):
            chunk = images[begin : begin + _COPY_ROWS]
            out.write_rows([(begin, np.stack([resize_array(im, size) for im in chunk]))])
            if progress is not None:
                progress(Progress("decode", begin + len(chunk), len(paths)))
        _fsync_file(tmp)
        os.replace(tmp, npy)
    finally:
        tmp.unlink(missing_ok=True)
    _write_manifest(manifest, npy, size, len(paths), paths, [])
    return ImageCache(np.load(npy, mmap_mode="r"), paths, [], npy, reused=False)


def _write_array(
    root: Path,
    paths: Sequence[str],
    size: int,
    npy: Path,
    workers: int | None,
    progress: Callback | None,
) -> dict[int, str]:
    """Decode into a temporary file, then move it (or its good rows) to ``npy``; return failures."""
    tmp = npy.with_name(f"{npy.name}.tmp-{os.getpid()}")
    try:
        failures = _decode_all(root, paths, size, tmp, workers, progress)
        if failures:
            _compact(tmp, [i for i in range(len(paths)) if i not in failures], npy)
        else:
            _fsync_file(tmp)
            os.replace(tmp, npy)
    finally:
        tmp.unlink(missing_ok=True)
    return failures


def _remove_dead_temporaries(folder: Path, key: str) -> None:
    """Delete the temporary files of a build of ``key`` killed earlier (its process is gone):
    a decode killed by SIGKILL cannot clean up, and its half-written array may be large."""
    for tmp in folder.glob(f"{key}.*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _write_manifest(
    manifest: Path,
    npy: Path,
    size: int,
    candidates: int,
    good: list[str],
    skipped: list[tuple[str, str]],
) -> None:
    """Write the JSON manifest after the array: its presence marks the cache complete."""
    meta = {
        "format": FORMAT_VERSION,
        "decoder": _DECODER_ID,
        "size": size,
        "n": len(good),
        "candidates": candidates,
        "paths": good,
        "skipped": [list(item) for item in skipped],
        "npy_bytes": npy.stat().st_size,
    }
    # ASCII escapes (json's default) keep undecodable (surrogate-escaped) names round-trippable.
    replace_atomically(manifest, json.dumps(meta).encode("ascii"))
    fsync_dir(manifest.parent)


def _split(
    paths: Sequence[str], failures: dict[int, str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Paths that decoded, in input order, and ``(path, reason)`` for those that did not."""
    good = [p for i, p in enumerate(paths) if i not in failures]
    skipped = [(paths[i], reason) for i, reason in sorted(failures.items())]
    return good, skipped


def _load_existing(npy: Path, manifest: Path, paths: Sequence[str], size: int) -> ImageCache | None:
    """The cache on disk if it is complete and matches the request, else ``None``."""
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        good = [str(p) for p in meta["paths"]]
        skipped = [(str(p), str(r)) for p, r in meta["skipped"]]
        valid = (
            meta["format"] == FORMAT_VERSION
            and meta["decoder"] == _DECODER_ID
            and meta["size"] == size
            and meta["n"] == len(good)
            and meta["candidates"] == len(paths) == len(good) + len(skipped)
            and meta["npy_bytes"] == npy.stat().st_size
        )
        if not valid:
            return None
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, torn or foreign files: rebuild
    if images.dtype != np.uint8 or images.shape != (len(good), 3, size, size):
        return None
    return ImageCache(images=images, paths=good, skipped=skipped, file=npy, reused=True)


def _decode_all(
    root: Path,
    paths: Sequence[str],
    size: int,
    tmp: Path,
    workers: int | None,
    progress: Callback | None,
) -> dict[int, str]:
    """Decode every path into row ``i`` of a new ``.npy`` at ``tmp``; return failures by index.

    The file is created at its full size; each decoder (this process or a worker) writes the
    rows it decoded in place, so a worker's pixels never travel back through a pipe.
    """
    total = len(paths)
    target = ArrayFile.create(tmp, total, size)
    failures: dict[int, str] = {}
    done = 0
    for written, failed in _decode_chunks(str(root), paths, size, workers, target):
        failures.update(failed)
        done += written + len(failed)
        if progress is not None:
            progress(Progress("decode", done, total))
    return failures


def _decode_chunks(
    root: str, paths: Sequence[str], size: int, workers: int | None, target: ArrayFile
) -> Iterator[Written]:
    """Decode chunks into ``target`` (here and in worker processes, see
    :func:`imgcluster.data.workers.share_chunks`), yielding each one's outcome as it is done."""

    def task(start: int, count: int) -> workers_mod.Task:
        return decode_chunk_into, (root, list(paths[start : start + count]), start, size, target)

    here = workers_mod.in_process(task)
    chunks = workers_mod.share_chunks(len(paths), workers, here, task, fatal=(CacheWriteError,))
    for _, written in chunks:
        yield written


def decode_chunk(root: str, paths: list[str], start: int, size: int) -> ChunkResult:
    """Decode ``paths`` (rows ``start...``): indices and images of successes, and failures."""
    indices: list[int] = []
    images = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    failures: list[tuple[int, str]] = []
    for offset, rel in enumerate(paths):
        try:
            images[len(indices)] = decode_image(os.path.join(root, rel), size)
        except DecodeError as exc:
            failures.append((start + offset, str(exc)))
            continue
        indices.append(start + offset)
    return np.asarray(indices, dtype=np.int64), images[: len(indices)], failures


def decode_chunk_into(
    root: str, paths: list[str], start: int, size: int, target: ArrayFile
) -> Written:
    """:func:`decode_chunk`, each decoded row written at its place in ``target``; returns the
    number of rows written and the failures (whose rows stay zero, to be compacted away)."""
    indices, images, failures = decode_chunk(root, paths, start, size)
    # Consecutive indices are consecutive rows of the file: one write per unbroken run.
    bounds = [0, *(np.flatnonzero(np.diff(indices) != 1) + 1).tolist(), len(indices)]
    runs = zip(bounds[:-1], bounds[1:])
    target.write_rows((int(indices[lo]), images[lo:hi]) for lo, hi in runs if hi > lo)
    return len(indices), failures


def _write_all(fh: io.RawIOBase, data: memoryview) -> None:
    """A raw write may take only part of the bytes: write on until all are."""
    while data:
        n = fh.write(data)
        if not n:
            raise OSError(f"no progress writing {fh.name}")
        data = data[n:]


def _compact(src: Path, keep: Sequence[int], dst: Path) -> None:
    """Copy rows ``keep`` of ``src`` into a new ``.npy`` at ``dst`` (atomically), in steps."""
    source = np.load(src, mmap_mode="r")
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}-compact")
    try:
        out = ArrayFile.create(tmp, len(keep), source.shape[-1])
        order = np.asarray(keep, dtype=np.int64)
        steps = range(0, len(order), _COPY_ROWS)
        out.write_rows((b, source[order[b : b + _COPY_ROWS]]) for b in steps)
        del source
        _fsync_file(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    """Flush the finished array file to disk, before it is renamed into place and its manifest
    vouches for it. A write error that shows only when the pages are written back (a full disk,
    say) surfaces here, as :class:`CacheWriteError` like a failed write."""
    try:
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        raise CacheWriteError(exc.errno, exc.strerror or str(exc)) from exc
