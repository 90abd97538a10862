"""The library's public functions, each a short list of steps: what every command runs.

- :func:`fit`: settings resolved → run directory → images decoded once (the cache) → training
  (:mod:`imgcluster.train.trainer`) → assignments.csv → model.onnx (checked) → the report.
- :func:`resume`: the same run directory's training continued from its checkpoint.
- ``assign`` (:mod:`imgcluster.assigning.assignment`): a folder through model.onnx → clusters,
  assignments.csv and cluster folders; needs onnxruntime, not torch.
- ``evaluate`` (:mod:`imgcluster.scoring.evaluate`): assignments against a labels file.
- ``export_onnx`` (:mod:`imgcluster.export`) and ``report`` (:mod:`imgcluster.reporting.page`).

Under torchrun every rank calls :func:`fit` (docs/distributed.md): rank 0 chooses the run
directory, builds the decode cache first, writes every file and reports progress; all ranks
train. Importing this module is cheap: torch loads when a function that needs it runs.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster import __version__
from imgcluster import rundir as rd
from imgcluster.config import INIT_AUTO, RunConfig, resolve, resolve_start
from imgcluster.errors import RunError
from imgcluster.events import Callback, Progress, message, silent
from imgcluster.scoring.health import Problem, check_clusters, per_cluster

if TYPE_CHECKING:
    import torch

    from imgcluster.data.sources import Images
    from imgcluster.train.distributed import World

# What fit still does after its last epoch, counted against --time-budget so that the command
# ends within it: the ONNX export with its check, and the report (measured on the 2-core CPU
# for the demo's 1,797 images: 5.3 s and 10.7 s; the report's t-SNE is capped at 2,000 images).
EXPORT_SECONDS, REPORT_SECONDS = 5.0, 11.0

# The other public functions, loaded on first use (assign must not load torch).
_ELSEWHERE = {
    "assign": "imgcluster.assigning.assignment",
    "evaluate": "imgcluster.scoring.evaluate",
    "export_onnx": "imgcluster.export",
    "report": "imgcluster.reporting.page",
    "score": "imgcluster.scoring.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'imgcluster.api' has no attribute {name!r}")


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
    problems: list[Problem] = field(default_factory=list)  # signs of a poor clustering
    k_choice: dict[str, Any] | None = None  # --k auto: how k was chosen (KChoice.to_dict)
    start_choice: dict[str, Any] | None = None  # --init auto: the start chosen, and why

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (``fit --json``)."""
        k = int(self.config.scl.k or 0)
        sizes, means = per_cluster(self.clusters, self.confidence, k)
        return {
            "run_dir": str(self.run_dir),
            "images": len(self.paths),
            "k": k,
            "cluster_sizes": sizes,
            "mean_confidence": means,
            "epochs": self.epochs,
            "device": self.device,
            "skipped": len(self.skipped),
            "problems": [p.to_dict() for p in self.problems],
            "k_choice": self.k_choice,
            "start_choice": self.start_choice,
        }


def fit(
    config: RunConfig,
    out: Path | None = None,
    *,
    callback: Callback | None = None,
    report: bool = True,
) -> FitResult:
    """Train SCL on ``config.data.source`` (a folder, or a benchmark set's name) into the new
    run directory ``out`` (default: ``runs/<source name>``, numbered).

    At the end the model is exported to ``model.onnx`` (checked against torch) and, unless
    ``report`` is False, the HTML report is written to ``report/``. Raises :class:`RunError`
    (one-line message) for anything the user can fix. Under torchrun (``WORLD_SIZE`` > 1) only
    rank 0 writes the run directory and calls ``callback``; the other ranks' results have no
    clusters.
    """
    out = Path(out) if out is not None else None
    return _on_every_rank(config, out, False, True, callback, report)


def resume(
    run_dir: Path,
    changes: dict[str, dict[str, Any]] | None = None,
    *,
    callback: Callback | None = None,
    report: bool = True,
) -> FitResult:
    """Continue the run in ``run_dir`` from its last checkpoint.

    The run keeps its settings (config.json) but for ``changes``, given per section as for
    :meth:`RunConfig.replace` (e.g. ``{"optim": {"epochs": 300, "time_budget_minutes": 10}}``):
    a new epoch count replaces the planned one, a time budget is this command's. Settings that
    shape the checkpoint (source, k, backbone, ...) cannot change.
    """
    run_dir = Path(run_dir)
    if not (run_dir / rd.CONFIG).is_file():
        raise RunError(
            f"nothing to resume in {run_dir}: no run saved its settings there (a run stopped "
            "while decoding its images has none): start it again without --resume"
        )
    saved = RunConfig.from_dict(rd.read_json(run_dir / rd.CONFIG))
    try:
        config = saved.replace(**(changes or {}))
    except (TypeError, AttributeError) as e:
        raise RunError(f"cannot resume with {changes}: {e}") from e
    budgeted = "time_budget_minutes" in (changes or {}).get("optim", {})
    return _on_every_rank(config, run_dir, True, budgeted, callback, report)


def _on_every_rank(
    config: RunConfig,
    out: Path | None,
    resuming: bool,
    budgeted: bool,
    callback: Callback | None,
    report: bool,
) -> FitResult:
    """Join the process group (torchrun) and run fit or resume on this rank."""
    from imgcluster.train.device import resolve_device
    from imgcluster.train.distributed import process_group

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            config.validate()
            device = resolve_device(config.optim.device)
            world, device = stack.enter_context(process_group(device))
            config = resolve(config, device.type)
        except ValueError as e:
            raise RunError(str(e)) from e
        callback = callback if callback is not None and world.is_main else silent
        return _run(config, out, resuming, budgeted, report, callback, world, device, start)


def _run(
    config: RunConfig,
    out: Path | None,
    resuming: bool,
    budgeted: bool,
    report: bool,
    callback: Callback,
    world: World,
    device: torch.device,
    start: float,
) -> FitResult:
    """The steps of fit or resume (``resuming``) on one rank (the only one without torchrun).

    ``budgeted``: the time budget (``optim.time_budget_minutes``) applies to this command; a
    resumed run is budgeted only when its command gives a budget.
    """
    from imgcluster.train.allocator import release_free_memory
    from imgcluster.train.checkpoint import check_resumable, load_checkpoint
    from imgcluster.train.distributed import broadcast_object, main_decides
    from imgcluster.train.trainer import (
        Trainer,
        final_probabilities,
        start_history,
        train_epochs,
    )

    if not (config.data.source or config.data.benchmark):
        raise RunError("no source folder given")
    state, created, pretrained = None, False, None
    if not resuming:
        if config.model.init != INIT_AUTO:  # a missing file fails before any folder is made
            pretrained = _pretrained_start(config, callback)
        created = out is None or not out.exists()
        out = main_decides(lambda: new_run_dir(config, out))  # rank 0 numbers it
    else:
        assert out is not None
        if broadcast_object((out / rd.CHECKPOINT).exists()):  # rank 0's view decides
            state = load_checkpoint(out / rd.CHECKPOINT)
            check_resumable(RunConfig.from_dict(state["config"]), config)
        else:
            message(callback, "no checkpoint yet: starting the run over")
    callback(Progress("run_dir", info={"path": str(out)}))
    try:
        config, images, truth = _images(config, out, (world, device), callback)
        if state is None and pretrained is None:  # a start chosen from the images; a resume
            pretrained = _pretrained_start(config, callback)  # that starts over
    except RunError:
        if created and world.is_main:  # a run that never started leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finish = EXPORT_SECONDS + (REPORT_SECONDS if report else 0.0)
    budget = config.optim.time_budget_minutes if budgeted else None
    budget_s = budget * 60.0 - finish if budget is not None else None
    k_choice = None  # --k auto: how k was chosen (a resumed run keeps its record)
    start_choice = _start_choice(config, images.start_reason)  # --init auto: what and why
    if resuming and (out / rd.CONFIG).is_file():
        saved = rd.read_json(out / rd.CONFIG)
        k_choice, start_choice = saved.get("k_choice"), saved.get("start_choice")
    elif start_choice is not None:
        message(callback, f"start: {start_choice['summary']}")
    if config.scl.k is None:  # --k auto: the features train alone, then k is chosen on them
        config, choice, pretrained = _choose_k(
            config, images, out, (world, device), callback, budget_s, start, pretrained
        )
        k_choice = choice.to_dict()
    trainer = Trainer(config, images.cache, device, world, truth, pretrained)
    if state is not None and config.optim.epochs != state["config"]["optim"]["epochs"]:
        state["epochs_total"] = config.optim.epochs  # a new epoch count replaces the plan
    history = start_history(trainer, out, state)
    trainer.prepare_views(callback, _left(budget_s, start))  # a frozen backbone's, once
    config = trainer.cfg
    if world.is_main:
        meta: dict[str, Any] = {"version": __version__, "world_size": world.world_size}
        if k_choice is not None:
            meta["k_choice"] = k_choice
        if start_choice is not None:
            meta["start_choice"] = start_choice
        rd.write_json(out / rd.CONFIG, {**config.to_dict(), **meta})
        rd.write_skipped(out / rd.SKIPPED, images.cache.skipped)
    train_epochs(trainer, out, history, callback, budget_s, start)
    release_free_memory()  # the pages kept for the steps: not needed by the export
    clusters, confidence = np.zeros(0, dtype=np.int64), np.zeros(0)  # other ranks: no result
    if world.is_main:
        probs, centroids = final_probabilities(trainer)
        clusters, confidence = most_likely(probs)
        rd.write_assignments(out / rd.ASSIGNMENTS, images.cache.paths, clusters, confidence)
        if centroids is not None:
            rd.write_centroids(out / rd.CENTROIDS, centroids)
        features = trainer.last_predictions.features  # type: ignore[union-attr]
        _neighbours(out, features, images.cache, clusters, confidence, config.scl.k or 0)
        _export_and_report(out, images.cache.images, report, callback)
    problems = check_clusters(clusters, confidence, config.scl.k or 0)
    return FitResult(out, config, images.cache.paths, clusters, confidence, images.cache.skipped,
                     trainer.epoch, str(device), history, problems, k_choice,
                     start_choice)  # fmt: skip


def _start_choice(config: RunConfig, reason: str | None) -> dict[str, Any] | None:
    """``--init auto``'s record (config.json, ``--json``, the report): the start, the network,
    whether it is frozen, and why; None for a start that was given."""
    if reason is None:
        return None
    model = config.model
    what = "random weights" if not model.pretrained else f"ImageNet weights of {model.backbone}"
    frozen = ", backbone frozen" if model.freeze_encoder else ""
    return {"init": model.init, "backbone": model.backbone, "freeze_encoder": model.freeze_encoder,
            "reason": reason, "summary": f"{what}{frozen} (auto: {reason})"}  # fmt: skip


def _left(budget_s: float | None, start: float) -> float | None:
    """Seconds of ``budget_s`` (counted from ``start``) still left; None without a budget."""
    return None if budget_s is None else budget_s - (time.perf_counter() - start)


def _pretrained_start(config: RunConfig, callback: Callback) -> dict[str, Any] | None:
    """The backbone weights of ``--init`` (None without a pretrained start), matched to the
    backbone; one message says what was loaded."""
    if not config.model.pretrained:
        return None
    from imgcluster.method.model import build_backbone
    from imgcluster.method.pretrained import load_start

    backbone = build_backbone(config.model.backbone, config.model.stem)
    start, loaded = load_start(
        backbone, config.model.init, config.model.backbone, config.data.download
    )
    message(callback, loaded.summary())
    return {f"backbone.{name}": value for name, value in start.items()}


def _choose_k(
    config: RunConfig,
    images: Images,
    out: Path,
    where: tuple[World, torch.device],
    callback: Callback,
    budget_s: float | None,
    start: float,
    pretrained: dict[str, Any] | None,
) -> tuple[RunConfig, Any, dict[str, Any]]:
    """``--k auto`` (:mod:`imgcluster.method.k_estimate`): the features train alone (instance
    discrimination) for a share of the epochs or of the time budget; k = 2..k-max are scored on
    them (rank 0; broadcast). Returns the settings with the chosen k and the epochs left, the
    choice, and the trained encoder's weights, which SCL then starts from. A frozen pretrained
    backbone's features do not train: k is scored on them at once, and the whole run is left."""
    from imgcluster.method.k_estimate import ESTIMATE_SHARE, estimate_k
    from imgcluster.train.distributed import broadcast_object
    from imgcluster.train.trainer import Trainer, train_epochs

    world, device = where
    k_max = int(config.scl.k_max or 2)  # set from the images by _images
    if config.model.pretrained and config.model.freeze_encoder:
        message(callback, f"choosing k = 2..{k_max} on the frozen network's features")
        trainer = Trainer(config.replace(scl={"k": k_max}), images.cache, device, world, None,
                          pretrained)  # fmt: skip
        features = trainer.predict(backbone=True).backbone
        choice = estimate_k(features, k_max, config.optim.seed) if world.is_main else None
        choice = broadcast_object(choice)
        message(callback, choice.summary())
        return config.replace(scl={"k": choice.k}), choice, pretrained
    epochs = int(config.optim.epochs or 1)
    first = max(1, round(ESTIMATE_SHARE * epochs)) if epochs > 1 else 1
    features_only = config.replace(scl={"k": k_max, "method": "moco-kmeans"},
                                   optim={"epochs": first})  # fmt: skip
    message(callback, f"choosing k: the features train alone for {ESTIMATE_SHARE:.0%} of the "
            f"run, then k = 2..{k_max} are scored on them")  # fmt: skip
    trainer = Trainer(features_only, images.cache, device, world, None, pretrained)
    share_s = None
    if budget_s is not None:
        share_s = ESTIMATE_SHARE * (budget_s - (time.perf_counter() - start))
    train_epochs(trainer, out, [], callback, share_s, save=False)
    # Scored on the backbone's features: instance discrimination spreads the projected
    # embeddings evenly over the sphere, while the features before the projection keep the
    # groups (docs/benchmarks.md, "Choosing k").
    preds = trainer.last_predictions
    if preds is None or preds.backbone is None:  # a budget that cut the planned last epoch
        preds = trainer.predict(backbone=True)
    choice = None
    if world.is_main:
        choice = estimate_k(preds.backbone, k_max, config.optim.seed)  # type: ignore[arg-type]
    choice = broadcast_object(choice)
    message(callback, choice.summary())
    encoder = {name: v.detach().cpu() for name, v in trainer.model.encoder.state_dict().items()}
    left = max(1, epochs - trainer.epoch)
    return config.replace(scl={"k": choice.k}, optim={"epochs": left}), choice, encoder


def _images(
    config: RunConfig, out: Path, where: tuple[World, torch.device], callback: Callback
) -> tuple[RunConfig, Images, np.ndarray | None]:
    """The run's images decoded (rank 0 first, into the cache), checked, and the settings
    found in them (the start, the image size, the views, the batch); the known classes, if
    any."""
    from imgcluster.data import sources
    from imgcluster.train.distributed import main_first
    from imgcluster.train.trainer import fitted_to_images

    world, device = where
    images = main_first(lambda: sources.load(config, [out], callback, device.type))  # one decode
    config = resolve_start(images.config(config), device.type)
    if config.scl.k is None:  # --k auto: up to k-max, by default 30 or half the images
        from imgcluster.method.k_estimate import DEFAULT_K_MAX

        n = len(images.cache.paths)
        k_max = config.scl.k_max or max(2, min(DEFAULT_K_MAX, n // 2))
        config = config.replace(scl={"k_max": k_max})
        sources.check_enough(images, k_max, "k-max")
    else:
        sources.check_enough(images, config.scl.k)
    if len(images.cache.paths) < 2 * world.world_size:  # a batch of at least 2 on every rank
        raise RunError(f"{len(images.cache.paths)} images cannot feed {world.world_size} processes")
    try:
        config = fitted_to_images(config, images.cache.images)
    except ValueError as e:
        raise RunError(str(e)) from e
    return config, images, _known_classes(config, images, out, world.is_main)


def _neighbours(
    out: Path,
    features: np.ndarray,
    cache: Any,
    clusters: np.ndarray,
    confidence: np.ndarray,
    k: int,
) -> None:
    """duplicates.csv and outliers.csv of the training images (:mod:`scoring.neighbours`)."""
    from imgcluster.scoring import neighbours as nb

    groups = nb.near_duplicates(features, lambda i: np.asarray(cache.images[i]), confidence)
    rd.write_duplicates(out / rd.DUPLICATES, nb.duplicates_rows(groups, cache.paths))
    found = nb.outliers(features, clusters, k)
    rd.write_outliers(out / rd.OUTLIERS, nb.outliers_rows(found, cache.paths))


def most_likely(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster (argmax) and confidence (its probability) of each row of N×C probabilities."""
    clusters = probs.argmax(axis=1)
    return clusters.astype(np.int64), probs[np.arange(len(probs)), clusters]


def _known_classes(
    config: RunConfig, images: Images, out: Path, is_main: bool
) -> np.ndarray | None:
    """The images' classes when known (a benchmark set, or ``--labels``), copied into the run's
    labels.csv for ``eval``; read only to score each epoch."""
    from imgcluster.data.sources import known_classes

    classes = images.classes
    if classes is None and config.data.labels:
        classes = known_classes(images.cache.paths, Path(config.data.labels), images.root).tolist()
    if classes is None:
        return None
    if is_main:  # under torchrun only rank 0 writes the run directory
        rd.write_labels(out / rd.LABELS, images.cache.paths, classes)
    return np.asarray(classes)


def new_run_dir(config: RunConfig, out: Path | None) -> Path:
    """The run directory of a new run: ``out``, or ``runs/<source name>`` numbered. A folder
    that holds a run is refused; one whose run never saved a checkpoint (killed or failed
    early) holds nothing to lose and is started over."""
    if out is None:
        name = config.data.benchmark or Path(config.data.source).name or "run"
        out = rd.numbered_run_dir(Path("runs"), name)
    elif (out / rd.CHECKPOINT).exists():
        raise RunError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {out}: {e.strerror or e}") from e
    return out


def _export_and_report(out: Path, images: np.ndarray, report: bool, callback: Callback) -> None:
    """model.onnx for ``assign`` (and the report); then the report unless ``report`` is False."""
    from imgcluster.export import export_onnx

    exported = export_onnx(out, images=images)
    message(callback, f"model.onnx: onnxruntime agrees with torch (max abs diff "
            f"{exported.max_abs_diff:.1e}, argmax {exported.argmax_agreement:.0%} of "
            f"{exported.checked_images} images)", detail=True)  # fmt: skip
    if report:
        from imgcluster.reporting.page import report as write_report

        page = write_report(out, images=images)
        message(callback, f"report: {page.path}", detail=True)
