"""``assign``: put the images of a folder into the clusters of a trained run's exported model.

Source folder → scan → decode (worker processes) → onnxruntime → cluster = argmax of the
probabilities, confidence = its probability, rank = position by confidence within the cluster
(1 = most confident) → assignments.csv, and on request cluster folders
(:mod:`imgcluster.assigning.folders`).
New folders are assigned with the same model, no retraining; for the
run's own training images the share that agree with fit's assignments.csv is reported.

This path never imports torch: ``model.onnx`` and onnxruntime are all it needs.
"""

from __future__ import annotations

import csv as csvlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster import rundir as rd
from imgcluster.assigning.folders import MODES, FolderResult, cluster_folder, export_folders, layout
from imgcluster.assigning.inference import predict_files
from imgcluster.assigning.onnx_model import OnnxModel
from imgcluster.atomic import atomic_write_bytes
from imgcluster.data.scan import ScanResult, scan_folder
from imgcluster.errors import RunError
from imgcluster.events import Callback, Progress, silent
from imgcluster.scoring.health import Problem, check_clusters, per_cluster


@dataclass
class AssignResult:
    """Every assigned image (sorted relative paths) with its cluster, confidence and rank."""

    source: Path
    model: Path
    k: int
    paths: list[str]
    clusters: np.ndarray  # N, int
    confidence: np.ndarray  # N, float
    ranks: np.ndarray  # N, 1 = most confident in its cluster
    embeddings: np.ndarray  # N×d
    skipped: list[tuple[str, str]]
    csv: Path
    provider: str
    seconds: float
    agreement: float | None = None  # with fit's assignments.csv, for the training images
    compared: int = 0  # images in that comparison
    folders: FolderResult | None = None
    unsure: int = 0  # images under --unsure-below
    duplicates: list[list[int]] | None = None  # near-identical groups (rows), when looked for
    report: Path | None = None  # the run's report, redrawn to link the cluster folders

    @property
    def problems(self) -> list[Problem]:
        """Signs of a poor clustering of these images (:mod:`imgcluster.scoring.health`)."""
        return check_clusters(self.clusters, self.confidence, self.k)

    @property
    def images_per_s(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (for ``assign --json``)."""
        sizes, means = per_cluster(self.clusters, self.confidence, self.k)
        out = {
            "source": str(self.source),
            "model": str(self.model),
            "images": len(self.paths),
            "k": self.k,
            "cluster_sizes": sizes,
            "mean_confidence": means,
            "assignments_csv": str(self.csv),
            "report": str(self.report) if self.report is not None else None,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "agreement_with_fit": self.agreement,
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "unsure": self.unsure,
            "problems": [p.to_dict() for p in self.problems],
        }
        if self.duplicates is not None:
            out["duplicates"] = [[self.paths[i] for i in g] for g in self.duplicates]
        if self.folders is not None:
            f = self.folders
            out["export_folders"] = {
                "out": str(f.out),
                "written": f.written,
                "unchanged": f.unchanged,
                "removed": f.removed,
                "renamed": [list(pair) for pair in f.renamed],
            }
        return out


def assign(
    source: Path | None = None,
    *,
    run: Path | None = None,
    model: Path | None = None,
    export_folders_to: Path | None = None,
    mode: str = "copy",
    batch_size: int = 256,
    unsure_below: float | None = None,
    csv: Path | None = None,
    workers: int | None = None,
    follow_links: bool | None = None,
    skip_duplicates: bool = False,
    progress: Callback | None = None,
    report: bool = True,
) -> AssignResult:
    """Assign every image under ``source`` to a cluster of a run's exported model.

    ``run`` defaults to the latest run under ./runs with a model.onnx; ``model`` names an ONNX
    file instead. ``source`` defaults to the run's (the model's) training folder. The
    assignments go to ``csv``: by default ``OUT/assignments.csv`` with ``export_folders_to``,
    else ``assignments-<source name>.csv`` beside the model. Symbolic links out of ``source``
    are followed only with ``follow_links`` (default: as the run's fit did).
    ``skip_duplicates``: find near-identical images (:mod:`imgcluster.scoring.neighbours`) and
    put only the most confident of each group into the cluster folders. When the run's own
    training images are sorted into folders, the run records where (``exported.json``) and,
    unless ``report`` is False, its report is redrawn with each cluster linked to its folder.
    Raises :class:`imgcluster.RunError` (one line) for anything the user can fix.
    """
    began = time.perf_counter()
    _check_options(batch_size, unsure_below, mode)
    run_dir, model_path = resolve_model(run, model)
    onnx = OnnxModel(model_path)
    root = resolve_source(Path(source) if source is not None else None, run_dir, onnx)
    out = Path(export_folders_to) if export_folders_to is not None else None
    progress = progress or silent
    if follow_links is None:
        follow_links = _run_setting(run_dir, "follow_links") is True
    scan = _scan(root, [p for p in (out, run_dir) if p is not None], follow_links)
    result = _predict(onnx, root, scan, run_dir, batch_size, workers, progress)
    result.model = model_path
    result.csv = Path(csv) if csv is not None else _default_csv(root, model_path, out)
    if unsure_below is not None:
        result.unsure = int((result.confidence < unsure_below).sum())
    _compare_with_fit(result, run_dir)
    if skip_duplicates:
        result.duplicates = _duplicates(result, onnx.info.image_size)
    if out is not None:
        result.folders = _export(result, out, mode, unsure_below, progress)
        if run_dir is not None and root == _training_folder(run_dir):
            rd.write_json(run_dir / rd.EXPORTED, {"folders": str(out.resolve())})
            if report and (run_dir / rd.REPORT).is_dir():
                from imgcluster.reporting.page import report as write_report

                result.report = write_report(run_dir).path
    if out is None or result.csv != out / rd.ASSIGNMENTS:
        result.csv.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(result.csv, assignments_csv(result).encode("utf-8"))
    result.seconds = time.perf_counter() - began
    return result


def _predict(
    onnx: OnnxModel,
    root: Path,
    scan: ScanResult,
    run_dir: Path | None,
    batch_size: int,
    workers: int | None,
    progress: Callback,
) -> AssignResult:
    """Run the model over the scanned images of ``root``, rank within clusters."""
    predicted = predict_files(
        onnx,
        root,
        scan.paths,
        batch_size=batch_size,
        workers=workers,
        cache_dir=_cache_dir(run_dir),
        progress=progress,
        stamps=scan.stamps,
    )
    if not predicted.paths:
        raise RunError(f"none of the {len(scan.paths)} image(s) in {root} could be read")
    probs = predicted.probabilities
    clusters, confidence = probs.argmax(1).astype(np.int64), probs.max(1).astype(np.float64)
    return AssignResult(
        source=root,
        model=Path(),
        k=onnx.info.k,
        paths=predicted.paths,
        clusters=clusters,
        confidence=confidence,
        ranks=confidence_ranks(clusters, confidence, predicted.paths),
        embeddings=predicted.embeddings,
        skipped=sorted(scan.skipped + predicted.skipped),
        csv=Path(),
        provider=onnx.provider,
        seconds=0.0,
    )


def _check_options(batch_size: int, unsure_below: float | None, mode: str) -> None:
    if mode not in MODES:
        raise RunError(f"unknown mode {mode!r} (use {', '.join(MODES)})")
    if batch_size < 1:
        raise RunError(f"batch size must be at least 1, got {batch_size}")
    if unsure_below is not None and not 0.0 <= unsure_below <= 1.0:
        raise RunError(f"--unsure-below must be a probability in [0, 1], got {unsure_below}")


def resolve_model(run: Path | None, model: Path | None) -> tuple[Path | None, Path]:
    """(run directory or None, model file) from the options; the latest run by default."""
    if run is not None and model is not None:
        raise RunError("give either --run or --model, not both")
    if model is not None:
        model = Path(model)
        if not model.is_file():
            raise RunError(f"model file not found: {model}")
        run_dir = model.parent if rd.is_run_dir(model.parent) else None
        return run_dir, model
    run = Path(run) if run is not None else rd.latest_run(Path("runs"), needs=rd.MODEL)
    if not (run / rd.MODEL).is_file():
        what = "is not a run directory" if not rd.is_run_dir(run) else f"has no {rd.MODEL}"
        raise RunError(f"{run} {what}: export it first with: imgcluster export --run {run}")
    return run, run / rd.MODEL


def resolve_source(source: Path | None, run_dir: Path | None, onnx: OnnxModel) -> Path:
    """The folder to assign: as given, else the training folder of the run or model."""
    if source is None:
        trained_on = onnx.info.source
        if run_dir is not None and (run_dir / rd.CONFIG).is_file():
            trained_on = rd.read_json(run_dir / rd.CONFIG).get("data", {}).get("source", "")
        if not trained_on:
            raise RunError("the model names no training folder: give the folder to assign")
        source = Path(trained_on)
    if not source.is_dir():
        raise RunError(f"source folder not found: {source}")
    return source.resolve()


def _training_folder(run_dir: Path) -> Path | None:
    """The folder the run trained on (None when config.json names none)."""
    source = _run_setting(run_dir, "source")
    return Path(source).resolve() if source else None


def _scan(root: Path, exclude: list[Path], follow_links: bool) -> ScanResult:
    """The images under ``root``, leaving out the run and the export folder."""
    try:
        scan = scan_folder(root, exclude=exclude, follow_links=follow_links)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise RunError(str(e)) from e
    if not scan.paths:
        raise RunError(f"no images found in {root}")
    return scan


def _run_setting(run_dir: Path | None, name: str) -> Any:
    """A data setting of the run's config.json (None without a run or that setting)."""
    if run_dir is None or not (run_dir / rd.CONFIG).is_file():
        return None
    return rd.read_json(run_dir / rd.CONFIG).get("data", {}).get(name)


def _cache_dir(run_dir: Path | None) -> Path | None:
    """The run's decode cache folder, where its images may already be decoded."""
    folder = _run_setting(run_dir, "cache_dir")
    return Path(folder) if folder else None


def _default_csv(root: Path, model: Path, out: Path | None) -> Path:
    if out is not None:
        return Path(out) / rd.ASSIGNMENTS
    return model.parent / f"assignments-{root.name or 'images'}.csv"


def confidence_ranks(clusters: np.ndarray, confidence: np.ndarray, paths: list[str]) -> np.ndarray:
    """Rank of each image within its cluster by falling confidence (1 = most confident).

    Equal confidences are ordered by path, so ranks never depend on the scan order.
    """
    by_path = np.argsort(np.array(paths, dtype=object), kind="stable")
    position = np.empty(len(paths), dtype=np.int64)
    position[by_path] = np.arange(len(paths))
    order = np.lexsort((position, -np.asarray(confidence, dtype=np.float64), clusters))
    ranks = np.empty(len(paths), dtype=np.int64)
    sorted_clusters = np.asarray(clusters)[order]
    starts = np.searchsorted(sorted_clusters, sorted_clusters, side="left")
    ranks[order] = np.arange(len(order)) - starts + 1
    return ranks


def assignments_csv(result: AssignResult, files: list[str] | None = None) -> str:
    """assignments.csv text: path, cluster, confidence, rank (and file: where OUT holds it)."""
    header = ["path", "cluster", "confidence", "rank"] + (["file"] if files else [])
    rows = [
        [p, int(c), f"{float(s):.6f}", int(r)]
        for p, c, s, r in zip(result.paths, result.clusters, result.confidence, result.ranks)
    ]
    if files:
        rows = [row + [f] for row, f in zip(rows, files)]
    buf = io.StringIO()
    writer = csvlib.writer(buf, lineterminator="\n")  # quotes commas and quotes in names
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _compare_with_fit(result: AssignResult, run_dir: Path | None) -> None:
    """Share of the run's training images that land in the cluster fit gave them."""
    if run_dir is None or not (run_dir / rd.ASSIGNMENTS).is_file():
        return
    trained_on = rd.read_json(run_dir / rd.CONFIG).get("data", {}).get("source", "")
    if not trained_on or Path(trained_on).resolve() != result.source:
        return
    paths, clusters, _ = rd.read_assignments(run_dir / rd.ASSIGNMENTS)
    fit_cluster = dict(zip(paths, clusters.tolist()))
    same = [fit_cluster[p] == c for p, c in zip(result.paths, result.clusters) if p in fit_cluster]
    if same:
        result.agreement, result.compared = float(np.mean(same)), len(same)


def _export(
    result: AssignResult, out: Path, mode: str, unsure_below: float | None, progress: Callback
) -> FolderResult:
    """Cluster folders in ``out`` plus ``out/assignments.csv`` naming each image's file."""
    progress(Progress("export", 0, len(result.paths)))
    targets = layout(
        result.paths, result.clusters, result.ranks, result.confidence, result.k, unsure_below
    )
    left_out = {i for g in result.duplicates or [] for i in g[1:]}  # all but each group's first
    kept = [i for i in range(len(result.paths)) if i not in left_out]

    def index(files: list[str]) -> dict[str, bytes]:
        """assignments.csv, with an empty file for each duplicate left out of the folders."""
        where = dict(zip(kept, files, strict=True))
        every = [where.get(i, "") for i in range(len(result.paths))]
        return {rd.ASSIGNMENTS: assignments_csv(result, every).encode("utf-8")}

    return export_folders(
        out,
        [result.source / result.paths[i] for i in kept],
        [targets[i] for i in kept],
        [cluster_folder(c, result.k) for c in range(result.k)],
        mode,
        index,
        progress,
    )


def _duplicates(result: AssignResult, size: int) -> list[list[int]]:
    """Near-identical groups among the assigned images; candidates decoded again to compare."""
    from imgcluster.data.decode import DecodeError, decode_image
    from imgcluster.scoring.neighbours import near_duplicates

    def image(i: int) -> np.ndarray | None:
        try:
            return decode_image(result.source / result.paths[i], size)
        except DecodeError:
            return None

    return near_duplicates(result.embeddings, image, result.confidence)
