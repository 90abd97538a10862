"""The real command line, run as a subprocess on real CIFAR-10 images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_cifar_subset

from imgcluster import rundir
from imgcluster.scoring.metrics import score

# Every test here runs the command in a subprocess, most on a trained run: CI's full suite,
# not the fast loop (`python -m pytest -m "not slow"`).
pytestmark = pytest.mark.slow

PER_CLASS = 40
EPOCHS = 15


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "imgcluster", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def cifar_subset(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real images of each CIFAR-10 class; names repeat across class folders."""
    return copy_cifar_subset(data_root, tmp_path_factory.mktemp("cifar"), PER_CLASS)


@pytest.fixture(scope="module")
def trained(cifar_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cifar"
    # Small batches give the short run enough steps for the features to start to spread.
    # From scratch: the run directory's every part, the paper's path (the packaged start's own
    # end-to-end run is in test_start.py).
    args = ["fit", str(cifar_subset), "--k", "10", "--out", str(out), "--epochs", str(EPOCHS)]
    args += ["--init", "none"]
    result = run_cli(*args, "--batch-size", "32", "--momentum", "0.99", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # --json: one object, nothing else on stdout
    assert summary["images"] == 10 * PER_CLASS and sum(summary["cluster_sizes"]) == 10 * PER_CLASS
    assert summary["epochs"] == EPOCHS and isinstance(summary["problems"], list)
    return out


def read_assignments(path: Path) -> dict[str, int]:
    paths, clusters, _ = rundir.read_assignments(path)
    return dict(zip(paths, clusters.tolist()))


def test_fit_writes_the_run_directory(trained: Path):
    for name in ("config.json", "checkpoint.pt", "history.jsonl", "assignments.csv", "skipped.csv"):
        assert (trained / name).is_file(), name
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    for key in ("loss_id", "loss_cd", "lr", "cluster_sizes", "label_flips", "images_per_s",
                "label_update_seconds", "seconds"):  # fmt: skip
        assert key in history[-1]
    assert "acc" not in history[-1]  # a folder's classes are unknown: nothing to score
    elapsed = [h["elapsed_seconds"] for h in history]
    assert elapsed == sorted(elapsed) and elapsed[0] >= history[0]["seconds"]
    assert sum(history[-1]["cluster_sizes"]) == 10 * PER_CLASS
    assert history[0]["label_flips"] > 0  # random initial labels were replaced
    assigned = read_assignments(trained / "assignments.csv")
    assert len(assigned) == 10 * PER_CLASS
    assert "airplane/0000.jpg" in assigned and "truck/0000.jpg" in assigned


def test_clusters_agree_with_classes_better_than_chance(trained: Path):
    assigned = read_assignments(trained / "assignments.csv")
    paths = sorted(assigned)
    clusters = np.array([assigned[p] for p in paths])
    classes = np.array([p.split("/")[0] for p in paths])
    real = score(clusters, classes).nmi
    rng = np.random.default_rng(0)
    shuffled = [score(rng.permutation(clusters), classes).nmi for _ in range(200)]
    assert len(set(clusters)) >= 2
    assert real > max(shuffled), (real, max(shuffled))


def test_existing_run_is_refused_without_resume(trained: Path, cifar_subset: Path):
    result = run_cli("fit", str(cifar_subset), "--out", str(trained), "--epochs", "1")
    assert result.returncode == 2
    assert "--resume" in result.stderr and "Traceback" not in result.stderr


def test_resume_continues_to_more_epochs(trained: Path, tmp_path: Path):
    run = tmp_path / "resumed"
    shutil.copytree(trained, run)
    result = run_cli("fit", "--resume", "--out", str(run), "--epochs", str(EPOCHS + 1))
    assert result.returncode == 0, result.stderr
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 2))


def test_resume_with_another_k_is_refused(trained: Path, tmp_path: Path):
    run = tmp_path / "other-k"
    shutil.copytree(trained, run)
    result = run_cli("fit", "--resume", "--out", str(run), "--k", "5")
    assert result.returncode == 2
    assert "k was 10" in result.stderr


def test_bad_input_is_one_line(tmp_path: Path):
    result = run_cli("fit", str(tmp_path / "missing"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result = run_cli("fit", str(empty), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "no images" in result.stderr


def test_too_few_images_for_k(cifar_subset: Path, tmp_path: Path):
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((cifar_subset / "cat").iterdir())[:5]:
        shutil.copy(f, few / f.name)
    result = run_cli("fit", str(few), "--k", "10", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "needs at least 20" in result.stderr


def test_fit_ends_with_model_and_report(trained: Path):
    assert (trained / "model.onnx").is_file()
    assert (trained / "report" / "index.html").is_file()


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("fit", "assign", "eval", "export", "report", "demo"):
        assert command in result.stdout


def test_the_console_script_loads_the_cli_only_when_run():
    """Worker processes run the parent's main script again before their first task: for the
    ``imgcluster`` console script that is ``from imgcluster.__main__ import main``, which must
    not pull in the CLI (typer, rich) and cost every decode or assign worker ~0.1 s."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="imgcluster")
    assert script.value == "imgcluster.__main__:main"
    code = (
        "import sys, imgcluster.__main__\n"
        "print(sorted(m for m in ('typer', 'rich', 'imgcluster.cli') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
