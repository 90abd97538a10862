"""assign's inference pipeline: the same outputs whoever decodes and runs each chunk.

The model is the tiny run's real ``model.onnx``; the images are real CIFAR-10 files with broken
ones among them. Every way of sharing the work (this process alone; this process and workers,
each with its own one-thread session; workers that only decode, as with a GPU session; a pool
that cannot start) must give the same paths, outputs and skips as the plain in-process run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_cifar_subset

from imgcluster.assigning import inference
from imgcluster.assigning.onnx_model import OnnxModel
from imgcluster.data import workers
from imgcluster.data.decode import decode_image
from imgcluster.data.scan import scan_folder

BROKEN = {
    "airplane/0003.jpg": b"not an image",
    "cat/0001.jpg": b"\xff\xd8\xff\xe0" + bytes(60),  # a JPEG start, then nothing valid
    "ship/0000.jpg": None,  # truncated
}
Folder = tuple[Path, list[str]]


@pytest.fixture(scope="module")
def folder(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """20 real images per class, three of them broken."""
    root = copy_cifar_subset(data_root, tmp_path_factory.mktemp("infer"), 20)
    for rel, content in BROKEN.items():
        path = root / rel
        path.write_bytes(path.read_bytes()[:200] if content is None else content)
    return root, scan_folder(root).paths


@pytest.fixture(scope="module")
def model(tiny_run: Path) -> OnnxModel:
    return OnnxModel(tiny_run / "model.onnx")


@pytest.fixture(scope="module")
def alone(
    model: OnnxModel, folder: Folder, tmp_path_factory: pytest.TempPathFactory
) -> inference.Predicted:
    """The reference: everything decoded and run in this process."""
    root, paths = folder
    cache = tmp_path_factory.mktemp("no-cache")
    return inference.predict_files(model, root, paths, workers=1, cache_dir=cache)


@dataclass(frozen=True)
class Case:
    """The model, the folder and the reference outputs every other way is held to."""

    model: OnnxModel
    root: Path
    paths: list[str]
    alone: inference.Predicted


@pytest.fixture(scope="module")
def case(model: OnnxModel, folder: Folder, alone: inference.Predicted) -> Case:
    return Case(model, *folder, alone)


def _same(a: inference.Predicted, b: inference.Predicted, exact: bool = True) -> None:
    assert a.paths == b.paths and a.skipped == b.skipped and not b.from_cache
    if exact:
        assert np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.embeddings, b.embeddings)
    else:  # other batches of the same images: the same up to float rounding
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)


def test_reference_rows_are_each_files_own_outputs(
    model: OnnxModel, folder: Folder, alone: inference.Predicted
) -> None:
    root, paths = folder
    assert [p for p, _ in alone.skipped] == sorted(BROKEN)
    assert alone.paths == [p for p in paths if p not in BROKEN]
    assert alone.probabilities.shape == (len(paths) - len(BROKEN), model.info.k)
    assert alone.embeddings.shape == (len(alone.paths), model.embedding_dim)
    for i in (0, len(alone.paths) // 2, len(alone.paths) - 1):
        image = decode_image(root / alone.paths[i], model.info.image_size)
        probs, emb = model(image[None])
        np.testing.assert_allclose(alone.probabilities[i], probs[0], atol=1e-5)
        np.testing.assert_allclose(alone.embeddings[i], emb[0], atol=1e-5)


def _spy_pools(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Use a pool even for 200 images, and record each pool's worker set-up."""
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)
    setups: list[object] = []
    real_pool = workers.worker_pool

    def spy(processes, setup=None, setup_args=()):  # noqa: ANN001, ANN202
        setups.append(setup)
        return real_pool(processes, setup, setup_args)

    monkeypatch.setattr(workers, "worker_pool", spy)
    return setups


def test_workers_that_run_the_model_give_the_same_outputs(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, root, paths, alone = case.model, case.root, case.paths, case.alone
    setups = _spy_pools(monkeypatch)
    calls: list[tuple[int, int]] = []
    shared = inference.predict_files(
        model,
        root,
        paths,
        workers=3,
        batch_size=16,
        cache_dir=tmp_path,
        progress=lambda e: calls.append((e.done, e.total)),
    )
    assert setups == [inference._load_worker_model]  # each worker loads its own session
    _same(alone, shared)
    assert len(calls) > 3 and calls[-1] == (len(paths), len(paths))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


@pytest.mark.parametrize("why", ["gpu", "big model"])
def test_workers_that_only_decode_give_the_same_outputs(
    why: str, case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path of a GPU session or of a model too big for a session per decoder, run on the
    CPU: pixels come back from the workers and this process runs them in batches of at most
    ``batch_size``."""
    model, root, paths, alone = case.model, case.root, case.paths, case.alone
    setups = _spy_pools(monkeypatch)
    gpu_like = OnnxModel(model.source)
    if why == "gpu":
        monkeypatch.setattr(OnnxModel, "on_cpu", property(lambda self: self is not gpu_like))
    else:
        assert gpu_like.weight_bytes > 0
        monkeypatch.setattr(inference, "_PER_DECODER_MODEL_MAX_BYTES", gpu_like.weight_bytes - 1)
    batches: list[int] = []
    real_call = OnnxModel.__call__

    def counted(self: OnnxModel, images: np.ndarray):  # noqa: ANN202
        batches.append(len(images))
        return real_call(self, images)

    monkeypatch.setattr(OnnxModel, "__call__", counted)
    shared = inference.predict_files(
        gpu_like, root, paths, workers=2, batch_size=7, cache_dir=tmp_path
    )
    assert setups == [None]  # plain decoders
    _same(alone, shared, exact=False)
    assert max(batches) == 7 and sum(batches) == len(alone.paths)


def test_a_pool_that_cannot_start_leaves_it_all_here(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def no_processes(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("process creation not permitted")

    monkeypatch.setattr(workers.cf, "ProcessPoolExecutor", no_processes)
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)
    here = inference.predict_files(case.model, case.root, case.paths, workers=2, cache_dir=tmp_path)
    _same(case.alone, here)


def test_nothing_readable_gives_empty_outputs_of_the_right_widths(
    model: OnnxModel, folder: Folder, tmp_path: Path
) -> None:
    root, _ = folder
    broken = sorted(BROKEN)
    for n_workers in (1, 2):
        result = inference.predict_files(model, root, broken, workers=n_workers, cache_dir=tmp_path)
        assert result.paths == [] and [p for p, _ in result.skipped] == broken
        assert result.probabilities.shape == (0, model.info.k)
        assert result.embeddings.shape == (0, model.embedding_dim)
