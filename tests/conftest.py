"""Shared fixtures: the real labelled image sets that sit beside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IMGCLUSTER_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding ``cifar10-test/`` and ``imagenette-val/`` (read-only)."""
    if not (DATA / "cifar10-test").is_dir():
        pytest.skip(f"real test images not found under {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep every test's decode cache out of the user's cache folder."""
    monkeypatch.setenv("IMGCLUSTER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): what a killed writer leaves."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def copy_cifar_subset(data_root: Path, dst: Path, per_class: int) -> Path:
    """The first ``per_class`` real CIFAR-10 test images of each class, copied under ``dst``.

    File names repeat across the class folders (0000.jpg in each), as in the real set.
    """
    for class_dir in sorted((data_root / "cifar10-test").iterdir()):
        if class_dir.is_dir():
            (dst / class_dir.name).mkdir(parents=True)
            for f in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy(f, dst / class_dir.name / f.name)
    return dst


@pytest.fixture(scope="session")
def tiny_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run shared by the export, assign and report tests.

    10 real CIFAR-10 images per class, k=4, 16 px, the small net, 3 epochs; ``fit`` wrote
    model.onnx and report/ at its end. The source folder is ``config.json``'s source.
    """
    from imgcluster.api import fit
    from imgcluster.config import RunConfig

    base = tmp_path_factory.getbasetemp()
    source = copy_cifar_subset(data_root, tmp_path_factory.mktemp("tiny-source"), 10)
    config = RunConfig().replace(
        # The cache folder is set here: session fixtures run before the autouse one above.
        data={
            "source": str(source),
            "image_size": 16,
            "workers": 1,
            "cache_dir": str(base / "cache"),
        },
        model={"backbone": "small"},
        scl={"k": 4, "momentum": 0.99},
        optim={"epochs": 3, "batch_size": 25, "device": "cpu"},
    )
    out = tmp_path_factory.mktemp("tiny-runs") / "tiny"
    fit(config, out)
    return out
