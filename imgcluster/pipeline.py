"""``fit``, the pipeline: from a folder of images to a trained run directory.

Scan → decode once into the cache → build (or resume) the SCL model → epochs of
:func:`imgcluster.train.run_epoch`, each closed by a label update, a history line and an atomic
checkpoint → assignments.csv from the 'clustering' head of the final model. ``--time-budget``
fixes the epoch count after the first epoch (:func:`imgcluster.schedule.epochs_for_budget`).

Under torchrun every rank runs ``fit`` (docs/distributed.md): rank 0 chooses the run directory,
builds the decode cache first, writes every file and reports progress; all ranks train.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcluster import __version__
from imgcluster import rundir as rd
from imgcluster.allocator import release_free_memory, retain_freed_memory
from imgcluster.augment import AUGMENTATIONS, choose_augmentation
from imgcluster.cache import ImageCache, build_cache, cache_dir_default, default_image_size
from imgcluster.config import RunConfig, auto_batch_size
from imgcluster.device import DeviceImages, compile_pays, resolve_device, use_fast_kernels
from imgcluster.diagnostics import epoch_diagnostics
from imgcluster.distributed import (
    World,
    broadcast_,
    broadcast_object,
    current_world,
    gather_objects,
    main_decides,
    main_first,
    process_group,
)
from imgcluster.kmeans import kmeans
from imgcluster.metrics import cluster_accuracy
from imgcluster.scan import scan_folder
from imgcluster.schedule import epochs_for_budget, steps_per_epoch, total_steps_for
from imgcluster.scl import CLUSTERING, SCL
from imgcluster.train import (
    MEMORY_FORMAT,
    PREDICT_BATCH,
    Callback,
    Predictions,
    Progress,
    Replica,
    StepKernels,
    confidence_ranked,
    global_batch_size,
    make_optimizer,
    predict_all,
    run_epoch,
    sync_buffers,
    update_task_labels,
)

# What a source loads as: the config with the facts found, the decoded images and, for a
# benchmark set, each image's class.
Loaded = tuple[RunConfig, ImageCache, "np.ndarray | None"]

# What fit still does after its last epoch, counted against --time-budget so that the command
# ends within it: the ONNX export with its check, and the report (measured on the 2-core CPU
# for the demo's 1,797 images: 5.3 s and 10.7 s; the report's t-SNE is capped at 2,000 images).
EXPORT_SECONDS, REPORT_SECONDS = 5.0, 11.0

# Settings a checkpoint cannot survive a change of (they fix the shapes of its state).
STRUCTURAL = (
    ("data", "source"),
    ("data", "benchmark"),
    ("data", "image_size"),
    ("model", "backbone"),
    ("model", "feature_dim"),
    ("model", "projector_bn"),
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


def load_images(cfg: RunConfig, out: Path, callback: Callback) -> Loaded:
    """Scan the source, choose the image size, decode once into the cache.

    A benchmark set (``data.benchmark``) comes from :mod:`imgcluster.datasets` instead, and its
    labels are written into the run directory (labels.csv) for ``eval`` and returned, so each
    epoch's clusters can be scored (history.jsonl); a folder has none.
    """
    if cfg.data.benchmark:
        return load_benchmark(cfg, out, callback)
    root = Path(cfg.data.source)
    try:
        scan = scan_folder(root, exclude=[out], follow_links=cfg.data.follow_links)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise rd.RunError(str(e)) from e
    if not scan.paths:
        raise rd.RunError(f"no images found in {root}")
    size = cfg.data.image_size or default_image_size(root, scan.paths)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_dir_default()
    try:
        cache = build_cache(
            root,
            scan.paths,
            size,
            cache_dir,
            workers=cfg.data.workers,
            progress=lambda done, total: callback(Progress("decode", done, total)),
            stamps=scan.stamps,
        )
    except OSError as e:  # decode failures are skipped files: this is the cache folder (full?)
        where = e.filename or cache_dir
        raise rd.RunError(f"cannot write the decode cache {where}: {e.strerror or e}") from e
    cache.skipped = sorted(scan.skipped + cache.skipped)
    check_enough_images(len(cache.paths), cfg.scl.k, root)
    truth = None
    if cfg.data.labels:
        truth = known_classes(cache.paths, Path(cfg.data.labels), root)
        if current_world().is_main:
            rd.write_labels(out / rd.LABELS, cache.paths, truth.tolist())
    return cfg.replace(data={"image_size": size}), cache, truth


def known_classes(paths: list[str], labels: Path, root: Path) -> np.ndarray:
    """The class of every image from a labels file (``fit --labels``), read only to score each
    epoch (imgcluster.diagnostics); every image must have one."""
    from imgcluster.labelfile import read_labels
    from imgcluster.scoring import match

    matched = match((paths, np.zeros(len(paths), dtype=np.int64)), read_labels(labels), root)
    if matched.only_in_assignments:
        missing = matched.only_in_assignments
        raise rd.RunError(
            f"{labels} has no label for {len(missing)} of the {len(paths)} images "
            f"(e.g. {missing[0]}): --labels must cover every image"
        )
    order = {p: i for i, p in enumerate(matched.paths)}
    return np.asarray([str(matched.classes[order[p]]) for p in paths])


def fitted_to_images(cfg: RunConfig, images: np.ndarray) -> RunConfig:
    """The settings chosen from the images, filled in: the augmentation ("auto": greyscale or
    colour views) and the batch size (None: from the number of images). ValueError for an
    unknown augmentation name."""
    views = choose_augmentation(cfg.data.augment, images)
    batch = cfg.optim.batch_size or auto_batch_size(len(images))
    return cfg.replace(data={"augment": views}, optim={"batch_size": batch})


def start_labels(features: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """k-means (faiss, 5 restarts, the lowest inertia kept) on the warmed-up features → N ids."""
    labels, _ = kmeans(features, num_clusters, seed=seed, nredo=5)
    return labels


def check_enough_images(n: int, k: int, root: Path) -> None:
    if n < 2 * k:
        raise rd.RunError(
            f"only {n} usable image(s) in {root}: clustering into k={k} needs at least {2 * k}"
        )


def load_benchmark(cfg: RunConfig, out: Path, callback: Callback) -> Loaded:
    """The benchmark's images into the cache and its labels into ``out``/labels.csv; the
    config's source becomes the folder they were read from."""
    from imgcluster import datasets

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_dir_default()
    bench = datasets.load(
        cfg.data.benchmark or "",
        Path(cfg.data.data_root or datasets.DEFAULT_ROOT),
        cfg.data.image_size,
        cache_dir,
        workers=cfg.data.workers,
        download=cfg.data.download,
        exclude=(out,),
        progress=lambda done, total: callback(Progress("decode", done, total)),
    )
    cache = bench.cache
    check_enough_images(len(cache.paths), cfg.scl.k, bench.root)
    if current_world().is_main:  # under torchrun only rank 0 writes the run directory
        rd.write_labels(out / rd.LABELS, cache.paths, bench.labels)
    size = int(cache.images.shape[-1])
    data = {"image_size": size, "source": str(bench.root), "data_root": str(bench.data_root)}
    return cfg.replace(data=data), cache, np.asarray(bench.labels)


def prepare_out_dir(cfg: RunConfig, out: Path | None, resume: bool) -> Path:
    """The run directory: refuse to overwrite a previous run unless resuming it.

    A folder whose run never saved a checkpoint (killed or failed early) holds nothing to lose:
    it is started over.
    """
    if out is None:
        if resume:
            raise rd.RunError("--resume needs --out: the run directory to continue")
        name = cfg.data.benchmark or Path(cfg.data.source).resolve().name or "run"
        out = rd.numbered_run_dir(Path("runs"), name)
    elif (out / rd.CHECKPOINT).exists() and not resume:
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
    """The run's mutable state (model, optimiser, generators, epoch counters) and its epochs.

    Under DDP (``world``) every rank holds one, identical but for its augmentation generator.
    ``truth``: the classes of the images, when known (a benchmark set): every epoch's clusters
    are then scored against them (ACC, NMI, ARI in the history record).
    """

    def __init__(
        self,
        cfg: RunConfig,
        cache: ImageCache,
        device: torch.device,
        world: World = World(),
        truth: np.ndarray | None = None,
    ) -> None:
        cfg = fitted_to_images(cfg, cache.images)  # fit has done it; a library caller may not
        self.cfg, self.device, self.world, self.truth = cfg, device, world, truth
        use_fast_kernels(device)
        retain_freed_memory()  # each step's tensors reuse the last step's pages
        torch.manual_seed(cfg.optim.seed)
        n = len(cache.paths)
        self.model = SCL(
            cfg.model.backbone,
            n,
            cfg.scl,
            cfg.model.feature_dim,
            cfg.optim.seed,
            projector_bn=cfg.model.projector_bn,
        )
        self.model.to(device, memory_format=MEMORY_FORMAT)
        self.optimizer = make_optimizer(self.model, cfg)
        compiled = cfg.optim.compile if cfg.optim.compile is not None else compile_pays(device)
        views = AUGMENTATIONS[cfg.data.augment]
        self.kernels = (StepKernels.compiled if compiled else StepKernels.eager)(self.model, views)
        self.replica = Replica.wrap(self.model, world, device) if world.distributed else None
        self.order_gen = torch.Generator().manual_seed(cfg.optim.seed + 1)  # same on every rank
        # Each rank augments with its own stream; rank 0's is the single-process one.
        aug_seed = cfg.optim.seed + 2 + 1000 * world.rank
        self.aug_gen = torch.Generator(device=device).manual_seed(aug_seed)
        self.images = DeviceImages(cache.images, device)
        self.batch = global_batch_size(cfg.optim.batch_size, n, world.world_size)
        # On a CPU the label update reuses the memory that a training step frees: in batches
        # of the step's size its tensors fit the freed blocks, where 512s would add ~170 MB of
        # their own to the peak (docs/benchmarks.md). A GPU's caching allocator needs no help.
        cpu = device.type == "cpu"
        self.predict_batch = self.batch // world.world_size if cpu else PREDICT_BATCH
        self.digest = paths_digest(cache.paths)
        self.epoch, self.epochs_total = 0, cfg.optim.epochs
        self.clusters_started = cfg.scl.warmup == 0  # no warm-up: SCL from the first epoch
        self.last_predictions: Predictions | None = None

    def state(self) -> dict[str, Any]:
        """The checkpoint; under DDP every rank must call it (it gathers each rank's generator)."""
        state = {
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
            "world_size": self.world.world_size,
            "clusters_started": self.clusters_started,
        }
        if self.world.distributed:
            state["aug_gen_ranks"] = gather_objects(self.aug_gen.get_state())
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("paths_digest") != self.digest:
            raise rd.RunError(
                "cannot resume: the images in the source folder changed since the checkpoint"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.order_gen.set_state(state["order_gen"])
        ranks = state.get("aug_gen_ranks") or [state["aug_gen"]]
        if self.world.rank < len(ranks):  # a rank the checkpoint lacks keeps its fresh stream
            self.aug_gen.set_state(ranks[self.world.rank].to(self.aug_gen.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.epochs_total = int(state["epoch"]), int(state["epochs_total"])
        self.clusters_started = bool(state.get("clusters_started", True))

    def epoch_once(self, callback: Callback) -> dict[str, Any]:
        """Train one epoch, then update the labels; return the history record."""
        cfg, n = self.cfg, len(self.images)
        total = total_steps_for(self.epochs_total, n, self.batch)
        step0 = self.epoch * steps_per_epoch(n, self.batch)
        gens = (self.order_gen, self.aug_gen)
        stats = run_epoch(
            self.model,
            self.optimizer,
            self.images,
            cfg,
            gens,
            step0,
            total,
            callback,
            self.replica,
            self.kernels,
        )
        if self.world.distributed:
            sync_buffers(self.model)
        started = time.perf_counter()
        last = self.epoch + 1 == self.epochs_total
        task_stats: dict[str, Any] = {}
        diagnosed: dict[str, Any] = {}
        warming = bool(self.model.tasks) and not self.clusters_started
        start_now = warming and self.epoch + 1 >= self.warmup_epochs()
        if (self.model.tasks and not warming) or start_now or last or self.truth is not None:
            callback(Progress("labels", 0, 1))
            self.last_predictions = self.predict(memory=self.truth is not None)
            seed = cfg.optim.seed + self.epoch
            if start_now:
                task_stats = self.start_clusters(seed)
            elif not warming:
                task_stats = self.update_labels(seed)
            if self.world.is_main:
                diagnosed = self.diagnose(self.last_predictions)
        self.epoch += 1
        record = history_record(self.epoch, stats, task_stats, time.perf_counter() - started)
        return {**record, **diagnosed}

    def diagnose(self, preds: Predictions) -> dict[str, Any]:
        """The epoch's diagnostics (imgcluster.diagnostics): label-free ones always, scores of
        each output against the classes when they are known, and of the updated pseudo labels."""
        pseudo = None
        if self.truth is not None and CLUSTERING in self.model.tasks:
            labels = self.model.task(CLUSTERING).labels.cpu().numpy()  # on the device
            pseudo = cluster_accuracy(labels, self.truth)
        record = epoch_diagnostics(
            preds.features,
            preds.probs.get(CLUSTERING),
            preds.memory_probs.get(CLUSTERING),
            self.truth,
            self.cfg.scl.k,
            self.cfg.optim.seed,
        )
        return record if pseudo is None else {**record, "pseudo_label_acc": pseudo}

    def predict(self, memory: bool = False) -> Predictions:
        """All N images through the final model; under DDP each rank predicts a share.
        ``memory``: also the memory's p̃ (Eq. 3), for the diagnostics."""
        temperature = self.cfg.scl.temperature
        return predict_all(
            self.model, self.images, temperature, self.world, self.predict_batch, memory
        )

    def warmup_epochs(self) -> int:
        """Epochs before the clusters start from k-means (``SCLConfig.warmup`` of the run; the
        last epoch is never one of them). Until then the pseudo labels stay as drawn."""
        return min(round(self.cfg.scl.warmup * self.epochs_total), self.epochs_total - 1)

    def start_clusters(self, seed: int) -> dict[str, Any]:
        """End of the warm-up: every task's labels from k-means on the features (rank 0's,
        broadcast), its banks and head started from them (:meth:`ClusteringTask.start_from`)."""
        preds = self.last_predictions
        assert preds is not None
        features = torch.from_numpy(preds.features).to(self.device)
        stats: dict[str, Any] = {}
        for name, task in self.model.tasks.items():
            old = task.labels.cpu().numpy().copy()
            new = torch.from_numpy(start_labels(preds.features, task.num_clusters, seed))
            new = new.to(task.labels.device)
            if self.world.distributed:
                broadcast_(new)
            task.start_from(new, features, self.cfg.scl.temperature)
            for param in task.head.parameters():  # its SGD momentum led to the old head
                self.optimizer.state.pop(param, None)
            sizes = torch.bincount(new.cpu(), minlength=task.num_clusters)
            flips = int((torch.from_numpy(old) != new.cpu()).sum())
            stats[name] = {"cluster_sizes": sizes.tolist(), "label_flips": flips}
        self.clusters_started = True
        return stats

    def update_labels(self, seed: int) -> dict[str, Any]:
        """Eq. 5 with merge-and-split on the gathered predictions: on rank 0 only, its labels and
        flip counts then broadcast, so every rank holds the same ones."""
        stats: dict[str, Any] = {}
        if self.world.is_main:
            assert self.last_predictions is not None
            min_size = self.cfg.scl.min_cluster_size
            stats = update_task_labels(self.model, self.last_predictions, min_size, seed)
        if self.world.distributed:
            for task in self.model.tasks.values():
                broadcast_(task.labels)
                broadcast_(task.flips)
            stats = broadcast_object(stats)
        return stats


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
    report: bool = True,
) -> FitResult:
    """Train SCL on ``config.data.source`` and write the run directory ``out``.

    At the end the model is exported to ``model.onnx`` (checked against torch) and, unless
    ``report`` is False, the HTML report is written to ``report/``. Raises
    :class:`imgcluster.rundir.RunError` (one-line message) for anything the user can fix.

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls ``fit``: it joins the process group,
    trains its share of each global batch, and only rank 0 writes the run directory and calls
    ``callback`` (the others get a silent one); the other ranks' results have no clusters.
    """
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            config.validate()
            device = resolve_device(config.optim.device)
            world, device = stack.enter_context(process_group(device))
        except ValueError as e:
            raise rd.RunError(str(e)) from e
        callback = callback if callback is not None and world.is_main else _noop
        return _fit_rank(config, out, resume, report, callback, world, device, start)


def _fit_rank(
    config: RunConfig,
    out: Path | None,
    resume: bool,
    report: bool,
    callback: Callback,
    world: World,
    device: torch.device,
    start: float,
) -> FitResult:
    """:func:`fit` on one rank (the only one without torchrun)."""
    # A benchmark's folder is found (and recorded as the source) by load_images.
    if config.data.source and not config.data.benchmark:
        source = Path(config.data.source).resolve()
        if not source.is_dir():
            raise rd.RunError(f"source folder not found: {config.data.source}")
        config = config.replace(data={"source": str(source)})
    elif not (resume or config.data.source or config.data.benchmark):
        raise rd.RunError("no source folder given")
    requested = Path(out) if out is not None else None
    out = main_decides(lambda: prepare_out_dir(config, requested, resume))  # rank 0 numbers it
    callback(Progress("run_dir", 0, 0, {"path": str(out)}))
    if world.is_main and not resume:  # at once: a run killed while decoding can be resumed
        rd.write_json(out / rd.CONFIG, {**config.to_dict(), "version": __version__})
    state = _load_resume_state(out, config, callback) if resume else None
    if state is not None:
        config = _resumed_config(config, state)
    config = config.replace(model={"backbone": resolve_backbone(config.model.backbone, device)})
    loaded = config
    config, cache, truth = main_first(lambda: load_images(loaded, out, callback))  # one decode
    try:
        config = fitted_to_images(config, cache.images)
    except ValueError as e:
        raise rd.RunError(str(e)) from e
    if len(cache.paths) < 2 * world.world_size:  # a batch of at least 2 on every rank
        raise rd.RunError(f"{len(cache.paths)} images cannot feed {world.world_size} processes")
    if world.is_main:
        meta = {"version": __version__, "world_size": world.world_size}
        rd.write_json(out / rd.CONFIG, {**config.to_dict(), **meta})
        rd.write_skipped(out / rd.SKIPPED, cache.skipped)
    trainer = Trainer(config, cache, device, world, truth)
    history = _start_history(trainer, out, state)
    finish = EXPORT_SECONDS + (REPORT_SECONDS if report else 0.0)
    _train(trainer, out, history, start, callback, budgeted=state is None, finish_s=finish)
    release_free_memory()  # the pages kept for the steps: not needed by the export
    clusters, confidence = np.zeros(0, dtype=np.int64), np.zeros(0)  # other ranks: no result
    if world.is_main:
        clusters, confidence = final_assignments(trainer)
        rd.write_assignments(out / rd.ASSIGNMENTS, cache.paths, clusters, confidence)
        _export_and_report(out, cache.images, report, callback)
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


def _export_and_report(out: Path, images: np.ndarray, report: bool, callback: Callback) -> None:
    """model.onnx for ``assign`` (and the report); then the report unless ``report`` is False."""
    from imgcluster.export import export_onnx

    exported = export_onnx(out, images=images)
    text = (f"model.onnx: onnxruntime agrees with torch (max abs diff "
            f"{exported.max_abs_diff:.1e}, argmax {exported.argmax_agreement:.0%} of "
            f"{exported.checked_images} images)")  # fmt: skip
    callback(Progress("message", 0, 0, {"text": text}))
    if report:
        from imgcluster.reporting import report as write_report

        page = write_report(out, images=images)
        callback(Progress("message", 0, 0, {"text": f"report: {page.path}"}))


def _load_resume_state(out: Path, config: RunConfig, callback: Callback) -> dict | None:
    """The checkpoint to resume from, or None (with a message) when the run never saved one."""
    if not broadcast_object((out / rd.CHECKPOINT).exists()):  # rank 0's view decides
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
    data_root = requested.data.data_root or saved.data.data_root
    return requested.replace(
        data={
            "source": saved.data.source,
            "image_size": saved.data.image_size,
            "benchmark": saved.data.benchmark,
            "data_root": data_root,
        },
        model={"backbone": saved.model.backbone},
        optim={"epochs": int(state["epochs_total"])},
    )


def _start_history(trainer: Trainer, out: Path, state: dict | None) -> list[dict[str, Any]]:
    """Fresh history, or the checkpoint's epochs of the old one (later lines are dropped)."""
    if state is None:
        if trainer.world.is_main:
            rd.write_history(out / rd.HISTORY, [])
        return []
    trainer.load_state(state)
    history = [r for r in rd.read_history(out / rd.HISTORY) if r["epoch"] <= trainer.epoch]
    if trainer.world.is_main:
        rd.write_history(out / rd.HISTORY, history)
    return history


def _train(
    trainer: Trainer,
    out: Path,
    history: list[dict[str, Any]],
    start: float,
    callback: Callback,
    budgeted: bool,
    finish_s: float = 0.0,
) -> None:
    """The epoch loop: epoch → history line → checkpoint.

    With a time budget the epoch count is set after the first epoch and re-planned after each
    later one from the median epoch time so far, so that one slow epoch (a cold start, a busy
    machine) neither cuts the run short nor lets it overrun. ``finish_s`` of the budget is kept
    for the work after the last epoch (export, report).
    """
    budget = trainer.cfg.optim.time_budget_minutes if budgeted else None
    seconds: list[float] = []
    while trainer.epoch < trainer.epochs_total:
        record = trainer.epoch_once(callback)
        seconds.append(record["seconds"])
        if budget is not None:
            epochs_total = epochs_for_budget(
                budget * 60.0 - finish_s,
                time.perf_counter() - start,
                float(np.median(seconds)),
                trainer.epoch,
                trainer.cfg.optim.epochs,
            )
            trainer.epochs_total = broadcast_object(epochs_total)  # rank 0's clock decides
        world_size = trainer.world.world_size
        record.update(
            epochs_total=trainer.epochs_total,
            device=str(trainer.device),
            world_size=world_size,
            elapsed_seconds=time.perf_counter() - start,  # since fit began, decoding included
        )
        history.append(record)
        state = trainer.state()  # every rank: under DDP it gathers the ranks' generators
        if trainer.world.is_main:
            rd.write_history(out / rd.HISTORY, history)
            rd.save_checkpoint(out / rd.CHECKPOINT, state)
        callback(Progress("epoch", trainer.epoch, trainer.epochs_total, record))
    if trainer.last_predictions is None:  # a resumed finished run, or the baseline's budget cut
        trainer.last_predictions = trainer.predict()
