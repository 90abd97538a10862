"""Shared fixtures: the real labelled image sets that sit beside the repository."""

from __future__ import annotations

import os
import shutil
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
