"""Run the exported model over image files: decode in worker processes while onnxruntime runs.

Scope: the decode pipeline of ``assign`` and ``report``. Worker processes decode chunks of files
(:func:`imgcluster.decode.decode_image`) and hand back uint8 arrays in order; the calling process
normalises each full batch and runs it through onnxruntime, which releases the GIL, so decoding
the next chunks overlaps inference. Folders too small to repay a pool's start decode in this
process; a run's own images, already in the decode cache, are not decoded at all. This module
never imports torch.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcluster.cache import (
    ChunkResult,
    decode_chunk,
    decode_pool,
    decoder_count,
    find_cache,
    start_worker_server,
)
from imgcluster.onnxmodel import OnnxModel

Progress = Callable[[int, int], None]

_CHUNK = 32  # files per worker task: small enough to balance, large enough to amortise pickling
# A pool costs ~0.5-1.5 s to start (forkserver + numpy/Pillow imports): only worth it beyond.
_POOL_MIN_SECONDS = 1.0


@dataclass
class Predicted:
    """Model outputs for the files that decoded, in input order, and those that did not."""

    paths: list[str]
    probabilities: np.ndarray  # N×k float32
    embeddings: np.ndarray  # N×d float32, unit rows
    skipped: list[tuple[str, str]]  # (path, reason)
    from_cache: bool = False


def predict_files(
    model: OnnxModel,
    root: Path,
    paths: Sequence[str],
    *,
    batch_size: int = 256,
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Predicted:
    """Decode ``paths`` (relative to ``root``) at the model's image size and run the model.

    ``workers`` decode processes (default: the usable CPUs; 1 decodes here). When the decode
    cache holds exactly these files at this size (the run's own images) it is read instead.
    ``progress(done, total)`` follows each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    size = model.info.image_size
    cached = find_cache(root, paths, size, cache_dir)
    if cached is not None:
        return _predict_cached(
            model, cached.images, cached.paths, cached.skipped, batch_size, progress
        )
    n_workers = decoder_count(workers)
    chunks = decoded_chunks(str(root), paths, size, n_workers)
    return _predict_stream(model, paths, chunks, batch_size, progress)


def _predict_cached(
    model: OnnxModel,
    images: np.ndarray,
    paths: list[str],
    skipped: list[tuple[str, str]],
    batch_size: int,
    progress: Progress | None,
) -> Predicted:
    """Run the model over an already decoded uint8 ``N×3×S×S`` array, batch by batch."""
    probs, embs = [], []
    for start in range(0, len(images), batch_size):
        p, e = model(np.asarray(images[start : start + batch_size]))
        probs.append(p)
        embs.append(e)
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return Predicted(list(paths), *_stack(probs, embs, model), list(skipped), from_cache=True)


def _predict_stream(
    model: OnnxModel,
    paths: Sequence[str],
    chunks: Iterator[ChunkResult],
    batch_size: int,
    progress: Progress | None,
) -> Predicted:
    """Gather decoded chunks into batches and run each as soon as it is full."""
    good: list[int] = []
    failed: list[tuple[int, str]] = []
    probs, embs, pending, pending_n = [], [], [], 0
    done = 0
    for rows, images, failures in chunks:
        good.extend(rows)
        failed.extend(failures)
        pending.append(images)
        pending_n += len(images)
        done += len(rows) + len(failures)
        if pending_n >= batch_size or done == len(paths):
            if pending_n:
                p, e = model(np.concatenate(pending))
                probs.append(p)
                embs.append(e)
            pending, pending_n = [], 0
            if progress is not None:
                progress(done, len(paths))
    skipped = [(paths[i], reason) for i, reason in sorted(failed)]
    return Predicted([paths[i] for i in good], *_stack(probs, embs, model), skipped)


def _stack(
    probs: list[np.ndarray], embs: list[np.ndarray], model: OnnxModel
) -> tuple[np.ndarray, np.ndarray]:
    if not probs:  # nothing decoded: empty arrays of the right widths
        outputs = model.session.get_outputs()
        return np.zeros((0, model.info.k), np.float32), np.zeros(
            (0, outputs[1].shape[1]), np.float32
        )
    return np.concatenate(probs), np.concatenate(embs)


def decoded_chunks(
    root: str, paths: Sequence[str], size: int, workers: int
) -> Iterator[ChunkResult]:
    """Decoded chunks of ``paths`` in order.

    The first chunk is decoded here and timed; a pool starts only when the rest would take
    longer here than the pool takes to start. If the pool cannot start or breaks (process
    creation not allowed, ``__main__`` not importable by a worker), the chunks not yet received
    are decoded here.
    """
    starts = collections.deque(range(0, len(paths), _CHUNK))
    if not starts:
        return
    if workers > 1 and len(starts) > 1:
        start_worker_server()  # it loads while the first chunk is decoded here
    began = time.perf_counter()
    yield decode_chunk(root, list(paths[:_CHUNK]), starts.popleft(), size)
    serial_rest = (time.perf_counter() - began) / _CHUNK * (len(paths) - _CHUNK)
    if workers > 1 and serial_rest > _POOL_MIN_SECONDS:
        try:
            for chunk in _pool_chunks(root, paths, size, list(starts), workers):
                starts.popleft()
                yield chunk
        except (cf.process.BrokenProcessPool, OSError):
            pass  # decode what is left in this process
    for start in starts:
        yield decode_chunk(root, list(paths[start : start + _CHUNK]), start, size)


def _pool_chunks(
    root: str, paths: Sequence[str], size: int, starts: list[int], workers: int
) -> Iterator[ChunkResult]:
    """Chunks decoded by ``workers`` processes, yielded in order, a bounded number in flight."""
    in_flight: collections.deque[cf.Future[ChunkResult]] = collections.deque()
    pending = iter(starts)
    with decode_pool(workers) as pool:
        try:
            while True:
                # Enough queued work for the decoders to stay busy through one inference batch.
                for start in itertools.islice(pending, 4 * workers - len(in_flight)):
                    batch = list(paths[start : start + _CHUNK])
                    in_flight.append(pool.submit(decode_chunk, root, batch, start, size))
                if not in_flight:
                    return
                yield in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()
