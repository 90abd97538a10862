"""Every script in benchmarks/ runs to its end on a tiny real input, so that none breaks unseen
(each is also run for real when docs/benchmarks.md is updated). gpu_check.sh needs a GPU and is
only checked for syntax."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_cifar_subset

pytestmark = pytest.mark.slow  # each runs the real pipeline in a child process

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


@pytest.fixture(scope="module")
def folder(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real CIFAR-10 images per class, with a labels.csv."""
    root = copy_cifar_subset(data_root, tmp_path_factory.mktemp("bench") / "cifar", 3)
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label"))
        for path in sorted(root.rglob("*.jpg")):
            writer.writerow((path.relative_to(root).as_posix(), path.parent.name))
    return root


def run(tmp_path: Path, script: str, *args: str) -> str:
    env = {**os.environ, "IMGCLUSTER_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "160"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=900)  # fmt: skip
    assert proc.returncode == 0, f"{script}: {proc.stderr[-2000:]}"
    return proc.stdout


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_every_script_is_covered() -> None:
    covered = {name for name, _ in CASES} | {"gpu_check.sh"}
    present = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    assert present == covered, f"add a case for {sorted(present - covered)}"


CASES: list[tuple[str, list[str]]] = [
    (
        "anchors.py",
        [
            "{folder}",
            "--size",
            "32",
            "--seeds",
            "1",
            "--no-umap",
            "--k-scan",
            "--k-max",
            "4",
            "--tap",
            "head+14",
            "--probe",
            "--json",
        ],
    ),
    ("assign_speed.py", ["{folder}", "--size", "32", "--repeats", "1", "--json"]),
    ("augment_speed.py", ["--size", "32", "--batch", "8", "--repeats", "1", "--json"]),
    (
        "backbone_speed.py",
        ["--size", "32", "--batch", "4", "--steps", "1", "--warmup", "1", "--json"],
    ),  # fmt: skip
    ("decode_cache.py", ["{folder}", "--limit", "20", "--rounds", "1", "--json"]),
    ("fit_quality.py", ["{folder}", "--k", "2", "--minutes", "0.3", "--size", "16"]),
    ("fit_speed.py", ["{folder}", "--epochs", "1", "--json"]),
    ("memory_rss.py", ["{folder}", "--sizes", "20", "--image-size", "16", "--json"]),
    ("quality_probe.py", ["{folder}", "{tmp}/probe", '{"optim": {"epochs": 1}}']),
    (
        "reproduce.py",
        [
            "cifar10",
            "--data-root",
            "{folder}",
            "--minutes",
            "0.3",
            "--dry-run",
            "--out",
            "{tmp}/bench-run",
        ],
    ),  # fmt: skip
    (
        "throughput.py",
        [
            "{folder}",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--images",
            "30",
            "--batch-size",
            "8",
            "--json",
        ],
    ),  # fmt: skip
    ("k_auto.py", ["features", "{folder}", "{tmp}/f.npz", "0.2"]),
    ("choose_output.py", ["{tmp}/probe"]),
]


@pytest.mark.parametrize("script,args", CASES, ids=[name for name, _ in CASES])
def test_script_runs(folder: Path, tmp_path_factory: pytest.TempPathFactory, script: str,
                     args: list[str]) -> None:  # fmt: skip
    tmp = tmp_path_factory.getbasetemp() / "bench-out"  # shared: choose_output reads the probe
    tmp.mkdir(exist_ok=True)
    filled = [a.replace("{folder}", str(folder)).replace("{tmp}", str(tmp)) for a in args]
    out = run(tmp, script, *filled)
    if "--json" in args:
        assert isinstance(last_json(out), dict)
    if script == "anchors.py":
        report = last_json(out)
        assert report["tap"] == "head+14"
        assert 0.0 <= report["knn20"] <= 1.0 and 0.0 <= report["linear_probe"] <= 1.0
        scan = report["k_scan"]
        assert set(scan["picks"]) == {"silhouette", "davies_bouldin", "calinski_harabasz"}
        assert all(2 <= k <= 4 for k in scan["picks"].values())
    if script == "k_auto.py":
        assert "images" in out
        scored = run(tmp, script, "score", str(tmp / "f.npz"), "--k-max", "4")
        assert "f |" in scored or "f" in scored.splitlines()[-1]


def test_gpu_check_is_valid_shell() -> None:
    proc = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True)
    assert proc.returncode == 0, proc.stderr
