"""``fit``, the pipeline: from a folder of images to a trained run directory.

Scan → decode once into the cache → build (or resume) the SCL model → epochs of
:func:`imgcluster.train.run_epoch`, each closed by a label update, a history line and an atomic
checkpoint → assignments.csv from the 'clustering' head of the final model. ``--time-budget``
fixes the epoch count after the first epoch (:func:`imgcluster.schedule.epochs_for_budget`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcluster import __version__
from imgcluster import rundir as rd
from imgcluster.cache import ImageCache, build_cache, cache_dir_default, default_image_size
from imgcluster.config import RunConfig
from imgcluster.device import DeviceImages, resolve_device
from imgcluster.kmeans import kmeans
from imgcluster.scan import scan_folder
from imgcluster.schedule import epochs_for_budget, steps_per_epoch, total_steps_for
from imgcluster.scl import CLUSTERING, SCL
from imgcluster.train import (
    MEMORY_FORMAT,
    Callback,
    Predictions,
    Progress,
    confidence_ranked,
    make_optimizer,
    predict,
    run_epoch,
    update_task_labels,
)

# Settings a checkpoint cannot survive a change of (they fix the shapes of its state).
STRUCTURAL = (
    ("data", "source"),
    ("data", "image_size"),
    ("model", "backbone"),
    ("model", "feature_dim"),
    ("scl", "k"),
    ("scl", "method"),
    ("scl", "memory_size"),
)


@dataclass
class FitResult:
    """What a finished ``fit`` produced (the same facts are in the run directory)."""

    run_dir: Path
    config: RunConfig
    paths: list[str]
    clusters: np.ndarray
    confidence: np.ndarray
    skipped: list[tuple[str, str]]
    epochs: int
    device: str
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_backbone(name: str, device: torch.device) -> str:
    """'auto': the paper's ResNet-34 on a GPU; on a CPU the net that clusters best within a
    time budget (docs/benchmarks.md: the small net)."""
    if name != "auto":
        return name
    return "resnet34" if device.type == "cuda" else "small"


def paths_digest(paths: list[str]) -> str:
    """Fingerprint of the image list: a resumed run must see the same images in the same order."""
    return hashlib.sha256("\0".join(paths).encode("utf-8")).hexdigest()[:16]


def check_resumable(saved: RunConfig, current: RunConfig) -> None:
    """Refuse a resume whose settings would not fit the checkpoint, naming the setting."""
    for section, name in STRUCTURAL:
        old = getattr(getattr(saved, section), name)
        new = getattr(getattr(current, section), name)
        if new not in (None, "", "auto") and old != new:
            raise rd.RunError(
                f"cannot resume: {name.replace('_', '-')} was {old!r} in the checkpoint, "
                f"now {new!r} (start a new run with another --out instead)"
            )


def load_images(cfg: RunConfig, out: Path, callback: Callback) -> tuple[RunConfig, ImageCache]:
    """Scan the source, choose the image size, decode once into the cache."""
    root = Path(cfg.data.source)
    try:
        scan = scan_folder(root, exclude=[out], follow_links=cfg.data.follow_links)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise rd.RunError(str(e)) from e
    if not scan.paths:
        raise rd.RunError(f"no images found in {root}")
    size = cfg.data.image_size or default_image_size(root, scan.paths)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_dir_default()
    cache = build_cache(
        root,
        scan.paths,
        size,
        cache_dir,
        workers=cfg.data.workers,
        progress=lambda done, total: callback(Progress("decode", done, total)),
    )
    cache.skipped = sorted(scan.skipped + cache.skipped)
    n, k = len(cache.paths), cfg.scl.k
    if n < 2 * k:
        raise rd.RunError(
            f"only {n} usable image(s) in {root}: clustering into k={k} needs at least {2 * k}"
        )
    return cfg.replace(data={"image_size": size}), cache


def prepare_out_dir(cfg: RunConfig, out: Path | None, resume: bool) -> Path:
    """The run directory: refuse to overwrite a previous run unless resuming it."""
    if out is None:
        if resume:
            raise rd.RunError("--resume needs --out: the run directory to continue")
        name = Path(cfg.data.source).resolve().name or "run"
        out = rd.numbered_run_dir(Path("runs"), name)
    elif rd.is_run_dir(out) and not resume:
        raise rd.RunError(
            f"{out} already holds a run: pass --resume to continue it, or another --out"
        )
    elif resume and not rd.is_run_dir(out):
        raise rd.RunError(f"nothing to resume in {out}: no run was started there")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise rd.RunError(f"cannot create {out}: {e.strerror or e}") from e
    return out


class Trainer:
    """The run's mutable state (model, optimiser, generators, epoch counters) and its epochs."""

    def __init__(self, cfg: RunConfig, cache: ImageCache, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.optim.seed)
        n = len(cache.paths)
        self.model = SCL(cfg.model.backbone, n, cfg.scl, cfg.model.feature_dim, cfg.optim.seed)
        self.model.to(device, memory_format=MEMORY_FORMAT)
        self.optimizer = make_optimizer(self.model, cfg)
        self.order_gen = torch.Generator().manual_seed(cfg.optim.seed + 1)
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.optim.seed + 2)
        self.images = DeviceImages(cache.images, device)
        self.digest = paths_digest(cache.paths)
        self.epoch, self.epochs_total = 0, cfg.optim.epochs
        self.last_predictions: Predictions | None = None

    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "version": __version__,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "epochs_total": self.epochs_total,
            "paths_digest": self.digest,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order_gen": self.order_gen.get_state(),
            "aug_gen": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("paths_digest") != self.digest:
            raise rd.RunError(
                "cannot resume: the images in the source folder changed since the checkpoint"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.order_gen.set_state(state["order_gen"])
        self.aug_gen.set_state(state["aug_gen"].to(self.aug_gen.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.epochs_total = int(state["epoch"]), int(state["epochs_total"])

    def epoch_once(self, callback: Callback) -> dict[str, Any]:
        """Train one epoch, then update the labels; return the history record."""
        cfg, n = self.cfg, len(self.images)
        total = total_steps_for(self.epochs_total, n, cfg.optim.batch_size)
        step0 = self.epoch * steps_per_epoch(n, cfg.optim.batch_size)
        gens = (self.order_gen, self.aug_gen)
        stats = run_epoch(
            self.model, self.optimizer, self.images, cfg, gens, step0, total, callback
        )
        started = time.perf_counter()
        last = self.epoch + 1 == self.epochs_total
        task_stats: dict[str, Any] = {}
        if self.model.tasks or last:
            callback(Progress("labels", 0, 1))
            self.last_predictions = predict(self.model, self.images, cfg.scl.temperature)
            task_stats = update_task_labels(
                self.model,
                self.last_predictions,
                cfg.scl.min_cluster_size,
                cfg.optim.seed + self.epoch,
            )
        self.epoch += 1
        return history_record(self.epoch, stats, task_stats, time.perf_counter() - started)


def history_record(
    epoch: int, stats: dict[str, Any], task_stats: dict[str, Any], label_seconds: float
) -> dict[str, Any]:
    """One history.jsonl line: losses, lr, cluster sizes, label flips, speed, time."""
    record = {"epoch": epoch, **{k: v for k, v in stats.items() if k != "train_seconds"}}
    for name, s in task_stats.items():
        prefix = "" if name == CLUSTERING else f"{name}_"
        record[f"{prefix}cluster_sizes"] = s["cluster_sizes"]
        record[f"{prefix}label_flips"] = s["label_flips"]
    record["label_update_seconds"] = label_seconds
    record["seconds"] = stats["train_seconds"] + label_seconds
    return record


def final_assignments(trainer: Trainer) -> tuple[np.ndarray, np.ndarray]:
    """Cluster and confidence of every image from the final model's 'clustering' head.

    For the MoCo + k-means baseline: k-means (faiss) on the features, confidence = the softmax
    over cosine similarities to the centroids at the SCL temperature.
    """
    preds = trainer.last_predictions
    assert preds is not None
    cfg = trainer.cfg
    if CLUSTERING in preds.probs:
        probs = preds.probs[CLUSTERING]
    else:
        _, centroids = kmeans(preds.features, cfg.scl.k, seed=cfg.optim.seed, nredo=3)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        logits = preds.features @ centroids.T / cfg.scl.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return confidence_ranked(probs)


def _noop(_: Progress) -> None:
    pass


def fit(
    config: RunConfig,
    out: Path | None = None,
    *,
    resume: bool = False,
    callback: Callback | None = None,
) -> FitResult:
    """Train SCL on ``config.data.source`` and write the run directory ``out``.

    Raises :class:`imgcluster.rundir.RunError` (one-line message) for anything the user can fix.
    """
    start = time.perf_counter()
    callback = callback or _noop
    try:
        config.validate()
        device = resolve_device(config.optim.device)
    except ValueError as e:
        raise rd.RunError(str(e)) from e
    if config.data.source:
        source = Path(config.data.source).resolve()
        if not source.is_dir():
            raise rd.RunError(f"source folder not found: {config.data.source}")
        config = config.replace(data={"source": str(source)})
    elif not resume:
        raise rd.RunError("no source folder given")
    out = prepare_out_dir(config, Path(out) if out is not None else None, resume)
    callback(Progress("run_dir", 0, 0, {"path": str(out)}))
    state = _load_resume_state(out, config, callback) if resume else None
    if state is not None:
        config = _resumed_config(config, state)
    config = config.replace(model={"backbone": resolve_backbone(config.model.backbone, device)})
    config, cache = load_images(config, out, callback)
    rd.write_json(out / rd.CONFIG, {**config.to_dict(), "version": __version__})
    rd.write_skipped(out / rd.SKIPPED, cache.skipped)
    trainer = Trainer(config, cache, device)
    history = _start_history(trainer, out, state)
    _train(trainer, out, history, start, callback, budgeted=state is None)
    clusters, confidence = final_assignments(trainer)
    rd.write_assignments(out / rd.ASSIGNMENTS, cache.paths, clusters, confidence)
    return FitResult(
        out,
        config,
        cache.paths,
        clusters,
        confidence,
        cache.skipped,
        trainer.epoch,
        str(device),
        history,
    )


def _load_resume_state(out: Path, config: RunConfig, callback: Callback) -> dict | None:
    """The checkpoint to resume from, or None (with a message) when the run never saved one."""
    if not (out / rd.CHECKPOINT).exists():
        callback(Progress("message", 0, 0, {"text": "no checkpoint yet: starting the run over"}))
        return None
    state = rd.load_checkpoint(out / rd.CHECKPOINT)
    check_resumable(RunConfig.from_dict(state["config"]), config)
    return state


def _resumed_config(requested: RunConfig, state: dict) -> RunConfig:
    """The requested settings, completed by the checkpoint's (source, image size, backbone).

    A changed epoch count (``--epochs``) replaces the planned one, time budget included.
    """
    saved = RunConfig.from_dict(state["config"])
    if requested.optim.epochs != saved.optim.epochs:
        state["epochs_total"] = requested.optim.epochs
    return requested.replace(
        data={"source": saved.data.source, "image_size": saved.data.image_size},
        model={"backbone": saved.model.backbone},
        optim={"epochs": int(state["epochs_total"])},
    )


def _start_history(trainer: Trainer, out: Path, state: dict | None) -> list[dict[str, Any]]:
    """Fresh history, or the checkpoint's epochs of the old one (later lines are dropped)."""
    if state is None:
        rd.write_history(out / rd.HISTORY, [])
        return []
    trainer.load_state(state)
    history = [r for r in rd.read_history(out / rd.HISTORY) if r["epoch"] <= trainer.epoch]
    rd.write_history(out / rd.HISTORY, history)
    return history


def _train(
    trainer: Trainer,
    out: Path,
    history: list[dict[str, Any]],
    start: float,
    callback: Callback,
    budgeted: bool,
) -> None:
    """The epoch loop: epoch → history line → checkpoint.

    With a time budget the epoch count is set after the first epoch and re-planned after each
    later one from the median epoch time so far, so that one slow epoch (a cold start, a busy
    machine) neither cuts the run short nor lets it overrun.
    """
    budget = trainer.cfg.optim.time_budget_minutes if budgeted else None
    seconds: list[float] = []
    while trainer.epoch < trainer.epochs_total:
        record = trainer.epoch_once(callback)
        seconds.append(record["seconds"])
        if budget is not None:
            trainer.epochs_total = epochs_for_budget(
                budget * 60.0,
                time.perf_counter() - start,
                float(np.median(seconds)),
                trainer.epoch,
                trainer.cfg.optim.epochs,
            )
        record.update(epochs_total=trainer.epochs_total, device=str(trainer.device))
        history.append(record)
        rd.write_history(out / rd.HISTORY, history)
        rd.save_checkpoint(out / rd.CHECKPOINT, trainer.state())
        callback(Progress("epoch", trainer.epoch, trainer.epochs_total, record))
    if trainer.last_predictions is None:  # a resumed finished run, or the baseline's budget cut
        trainer.last_predictions = predict(
            trainer.model, trainer.images, trainer.cfg.scl.temperature
        )
