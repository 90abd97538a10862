"""ONNX export: onnxruntime reproduces torch on real images, any batch size; metadata; failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import copy_cifar_subset
from typer.testing import CliRunner

from imgcluster import rundir
from imgcluster.api import fit
from imgcluster.assigning.onnx_model import OnnxModel
from imgcluster.cli import app
from imgcluster.config import RunConfig
from imgcluster.data.sources import training_images
from imgcluster.errors import RunError
from imgcluster.export import ExportError, check, export_onnx, load_graph
from imgcluster.method.augment import MEAN, STD, preprocess


def run_images(run: Path) -> tuple[RunConfig, np.ndarray, np.ndarray]:
    config = RunConfig.from_dict(rundir.read_json(run / rundir.CONFIG))
    paths, clusters, _ = rundir.read_assignments(run / rundir.ASSIGNMENTS)
    return config, training_images(run, config, paths), clusters


@pytest.mark.parametrize("n", [1, 7])
def test_onnxruntime_matches_torch_on_real_images(tiny_run: Path, n: int):
    config, images, clusters = run_images(tiny_run)
    graph = load_graph(tiny_run, config)
    batch = np.array(images[3 : 3 + n])
    with torch.no_grad():
        probs, emb = (t.numpy() for t in graph(preprocess(torch.from_numpy(batch))))
    ort_probs, ort_emb = OnnxModel(tiny_run / "model.onnx")(batch)
    assert ort_probs.shape == (n, 4) and ort_emb.shape == (n, 128)
    np.testing.assert_allclose(ort_probs, probs, atol=1e-5)
    np.testing.assert_allclose(ort_emb, emb, atol=1e-5)
    assert (ort_probs.argmax(1) == probs.argmax(1)).all()
    np.testing.assert_allclose(ort_probs.sum(1), 1.0, atol=1e-5)  # a softmax
    np.testing.assert_allclose(np.linalg.norm(ort_emb, axis=1), 1.0, atol=1e-5)  # unit rows


def test_onnx_clusters_are_fits_own(tiny_run: Path):
    """The exported graph is the model fit assigned with: same cluster for every image."""
    _, images, clusters = run_images(tiny_run)
    probs, _ = OnnxModel(tiny_run / "model.onnx")(np.asarray(images))
    assert (probs.argmax(1) == clusters).all()


def test_model_file_metadata_and_dynamic_batch(tiny_run: Path):
    model = onnx.load(str(tiny_run / "model.onnx"))
    onnx.checker.check_model(model)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    config = rundir.read_json(tiny_run / rundir.CONFIG)
    assert meta["imgcluster.image_size"] == 16 and meta["imgcluster.k"] == 4
    assert meta["imgcluster.mean"] == list(MEAN) and meta["imgcluster.std"] == list(STD)
    assert meta["imgcluster.source"] == config["data"]["source"]
    assert meta["imgcluster.version"] == config["version"]
    (image_input,) = model.graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    assert [o.name for o in model.graph.output] == ["probabilities", "embedding"]
    assert not list(tiny_run.glob("*.data"))  # weights inside the file, no side file


def test_export_command_writes_elsewhere(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "copy.onnx"
    result = CliRunner().invoke(app, ["export", "--run", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and out.is_file()
    probs, _ = OnnxModel(out)(np.zeros((2, 3, 16, 16), np.uint8))
    assert probs.shape == (2, 4)


def test_disagreement_fails_loudly(tiny_run: Path):
    """A graph that no longer matches the file (one head weight moved) fails the check."""
    config, images, clusters = run_images(tiny_run)
    graph = load_graph(tiny_run, config)
    data = (tiny_run / "model.onnx").read_bytes()
    batch = np.array(images[:8])
    diff, agreement = check(graph, data, batch, 1e-4, tiny_run / "model.onnx")
    assert diff <= 1e-6 and agreement == 1.0
    with torch.no_grad():
        graph.head.fc.bias[0] += 0.5
    with pytest.raises(ExportError, match="disagrees with torch.*was not written"):
        check(graph, data, batch, 1e-4, tiny_run / "model.onnx")


def test_export_of_an_unfinished_run_is_one_line(tmp_path: Path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run")])
    assert result.exit_code == 2 and "checkpoint.pt" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_baseline_exports_its_kmeans_as_a_layer(data_root: Path, tmp_path: Path):
    """moco-kmeans has no head: its export carries the centroids and reproduces fit's clusters."""
    source = copy_cifar_subset(data_root, tmp_path / "src", 6)
    config = RunConfig().replace(
        data={"source": str(source), "image_size": 16, "workers": 1},
        model={"backbone": "small"},
        scl={"k": 3, "method": "moco-kmeans"},
        optim={"epochs": 1, "batch_size": 20, "device": "cpu"},
    )
    result = fit(config, tmp_path / "run", report=False)
    _, images, clusters = run_images(tmp_path / "run")
    probs, _ = OnnxModel(tmp_path / "run" / "model.onnx")(np.asarray(images))
    assert (probs.argmax(1) == result.clusters).mean() >= 0.9
    shutil.rmtree(source)  # a later export needs the images: a clear error, not a traceback
    with pytest.raises(RunError, match="training images"):
        export_onnx(tmp_path / "run")
