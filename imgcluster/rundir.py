"""The run directory: what ``fit`` leaves behind and every later command reads.

Layout (docs/architecture.md): config.json, checkpoint.pt, history.jsonl, assignments.csv,
skipped.csv.
Every file is written atomically (temporary file in the same folder, fsync, rename), so a run
killed at any moment leaves the old file or the new one, never a torn one. Checkpoints load with
``torch.load(weights_only=True)``: a checkpoint whose pickle would run code is refused.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.atomic import atomic_write_bytes, atomic_write_text
from imgcluster.errors import RunError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
ASSIGNMENTS = "assignments.csv"
SKIPPED = "skipped.csv"
LABELS = "labels.csv"  # benchmark runs: the true class of every image, for ``eval``
REPORT = "report"
DUPLICATES = "duplicates.csv"  # group, path: near-identical training images
OUTLIERS = "outliers.csv"  # cluster, path, similarity: each cluster's least typical images
CENTROIDS = "centroids.npy"  # the MoCo + k-means baseline's cluster centroids, k×d
MODEL = "model.onnx"  # written by ``export`` (and at the end of ``fit``), read by ``assign``
# Written by ``assign --export-folders`` into its folder: the files it placed there.
FOLDERS_MANIFEST = ".imgcluster-manifest.json"
# Where ``assign --export-folders`` last sorted the run's own images: {"folders": absolute path}.
# The report links each cluster to its folder there.
EXPORTED = "exported.json"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from e


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every complete line of history.jsonl (a torn last line is ignored)."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def write_history(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite the whole history (one JSON object per line) atomically."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # quotes commas, quotes and newlines in names
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_assignments(
    path: Path, paths: Sequence[str], clusters: np.ndarray, confidence: np.ndarray
) -> None:
    """assignments.csv: path, cluster, confidence (six decimals), one row per image."""
    rows = [(p, int(c), f"{float(s):.6f}") for p, c, s in zip(paths, clusters, confidence)]
    atomic_write_text(path, _csv_text(("path", "cluster", "confidence"), rows))


def read_assignments(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, clusters, confidence) from an assignments.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    clusters = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
    confidence = np.array([float(r["confidence"]) for r in rows], dtype=np.float64)
    return paths, clusters, confidence


def write_labels(path: Path, paths: Sequence[str], labels: Sequence[str]) -> None:
    """labels.csv: path, label (the format ``imgcluster eval --labels`` reads)."""
    atomic_write_text(path, _csv_text(("path", "label"), list(zip(paths, labels))))


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """skipped.csv: path, reason for every file that looked like an image but was not used."""
    atomic_write_text(path, _csv_text(("path", "reason"), skipped))


def write_duplicates(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    atomic_write_text(path, _csv_text(("group", "path"), rows))


def write_outliers(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    atomic_write_text(path, _csv_text(("cluster", "path", "similarity"), rows))


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of one of the run's small CSV files (empty when it is missing)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def write_centroids(path: Path, centroids: np.ndarray) -> None:
    """The baseline's centroids (float32 k×d), for ``export``."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(centroids, dtype=np.float32))
    atomic_write_bytes(path, buf.getvalue())


def read_centroids(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from e


def numbered_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``… if that exists already."""
    candidate, n = base / name, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{name}-{n}"
    return candidate


def is_run_dir(path: Path) -> bool:
    """A folder that a previous ``fit`` wrote into."""
    return (path / CONFIG).exists() or (path / CHECKPOINT).exists()


def latest_run(base: Path = Path("runs"), needs: str = ASSIGNMENTS) -> Path:
    """The run directory under ``base`` whose file ``needs`` was written last.

    Raises :class:`RunError` when no run under ``base`` has that file.
    """
    candidates = [p / needs for p in _subfolders(Path(base)) if (p / needs).is_file()]
    if not candidates:
        raise RunError(f"no run with {needs} under {base}/: give the run directory with --run")
    return max(candidates, key=lambda f: f.stat().st_mtime_ns).parent


def _subfolders(base: Path) -> list[Path]:
    try:
        return [p for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []
