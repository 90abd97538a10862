"""The start of a run (fit --init), through the real command line on real images: ``none``
without the restart (``--no-restart``) is the from-scratch run of the code before pretrained
starts, bit for bit; ``auto`` chooses by the
images and says why (terminal, config.json, --json, report); the packaged ImageNet start trains
on its cached views, beats k-means on its own frozen features, and exports a model.onnx that
``assign`` runs to the same clusters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_cifar_subset
from PIL import Image

from imgcluster import rundir
from imgcluster.config import RunConfig

pytestmark = pytest.mark.slow  # end-to-end runs of the CLI
REPO = Path(__file__).resolve().parents[1]

# assignments.csv of `fit SRC --k 3 --epochs 6 --image-size 16 --workers 1 --device cpu
# --seed 0` on the first 6 CIFAR-10 test images of each class, written by imgcluster before
# pretrained starts existed (every 6th image's confidence; every image fell in cluster 1), and
# two statistics of that run's final projection weights.
SCRATCH_CLUSTERS = "1" * 60
SCRATCH_CONFIDENCE = [0.441534, 0.433958, 0.45397, 0.447261, 0.441823, 0.43887, 0.447241,
                      0.433513, 0.438446, 0.446334]  # fmt: skip
SCRATCH_PROJECTION = (3.899233641703802, 6.658143508735984)  # sum, norm of projector.3.weight


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "imgcluster", *args], capture_output=True,
                          text=True, env=env, timeout=900)  # fmt: skip


def test_init_none_is_the_scratch_run_before_pretrained_starts(
    data_root: Path, tmp_path: Path
) -> None:
    source = copy_cifar_subset(data_root, tmp_path / "src", 6)
    out = tmp_path / "run"
    proc = run_cli("fit", str(source), "--k", "3", "--epochs", "6", "--image-size", "16",
                   "--workers", "1", "--device", "cpu", "--no-report", "--seed", "0",
                   "--init", "none", "--no-restart", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, clusters, confidence = rundir.read_assignments(out / "assignments.csv")
    assert "".join(map(str, clusters.tolist())) == SCRATCH_CLUSTERS
    np.testing.assert_allclose(confidence[::6], SCRATCH_CONFIDENCE, atol=2e-6)
    weight = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    weight = weight["encoder.projector.3.weight"].double()
    np.testing.assert_allclose((weight.sum().item(), weight.norm().item()), SCRATCH_PROJECTION,
                               rtol=1e-5)  # fmt: skip
    assert RunConfig.from_dict(rundir.read_json(out / "config.json")).model.init == "none"


def tiny_copy(source: Path, dst: Path) -> Path:
    """The same images as 12-px one-channel PNGs, like scanned digits."""
    for path in sorted(source.rglob("*.jpg")):
        target = dst / path.relative_to(source).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").resize((12, 12)).save(target)
    return dst


def test_auto_start_is_chosen_by_the_images_and_said(data_root: Path, tmp_path: Path) -> None:
    colour = copy_cifar_subset(data_root, tmp_path / "colour", 4)
    tiny = tiny_copy(colour, tmp_path / "tiny")
    said = {}
    for name, source in (("colour", colour), ("tiny", tiny)):
        out = tmp_path / f"run-{name}"
        proc = run_cli("fit", str(source), "--k", "2", "--epochs", "1", "--views", "1", "--workers",
                       "1", "--device", "cpu", "--json", "--out", str(out))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        config = rundir.read_json(out / "config.json")
        assert config["start_choice"] == summary["start_choice"]
        assert "start: " in proc.stderr and summary["start_choice"]["reason"] in " ".join(
            proc.stderr.split()
        )
        page = (out / "report" / "index.html").read_text()
        assert "auto: " + summary["start_choice"]["reason"] in page
        said[name] = (config["model"], config["data"]["image_size"])
    colour_model, colour_size = said["colour"]
    assert colour_model["init"] == "imagenet" and colour_model["backbone"] == "efficientnet_lite0"
    assert colour_model["freeze_encoder"] is True and colour_size == 128  # small images: 128 px
    tiny_model, tiny_size = said["tiny"]
    assert tiny_model["init"] == "none" and tiny_model["backbone"] == "small"
    assert tiny_size == 32


def test_explicit_backbone_without_weights_keeps_scratch(tmp_path: Path) -> None:
    from imgcluster.config import resolve

    (tmp_path / "imgs").mkdir()
    config = RunConfig().replace(data={"source": str(tmp_path / "imgs")},
                                 model={"backbone": "small"})  # fmt: skip
    assert resolve(config).model.init == "none"


def imagenette_subset(data_root: Path, dst: Path, per_class: int) -> Path:
    """The first ``per_class`` Imagenette validation photos of each class, with a labels.csv."""
    rows = ["path,label"]
    for class_dir in sorted(p for p in (data_root / "imagenette-val").iterdir() if p.is_dir()):
        (dst / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (dst / class_dir.name / f.name).write_bytes(f.read_bytes())
            rows.append(f"{class_dir.name}/{f.name},{class_dir.name}")
    (dst / "labels.csv").write_text("\n".join(rows) + "\n")
    return dst


def test_packaged_start_beats_kmeans_on_its_frozen_features(
    data_root: Path, tmp_path: Path
) -> None:
    """1,000 Imagenette photos, the default start (the packaged network, frozen, on its cached
    views): the trained clusters score at least 0.05 ACC above the best of three seeds of
    k-means (10 restarts each) on the same network's frozen features of the same decoded images
    (benchmarks/anchors.py). model.onnx holds the EfficientNet and ``assign`` runs it to fit's
    clusters."""
    source = imagenette_subset(data_root, tmp_path / "photos", 100)
    out = tmp_path / "run"
    # The default epochs and warm-up: with k-means on the embeddings the start was fragile
    # here (0.636 to 0.756 by warm-up length), with k-means on their UMAP 0.72-0.77.
    proc = run_cli("fit", str(source), "--k", "10", "--image-size", "96", "--views", "4",
                   "--device", "cpu", "--no-report", "--out", str(out), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["start_choice"]["init"] == "imagenet"
    scored = run_cli("eval", "--run", str(out), "--labels", str(source / "labels.csv"), "--json",
                     "--no-report")  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    acc = json.loads(scored.stdout)["acc"]
    anchors = subprocess.run([sys.executable, str(REPO / "benchmarks" / "anchors.py"),
                              str(source), "--size", "96", "--no-umap", "--json"],
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert anchors.returncode == 0, anchors.stderr
    anchor = max(json.loads(anchors.stdout)["kmeans"]["acc_per_seed"])
    assert acc >= anchor + 0.05, (acc, anchor)
    assigned = run_cli("assign", "--run", str(out), "--json", "--no-report")
    assert assigned.returncode == 0, assigned.stderr
    assert json.loads(assigned.stdout)["agreement_with_fit"] == 1.0
