"""Decode-once image cache: every image of a run as one memory-mapped ``uint8`` array.

Scope: choosing the cache folder and key, decoding a list of files (in parallel worker
processes) into ``<cache_dir>/<key>.npy`` of shape ``N x 3 x S x S`` with a JSON manifest beside
it, reusing a complete cache from an earlier run on the same files, and picking a default image
size from the image headers. Files are written to a temporary name and renamed into place, and a
torn or mismatched cache is rebuilt, never used. This module must not import torch: its worker
processes only need numpy and Pillow.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from imgcluster.decode import DecodeError, decode_image, image_shape, resize_array
from imgcluster.rundir import fsync_dir, process_alive

FORMAT_VERSION = 1  # bump when the decode pipeline or file layout changes
_DECODER_ID = f"imgcluster-decode-v{FORMAT_VERSION}/pillow-{PIL.__version__}"
_MAX_CHUNK = 256  # paths per worker task
_MIN_CHUNK = 16
_PROBE = 32  # images timed before deciding on a worker pool
_COPY_ROWS = 1024  # rows per step when compacting, bounds RAM use
# A worker pool takes ~0.5-1.5 s to start (forkserver + imports): only worth it beyond that.
_POOL_MIN_SECONDS = 1.0

_log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
ChunkResult = tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]
Written = tuple[int, list[tuple[int, str]]]  # rows written into the array file, failures


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


def cache_dir_default() -> Path:
    """The cache folder: ``$IMGCLUSTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgcluster``, else
    ``~/.cache/imgcluster``."""
    explicit = os.environ.get("IMGCLUSTER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return Path(xdg) / "imgcluster"
    return Path.home() / ".cache" / "imgcluster"


def cache_key(root: Path, paths: Sequence[str], size: int) -> str:
    """Hex key over each file's relative path, byte size and mtime, the image size and decoder.

    Editing, adding, removing or reordering files gives a new key. A file that cannot be
    stat-ed is hashed as missing (it will fail to decode and be skipped).
    """
    digest = hashlib.sha256()
    digest.update(f"{_DECODER_ID}\0size={int(size)}\0n={len(paths)}\0".encode())
    for rel in paths:
        try:
            st = os.stat(os.path.join(root, rel))
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "missing\0"
        # NUL cannot occur in a file name, so the fields cannot run into each other.
        digest.update(f"{rel}\0{stamp}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def default_image_size(root: Path, paths: Sequence[str], sample: int = 64) -> int:
    """32 when the median shorter side of an evenly spaced sample is at most 48 px, else 96.

    Only image headers are read. Unreadable samples are ignored; with none readable, 96.
    """
    if not paths or sample < 1:
        return 96
    picks = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int))
    shorter: list[int] = []
    for i in picks:
        try:
            shorter.append(min(image_shape(os.path.join(root, paths[i]))))
        except DecodeError:
            continue
    if not shorter:
        return 96
    return 32 if float(np.median(shorter)) <= 48 else 96


def build_cache(
    root: Path,
    paths: Sequence[str],
    size: int,
    cache_dir: Path | None = None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ImageCache:
    """Decode ``paths`` (relative to ``root``) once into a memory-mapped array, or reuse it.

    Files that fail to decode are left out of the array and listed in ``skipped``; if every
    file fails the result has ``N == 0``. ``workers`` defaults to the usable CPU count; ``1``
    decodes in this process. ``progress(done, total)`` is called after each decoded chunk (not
    on reuse).
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    paths = list(paths)
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(root, paths, size)
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
    root: Path, paths: Sequence[str], size: int, cache_dir: Path | None = None
) -> ImageCache | None:
    """The complete cache of exactly these files at this size, if an earlier run built one.

    Never decodes nor writes (``assign`` uses it to skip decoding a run's own images).
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    key = cache_key(root, paths, size)
    return _load_existing(folder / f"{key}.npy", folder / f"{key}.json", list(paths), size)


def cache_arrays(
    images: np.ndarray,
    paths: Sequence[str],
    key: str,
    size: int,
    cache_dir: Path | None = None,
    *,
    progress: Progress | None = None,
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
                progress(begin + len(chunk), len(paths))
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
    progress: Progress | None,
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
    _write_json_atomic(manifest, meta)
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
    progress: Progress | None,
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
            progress(done, total)
    return failures


def _decode_chunks(
    root: str, paths: Sequence[str], size: int, workers: int | None, target: ArrayFile
) -> Iterator[Written]:
    """Decode chunks into ``target``, yielding each one's outcome: in a process pool, or here.

    A first few images (a probe) are always decoded here and timed; the pool is only started
    when the rest would take longer in this process than a pool takes to start (tiny folders
    stay in-process). The probe is short, so that the worker starts soon: until then this
    process decodes alone. If the pool cannot start or breaks (e.g. ``__main__`` cannot be
    re-imported by the worker, or process creation is not allowed), the chunks not yet received
    are decoded here instead.
    """
    n_workers = decoder_count(workers)
    chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, math.ceil(len(paths) / (4 * n_workers))))
    if n_workers > 1 and len(paths) > chunk:
        start_worker_server()  # it loads while the probe is decoded here
        probe = min(chunk, _PROBE)
        began = time.perf_counter()
        yield decode_chunk_into(root, list(paths[:probe]), 0, size, target)
        serial_rest = (time.perf_counter() - began) / probe * (len(paths) - probe)
        remaining = _chunks(probe, len(paths), chunk, n_workers)
        if serial_rest > _POOL_MIN_SECONDS:
            yield from _pool_or_fallback(root, paths, size, remaining, n_workers, target)
    else:
        remaining = _chunks(0, len(paths), chunk, 1)
    for start, count in remaining.items():
        yield decode_chunk_into(root, list(paths[start : start + count]), start, size, target)


def _chunks(begin: int, end: int, chunk: int, n_workers: int) -> dict[int, int]:
    """Chunks of images ``begin:end`` as ``{start: count}``, in order: ``chunk`` images each,
    shrinking towards the end (each at most a ``4·n_workers``-th of what is left, and at least
    ``_MIN_CHUNK``), so that the decoders finish together rather than one waiting for a last
    long chunk of another."""
    chunks, start = {}, begin
    while start < end:
        count = max(_MIN_CHUNK, min(chunk, math.ceil((end - start) / (4 * n_workers))))
        chunks[start] = min(count, end - start)
        start += chunks[start]
    return chunks


def _pool_or_fallback(
    root: str,
    paths: Sequence[str],
    size: int,
    remaining: dict[int, int],
    n_workers: int,
    target: ArrayFile,
) -> Iterator[Written]:
    """Decode chunks in a pool, deleting each received start from ``remaining``."""
    n_workers = min(n_workers, len(remaining))
    tasks = list(remaining.items())
    try:
        for start, result in _pool_chunks(root, paths, size, tasks, n_workers, target):
            del remaining[start]
            yield result
    except CacheWriteError:
        raise
    except (cf.process.BrokenProcessPool, OSError) as exc:
        _log.warning("decode workers failed (%s); decoding in this process", exc)


def usable_cpus() -> int:
    """CPUs this process may run on (less than ``os.cpu_count()`` under an affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decoder_count(workers: int | None) -> int:
    """Decoders for ``--workers``: the number given, by default one per usable CPU; at least 1."""
    return max(1, workers if workers is not None else usable_cpus())


def _pool_chunks(
    root: str,
    paths: Sequence[str],
    size: int,
    tasks: list[tuple[int, int]],
    n_workers: int,
    target: ArrayFile,
) -> Iterator[tuple[int, Written]]:
    """Decode chunks with ``n_workers`` decoders: this process and ``n_workers - 1`` worker
    processes, at most ``2 · (n_workers - 1)`` chunks queued for them (bounded RAM).

    This process decodes a chunk whenever no worker result is waiting, so the workers' start
    (a second or so) costs nothing, and it would otherwise sit idle. Chunks come back out of
    order, each with its start.
    """
    queue = collections.deque(tasks)  # (start, count)
    processes = max(1, n_workers - 1)
    pool = decode_pool(processes)
    in_flight: dict[cf.Future[Written], int] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < 2 * processes:
                start, count = queue.popleft()
                batch = list(paths[start : start + count])
                future = pool.submit(decode_chunk_into, root, batch, start, size, target)
                in_flight[future] = start
            finished = [future for future in in_flight if future.done()]
            if not finished and queue:
                start, count = queue.popleft()
                yield start, _decode_here(root, paths, start, count, size, target)
                continue
            if not finished:
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                yield in_flight.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def worker_context() -> multiprocessing.context.BaseContext:
    """Decode workers' start method: 'forkserver' (preloaded) where available, else 'spawn'.

    Plain 'fork' is avoided: the parent usually has torch or onnxruntime (and their thread pools)
    loaded, and forking a multi-threaded process can deadlock the child.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The server imports the decoder once; each worker is then a fork of it with numpy and
    # Pillow loaded, instead of a fresh interpreter importing them again.
    context.set_forkserver_preload([__name__])
    return context


def _decode_here(
    root: str, paths: Sequence[str], start: int, count: int, size: int, target: ArrayFile
) -> Written:
    """Chunk ``start`` decoded in this process, while the workers decode others."""
    return decode_chunk_into(root, list(paths[start : start + count]), start, size, target)


def start_worker_server() -> None:
    """Start the forkserver now, without waiting for it (a no-op where workers are spawned).

    Where processes cannot be started, nothing happens here: the decode then runs in this
    process (see :func:`_pool_or_fallback`).
    """
    if worker_context().get_start_method() != "forkserver":
        return
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError as exc:
        _log.debug("decode worker server not started: %s", exc)


def decode_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` decode processes (see :func:`worker_context`, :func:`init_worker`)."""
    return cf.ProcessPoolExecutor(
        workers, mp_context=worker_context(), initializer=init_worker, initargs=(os.getpid(),)
    )


def init_worker(owner: int) -> None:
    """Set up a decode worker of process ``owner``.

    Ctrl-C is left to the owner, which shuts the pool down (no traceback per worker). And the
    worker exits once its owner is gone: an owner killed outright (SIGKILL, the OOM killer, a
    crash) cannot shut the pool down, and an idle worker would then wait on its task queue
    forever, holding the forkserver alive with it (and any pipe they inherited, such as the
    terminal's in ``imgcluster fit … | tee log``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner,), daemon=True).start()


def _exit_with(owner: int, poll_seconds: float = 0.5) -> None:
    while process_alive(owner):
        time.sleep(poll_seconds)
    os._exit(1)


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


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            # ASCII escapes keep undecodable (surrogate-escaped) file names round-trippable.
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
