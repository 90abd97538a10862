"""Run the exported model over image files: decoded and run in this process and in workers.

Scope: the inference pipeline of ``assign``. Files are split into chunks shared between this
process and worker processes (:func:`imgcluster.data.workers.share_chunks`). On the CPU, with a
small model, each chunk is decoded (:func:`imgcluster.data.decode.decode_image`) and run through the
model by the process that took it, each with a one-thread onnxruntime session: only the outputs
(a few hundred bytes per image) travel back, no pixels, and no inference threads compete with
the decoders for the cores. With a GPU provider, or a big model, the workers only decode and
this process batches their pixels into its one session. Folders too small to repay a pool's
start stay in this process; a run's own images, already in the decode cache, are not decoded
at all. This module never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcluster.assigning.onnx_model import OnnxModel
from imgcluster.data import workers as workers_mod
from imgcluster.data.cache import Stamps, decode_chunk, find_cache
from imgcluster.events import Callback, Progress

Failures = list[tuple[int, str]]
# A chunk's rows (input positions), their probabilities and embeddings, and its failures.
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray, Failures]

# Files per chunk on the CPU (each chunk is one inference batch): bigger batches run no faster
# there, and each decoder holds one batch's activations.
_CPU_CHUNK = 64
# Each decoder holds its own session and a batch's activations: for the small net (a 2 MB
# file) ~90 MB per process at 96 px, for ResNet-34 (85 MB) ~580 MB. A model file over this size
# runs in this process only (all its threads), the workers just decode: its arithmetic
# outweighs the decoding anyway, and the memory stays that of one session.
_PER_DECODER_MODEL_MAX_BYTES = 16 << 20

_worker_model: OnnxModel | None = None  # a worker's own session (see _load_worker_model)


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
    progress: Callback | None = None,
    stamps: Stamps | None = None,
) -> Predicted:
    """Decode ``paths`` (relative to ``root``) at the model's image size and run the model.

    ``workers`` decoders, this process among them (default: one per usable CPU; 1 decodes
    only here). When the decode cache holds exactly these files at this size (the run's own
    images; ``stamps`` as in :func:`imgcluster.data.cache.cache_key`) it is read instead.
    ``batch_size`` bounds the images per inference call.
    ``progress`` gets 'assign' events as the work goes.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    size = model.info.image_size
    cached = find_cache(root, paths, size, cache_dir, stamps)
    if cached is not None:
        return _predict_cached(
            model, cached.images, cached.paths, cached.skipped, batch_size, progress
        )
    outputs = _Gathered(model, len(paths))
    if model.on_cpu and model.weight_bytes <= _PER_DECODER_MODEL_MAX_BYTES:
        chunks = _cpu_chunks(model, str(root), paths, min(batch_size, _CPU_CHUNK), workers)
    else:
        chunks = _decoded_then_run(model, str(root), paths, batch_size, workers)
    for part in chunks:
        outputs.add(part)
        if progress is not None:
            progress(Progress("assign", outputs.done, len(paths)))
    return outputs.result(paths)


class _Gathered:
    """Outputs of chunks that arrive in any order, placed at their input positions."""

    def __init__(self, model: OnnxModel, total: int) -> None:
        self.probabilities = np.zeros((total, model.info.k), np.float32)
        self.embeddings = np.zeros((total, model.embedding_dim), np.float32)
        self.decoded = np.zeros(total, bool)
        self.failures: Failures = []
        self.done = 0

    def add(self, part: Outputs) -> None:
        rows, probabilities, embeddings, failures = part
        self.probabilities[rows] = probabilities
        self.embeddings[rows] = embeddings
        self.decoded[rows] = True
        self.failures.extend(failures)
        self.done += len(rows) + len(failures)

    def result(self, paths: Sequence[str]) -> Predicted:
        good = np.flatnonzero(self.decoded)
        skipped = [(paths[i], reason) for i, reason in sorted(self.failures)]
        return Predicted(
            [paths[i] for i in good], self.probabilities[good], self.embeddings[good], skipped
        )


def _cpu_chunks(
    model: OnnxModel, root: str, paths: Sequence[str], chunk: int, workers: int | None
) -> Iterator[Outputs]:
    """Chunks decoded and run by whichever process took them, each with a one-thread session.

    With one decoder this process runs alone and keeps ``model`` (all its threads)."""
    here_model = model if workers_mod.decoder_count(workers) == 1 else model.single_threaded()
    size = model.info.image_size

    def here(start: int, count: int) -> Outputs:
        return _run_chunk(here_model, root, list(paths[start : start + count]), start, size)

    def task(start: int, count: int) -> workers_mod.Task:
        return _worker_chunk, (root, list(paths[start : start + count]), start, size)

    for _, part in workers_mod.share_chunks(
        len(paths),
        workers,
        here,
        task,
        max_chunk=chunk,
        setup=_load_worker_model,
        setup_args=(model.source,),
    ):
        yield part


def _run_chunk(model: OnnxModel, root: str, paths: list[str], start: int, size: int) -> Outputs:
    """Decode ``paths`` (rows ``start...``) and run ``model`` over those that decoded."""
    rows, images, failures = decode_chunk(root, paths, start, size)
    if not len(rows):
        return rows, *model.empty_outputs(), failures
    return rows, *model(images), failures


def _load_worker_model(source: str | bytes) -> None:
    """A worker's set-up: its own one-thread session over the model file."""
    global _worker_model
    _worker_model = OnnxModel(source, threads=1)


def _worker_chunk(root: str, paths: list[str], start: int, size: int) -> Outputs:
    assert _worker_model is not None, "a worker runs _load_worker_model first"
    return _run_chunk(_worker_model, root, paths, start, size)


def _decoded_then_run(
    model: OnnxModel, root: str, paths: Sequence[str], batch_size: int, workers: int | None
) -> Iterator[Outputs]:
    """For a GPU session or a big model: chunks decoded here and in workers, run here in
    batches of up to ``batch_size`` images as they arrive."""
    size = model.info.image_size

    def task(start: int, count: int) -> workers_mod.Task:
        return decode_chunk, (root, list(paths[start : start + count]), start, size)

    rows, images = np.zeros(0, np.int64), np.zeros((0, 3, size, size), np.uint8)
    failures: Failures = []
    here = workers_mod.in_process(task)
    chunks = workers_mod.share_chunks(len(paths), workers, here, task, max_chunk=batch_size)
    for _, (chunk_rows, chunk_images, chunk_failures) in chunks:
        rows, images = np.concatenate([rows, chunk_rows]), np.concatenate([images, chunk_images])
        failures.extend(chunk_failures)
        while len(rows) >= batch_size:
            yield rows[:batch_size], *model(images[:batch_size]), failures
            rows, images, failures = rows[batch_size:], images[batch_size:], []
    if len(rows) or failures:  # the last, partial batch
        yield rows, *(model(images) if len(rows) else model.empty_outputs()), failures


def _predict_cached(
    model: OnnxModel,
    images: np.ndarray,
    paths: list[str],
    skipped: list[tuple[str, str]],
    batch_size: int,
    progress: Callback | None,
) -> Predicted:
    """Run the model over an already decoded uint8 ``N×3×S×S`` array, batch by batch."""
    no_probs, no_embs = model.empty_outputs()  # the widths, should there be no images
    probs, embs = [no_probs], [no_embs]
    for start in range(0, len(images), batch_size):
        p, e = model(np.asarray(images[start : start + batch_size]))
        probs.append(p)
        embs.append(e)
        if progress is not None:
            progress(Progress("assign", min(start + batch_size, len(images)), len(images)))
    return Predicted(
        list(paths), np.concatenate(probs), np.concatenate(embs), list(skipped), from_cache=True
    )
