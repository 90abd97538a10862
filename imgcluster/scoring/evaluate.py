"""``eval``: score a run's clusters against true labels (ACC, NMI, ARI) and plot the confusion.

Which files: the assignments.csv of ``--run`` (default: the latest run under ./runs) or the one
given, and a labels file (:mod:`imgcluster.scoring.label_file`; a benchmark run keeps its own
``labels.csv``). Paths in the labels file may be relative to the labels file's folder, relative
to the run's source folder, or absolute; a relative file is read whichever way matches more
images. Images in only one of the two files are counted and left out; the scores use the rest.
The metrics are :mod:`imgcluster.scoring.metrics`' (the paper's protocol).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster import rundir as rd
from imgcluster.atomic import atomic_write_bytes
from imgcluster.errors import RunError
from imgcluster.scoring.label_file import LabelsFile, read_labels
from imgcluster.scoring.metrics import Confusion, Scores, confusion, score

CONFUSION_PLOT = "confusion.png"  # in the run's report folder
EXAMPLES = 3  # unmatched paths quoted in messages


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster against the classes: its size, most frequent class and that class's share."""

    cluster: int
    size: int
    majority: str
    purity: float
    matched: str | None  # the class the Hungarian match gives it; None when unmatched


@dataclass(frozen=True)
class Evaluation:
    """What ``eval`` measured; ``to_dict`` is the ``--json`` output."""

    scores: Scores
    n_clusters: int
    n_classes: int
    per_cluster: list[ClusterSummary]
    assignments: Path
    labels: Path
    only_in_assignments: list[str] = field(default_factory=list)
    only_in_labels: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    run: Path | None = None  # the run whose own assignments were scored
    matched: Matched | None = None  # the images scored, with their clusters and classes

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.scores.to_dict(),
            "n_clusters": self.n_clusters,
            "n_classes": self.n_classes,
            "only_in_assignments": len(self.only_in_assignments),
            "only_in_labels": len(self.only_in_labels),
            "per_cluster": [vars(c) for c in self.per_cluster],
            "assignments": str(self.assignments),
            "labels": str(self.labels),
            "plots": [str(p) for p in self.plots],
        }


@dataclass(frozen=True)
class Matched:
    """Assignments and labels joined on the image: aligned clusters and classes."""

    paths: list[str]
    clusters: np.ndarray
    classes: np.ndarray
    only_in_assignments: list[str]
    only_in_labels: list[str]


def evaluate(
    labels: Path | None = None,
    *,
    run: Path | None = None,
    assignments: Path | None = None,
    plot: Path | None = None,
    runs: Path = Path("runs"),
) -> Evaluation:
    """Score the clusters of ``assignments`` (default: ``run``'s, default the latest run under
    ``runs``) against ``labels`` (default: the run's own labels.csv, kept by benchmark runs).

    Writes the confusion matrix to ``plot`` if given, and to ``<run>/report/confusion.png``
    whenever a run's own assignments are scored. Raises :class:`imgcluster.RunError`
    (one line) for anything the user can fix.
    """
    run, assignments = _resolve_files(run, assignments, runs)
    labels = _resolve_labels(labels, run)
    base = _source_folder(run) or assignments.parent
    matched = match(_read_assignments(assignments), read_labels(labels), base)
    if not matched.paths:
        raise RunError(_no_overlap_message(assignments, labels, matched, base))
    table = confusion(matched.clusters, matched.classes)
    own = run is not None and assignments.resolve() == (run / rd.ASSIGNMENTS).resolve()
    plots = [p for p in (plot, run / rd.REPORT / CONFUSION_PLOT if own else None) if p]
    s = score(matched.clusters, matched.classes)
    for path in plots:
        plot_confusion(matched.clusters, matched.classes, path)
    return Evaluation(
        scores=s,
        n_clusters=len(table.clusters),
        n_classes=len(table.classes),
        per_cluster=summarise(table),
        assignments=assignments,
        labels=labels,
        only_in_assignments=matched.only_in_assignments,
        only_in_labels=matched.only_in_labels,
        plots=plots,
        run=run if own else None,
        matched=matched,
    )


def _resolve_files(
    run: Path | None, assignments: Path | None, runs: Path
) -> tuple[Path | None, Path]:
    """The run directory (None for a loose assignments file) and the assignments file."""
    if assignments is not None:
        assignments = Path(assignments)
        if not assignments.is_file():
            raise RunError(f"assignments file not found: {assignments}")
        if run is None and rd.is_run_dir(assignments.parent):
            run = assignments.parent
        return run, assignments
    if run is None:
        run = rd.latest_run(runs)
    run = Path(run)
    if not rd.is_run_dir(run):
        raise RunError(f"{run} is not a run directory (no {rd.CONFIG})")
    if not (run / rd.ASSIGNMENTS).is_file():
        raise RunError(f"{run} has no {rd.ASSIGNMENTS} yet: did its fit finish?")
    return run, run / rd.ASSIGNMENTS


def _resolve_labels(labels: Path | None, run: Path | None) -> Path:
    if labels is not None:
        return Path(labels)
    if run is not None and (run / rd.LABELS).is_file():
        return run / rd.LABELS
    raise RunError(
        "give the true labels with --labels labels.csv (only benchmark runs keep their own)"
    )


def _source_folder(run: Path | None) -> Path | None:
    """The run's source folder (the assignments' paths are relative to it), if recorded."""
    if run is None or not (run / rd.CONFIG).is_file():
        return None
    source = (rd.read_json(run / rd.CONFIG).get("data") or {}).get("source")
    return Path(source) if source else None


def _read_assignments(file: Path) -> tuple[list[str], np.ndarray]:
    try:
        paths, clusters, _ = rd.read_assignments(file)
    except (OSError, UnicodeDecodeError, KeyError, ValueError, TypeError) as e:
        raise RunError(f"cannot read assignments {file}: {type(e).__name__} {e}") from e
    if len(set(paths)) != len(paths):
        raise RunError(f"{file} lists an image more than once")
    return paths, clusters


def match(assigned: tuple[list[str], np.ndarray], labels: LabelsFile, base: Path) -> Matched:
    """Join assignments (paths relative to ``base``) and labels on the image's absolute path.

    Relative label paths are read as relative to the labels file's folder or to ``base``,
    whichever matches more images (ties: the labels file's folder).
    """
    paths, clusters = assigned
    base = Path(os.path.realpath(base))
    index = {_absolute(base, p): i for i, p in enumerate(paths)}
    labelled = _keyed_labels(labels, base, index)
    rows = sorted((index[k], label) for k, (_, label) in labelled.items() if k in index)
    keep = np.array([i for i, _ in rows], dtype=np.int64)
    seen = set(keep.tolist())
    return Matched(
        paths=[paths[i] for i in keep],
        clusters=clusters[keep],
        classes=np.array([label for _, label in rows], dtype=object),
        only_in_assignments=[p for i, p in enumerate(paths) if i not in seen],
        only_in_labels=[w for k, (w, _) in labelled.items() if k not in index],
    )


def _absolute(base: Path, path: str) -> str:
    return os.path.normpath(os.path.join(base, path))


def _keyed_labels(
    labels: LabelsFile, base: Path, index: dict[str, int]
) -> dict[str, tuple[str, str]]:
    """``{absolute path: (path as written, label)}`` under the reading that matches more."""
    folder = Path(os.path.realpath(labels.file.parent))
    readings = [_keys(labels, folder, index), _keys(labels, base, index)]
    hits = [sum(k in index for k in keys) for keys in readings]
    keys = readings[0] if hits[0] >= hits[1] else readings[1]
    labelled: dict[str, tuple[str, str]] = {}
    for key, (written, label) in zip(keys, labels.rows):
        first = labelled.setdefault(key, (written, label))[1]
        if first != label:
            raise RunError(f"{labels.file} gives {written} two labels: {first!r} and {label!r}")
    return labelled


def _keys(labels: LabelsFile, folder: Path, index: dict[str, int]) -> list[str]:
    """The absolute path of every row, relative paths read from ``folder``.

    An absolute path that misses is retried with symbolic links resolved (the run's source is
    stored resolved).
    """
    keys = []
    for written, _ in labels.rows:
        key = _absolute(folder, written)
        if os.path.isabs(written) and key not in index:
            key = os.path.realpath(written)
        keys.append(key)
    return keys


def _no_overlap_message(assignments: Path, labels: Path, matched: Matched, base: Path) -> str:
    a = ", ".join(matched.only_in_assignments[:EXAMPLES])
    b = ", ".join(matched.only_in_labels[:EXAMPLES])
    return (
        f"no image is in both {assignments} and {labels} (assigned: {a}; labelled: {b}); "
        f"label paths must be relative to the labels file's folder, to the run's source "
        f"({base}), or absolute"
    )


def summarise(table: Confusion) -> list[ClusterSummary]:
    """Size, majority class, purity and matched class of each cluster (in match order)."""
    majority, purity = table.majority(), table.purity()
    return [
        ClusterSummary(
            cluster=int(c),
            size=int(table.table[r].sum()),
            majority=str(table.classes[majority[r]]),
            purity=round(float(purity[r]), 6),
            matched=str(table.classes[table.matched[r]]) if table.matched[r] >= 0 else None,
        )
        for r, c in enumerate(table.clusters)
    ]


def plot_confusion(clusters: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Draw the clusters × classes confusion matrix into ``path`` (format from its suffix).

    Rows are clusters in the order of their Hungarian-matched classes (a good clustering shows
    a diagonal; the matched cells are outlined), unmatched clusters last; colours are each
    row's shares, numbers its counts.
    Written atomically; the folder is created. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    table = confusion(np.asarray(clusters), np.asarray(labels))
    fig = _draw(plt, table, score(np.asarray(clusters), np.asarray(labels)))
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=120)
    except ValueError as e:  # unknown format
        raise RunError(f"cannot write plot {path}: {e}") from e
    finally:
        plt.close(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {path.parent}: {e.strerror or e}") from e
    atomic_write_bytes(path, buf.getvalue())
    return path


def _draw(plt: Any, table: Confusion, s: Scores) -> Any:
    """The matplotlib figure of :func:`plot_confusion`."""
    rows, cols = table.table.shape
    shares = table.table / np.maximum(table.table.sum(axis=1, keepdims=True), 1)
    width, height = np.clip([3 + 0.45 * cols, 2.5 + 0.4 * rows], [6, 4.5], [24, 24])
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the cluster")
    if rows * cols <= 900:
        for r, c in np.ndindex(rows, cols):
            if table.table[r, c]:
                colour = "white" if shares[r, c] > 0.6 else "black"
                ax.text(c, r, str(table.table[r, c]), ha="center", va="center", fontsize=7,
                        color=colour)  # fmt: skip
    for r, c in enumerate(table.matched):
        if c >= 0:  # outline the Hungarian match: the cells ACC counts
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="tab:orange"))
    if cols <= 60:
        ax.set_xticks(range(cols), [str(c) for c in table.classes], rotation=60, ha="right")
    if rows <= 60:
        ax.set_yticks(range(rows), [str(c) for c in table.clusters])
    ax.set_xlabel("class")
    ax.set_ylabel("cluster (by matched class)")
    ax.set_title(f"{s.n} images: ACC {s.acc:.3f}  NMI {s.nmi:.3f}  ARI {s.ari:.3f}", fontsize=10)
    fig.tight_layout()
    return fig
