"""The trainer: one run's training state, its epochs, its checkpoints and its time budget.

:class:`Trainer` holds the model, the optimiser, the generators and the epoch counters;
:meth:`Trainer.epoch_once` trains one epoch (:func:`imgcluster.train.step.run_epoch`) and
updates the pseudo labels (Eq. 5, merge-and-split); :func:`train_epochs` is the loop that writes
a history line and an atomic checkpoint after every epoch and, with a time budget, re-plans the
epoch count from the epoch times so far (:func:`imgcluster.train.schedule.epochs_for_budget`).

Under torchrun every rank holds a Trainer (docs/distributed.md): rank 0 writes every file;
the label update runs on rank 0 and is broadcast.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcluster import __version__
from imgcluster import rundir as rd
from imgcluster.config import RunConfig, auto_batch_size, pretrained_warmup_epochs, resolve_start
from imgcluster.data.cache import ImageCache
from imgcluster.errors import RunError
from imgcluster.events import Callback, Progress, message
from imgcluster.method.augment import AUGMENTATIONS, choose_augmentation
from imgcluster.method.kmeans import centroid_probabilities, kmeans
from imgcluster.method.scl import CLUSTERING, SCL
from imgcluster.method.start_partition import start_labels, start_space
from imgcluster.scoring.diagnostics import epoch_diagnostics
from imgcluster.scoring.metrics import cluster_accuracy
from imgcluster.train.allocator import retain_freed_memory
from imgcluster.train.checkpoint import save_checkpoint
from imgcluster.train.device import DeviceImages, compile_pays, use_fast_kernels
from imgcluster.train.distributed import (
    World,
    broadcast_,
    broadcast_object,
    gather_objects,
)
from imgcluster.train.feature_views import (
    DEFAULT_VIEWS,
    FeatureViews,
    cached_views,
    time_one_view,
    views_per_image,
)
from imgcluster.train.schedule import epochs_for_budget, steps_per_epoch, total_steps_for
from imgcluster.train.step import (
    MEMORY_FORMAT,
    PREDICT_BATCH,
    Predictions,
    Replica,
    StepKernels,
    global_batch_size,
    make_optimizer,
    predict_all,
    run_epoch,
    sync_buffers,
    update_task_labels,
)


def paths_digest(paths: list[str]) -> str:
    """Fingerprint of the image list: a resumed run must see the same images in the same order."""
    return hashlib.sha256("\0".join(paths).encode("utf-8")).hexdigest()[:16]


def fitted_to_images(cfg: RunConfig, images: np.ndarray) -> RunConfig:
    """The settings chosen from the images, filled in: the augmentation ("auto": greyscale or
    colour views) and the batch size (None: from the number of images). ValueError for an
    unknown augmentation name."""
    views = choose_augmentation(cfg.data.augment, images)
    batch = cfg.optim.batch_size or auto_batch_size(len(images))
    return cfg.replace(data={"augment": views}, optim={"batch_size": batch})


def load_encoder_start(encoder: torch.nn.Module, start: dict[str, torch.Tensor]) -> None:
    """Load ``start`` into ``encoder``, refusing what a non-strict load would pass over.

    A start is the backbone alone (``backbone.*``: a pretrained start, whose projector trains
    from scratch; backbone tensors its file lacks are named when it is read,
    :mod:`imgcluster.method.pretrained`) or the whole encoder (the features ``--k auto``
    trained). Every tensor it holds must be one of the encoder's, and a whole encoder must hold
    every one: RunError naming the first few otherwise.
    """
    loaded = encoder.load_state_dict(start, strict=False)
    whole = any(not name.startswith("backbone.") for name in start)
    missing = loaded.missing_keys if whole else []
    for names, what in (
        (loaded.unexpected_keys, "holds tensors the encoder lacks"),
        (missing, "lacks tensors of the encoder"),
    ):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise RunError(f"the encoder's start {what}: {shown}")


class Trainer:
    """The run's mutable state (model, optimiser, generators, epoch counters) and its epochs.

    Under DDP (``world``) every rank holds one, identical but for its augmentation generator.
    ``truth``: the classes of the images, when known (a benchmark set): every epoch's clusters
    are then scored against them (ACC, NMI, ARI in the history record). ``start``: encoder
    weights to begin from (some or all of its state dict: a pretrained backbone, or the
    features trained to choose k).
    """

    def __init__(
        self,
        cfg: RunConfig,
        cache: ImageCache,
        device: torch.device,
        world: World = World(),
        truth: np.ndarray | None = None,
        start: dict[str, torch.Tensor] | None = None,
    ) -> None:
        cfg = resolve_start(cfg, device.type)  # idempotent; ValueError for an undecided start
        if cfg.scl.k is None:
            raise ValueError("Trainer needs a resolved config (imgcluster.config.resolve)")
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
            stem=cfg.model.stem,
            frozen=cfg.model.freeze_encoder,
        )
        if start is not None:  # trained weights to begin from; θ̃ starts as their copy
            load_encoder_start(self.model.encoder, start)
            self.model.momentum_encoder.load_state_dict(self.model.encoder.state_dict())
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
        self.cache_file = cache.file
        # A frozen backbone's views, computed once (prepare_views); the epochs then read them.
        self.views: FeatureViews | None = None
        self.views_record: dict[str, Any] = {}  # how long they took: the next history line
        self.batch = global_batch_size(cfg.optim.batch_size, n, world.world_size)
        # On a CPU the label update reuses the memory that a training step frees: in batches
        # of the step's size its tensors fit the freed blocks, where 512s would add ~170 MB of
        # their own to the peak (docs/benchmarks.md). A GPU's caching allocator needs no help.
        cpu = device.type == "cpu"
        self.predict_batch = self.batch // world.world_size if cpu else PREDICT_BATCH
        self.digest = paths_digest(cache.paths)
        self.epoch, self.epochs_total = 0, cfg.optim.epochs
        self.clusters_started = cfg.scl.warmup == 0  # no warm-up: SCL from the first epoch
        self.restarted = False  # the clusters' second start (restart_epoch) is done
        self.last_predictions: Predictions | None = None

    def prepare_views(self, callback: Callback, budget_s: float | None = None) -> None:
        """With a frozen backbone: its views (:mod:`imgcluster.train.feature_views`),
        computed once or read back, before the first epoch. ``data.views`` None is chosen
        here (:func:`views_per_image`: ``budget_s``, the seconds left, bounds it) and kept in
        ``self.cfg``. Without a frozen backbone, nothing."""
        if not self.cfg.model.freeze_encoder or self.views is not None:
            return
        backbone = self.model.encoder.backbone
        views = self.cfg.data.views
        if views is None:
            seconds = time_one_view(backbone, self.images, self.predict_batch)
            views = views_per_image(seconds, len(self.images), budget_s, DEFAULT_VIEWS)
            self.cfg = self.cfg.replace(data={"views": views})
        params = AUGMENTATIONS[self.cfg.data.augment]
        began = time.perf_counter()
        seed, batch = self.cfg.optim.seed, self.predict_batch
        self.views = cached_views(backbone, self.images, self.cache_file, views, params, seed,
                                  batch, callback, self.world)  # fmt: skip
        self.kernels = StepKernels(FeatureViews.draw, self.kernels.loss_terms)
        seconds = time.perf_counter() - began
        per_s = len(self.images) * (views + 1) / max(seconds, 1e-9)
        self.views_record = {"views": views, "views_seconds": seconds, "views_per_s": per_s}

    @property
    def source(self) -> DeviceImages | FeatureViews:
        """What the epochs and the predictions read: the cached views, else the images."""
        return self.views if self.views is not None else self.images

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
            "restarted": self.restarted,
        }
        if self.world.distributed:
            state["aug_gen_ranks"] = gather_objects(self.aug_gen.get_state())
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("paths_digest") != self.digest:
            raise RunError(
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
        self.restarted = bool(state.get("restarted", True))  # older checkpoints: never again

    def epoch_once(self, callback: Callback) -> dict[str, Any]:
        """Train one epoch, then update the labels; return the history record.

        The epoch's diagnostics follow, timed apart (``diagnostic_seconds``): the record's
        ``seconds`` are the work the same run without labels does, which is what a time budget
        plans with (:func:`train_epochs`), so scoring never changes the epochs a run trains.
        """
        cfg, n = self.cfg, len(self.images)
        self.prepare_views(callback)  # a library caller may not have
        total = total_steps_for(self.epochs_total, n, self.batch)
        step0 = self.epoch * steps_per_epoch(n, self.batch)
        gens = (self.order_gen, self.aug_gen)
        stats = run_epoch(
            self.model,
            self.optimizer,
            self.source,
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
        predicted, task_stats = self.label_stage(callback)
        label_seconds = time.perf_counter() - started
        started = time.perf_counter()
        diagnosed: dict[str, Any] = {}
        if predicted or self.truth is not None:
            # An epoch that needs no prediction is predicted for its scores alone (every rank
            # takes part under DDP); that prediction is not the run's.
            preds = self.last_predictions if predicted else self.predict(backbone=True)
            if self.world.is_main:
                assert preds is not None
                diagnosed = self.diagnose(preds)
        diagnostic_seconds = time.perf_counter() - started
        self.epoch += 1
        record = history_record(self.epoch, stats, task_stats, label_seconds)
        record = {**record, **diagnosed, "diagnostic_seconds": diagnostic_seconds}
        record, self.views_record = {**record, **self.views_record}, {}
        return record

    def label_stage(self, callback: Callback) -> tuple[bool, dict[str, Any]]:
        """The end of an epoch's training: predict all N and update the labels (Eq. 5), start the
        clusters at the end of the warm-up (and again at :meth:`restart_epoch`), or nothing
        while warming up. Returns whether it predicted (:attr:`last_predictions`) and the
        per-task label statistics."""
        warming = bool(self.model.tasks) and not self.clusters_started
        start_now = warming and self.epoch + 1 >= self.warmup_epochs()
        restart = self.restart_epoch()
        if self.model.tasks and not warming and not self.restarted and restart is not None:
            # >=: under a time budget the planned end, and with it this epoch, moves
            start_now = self.restarted = self.epoch + 1 >= restart
        last = self.epoch + 1 == self.epochs_total
        if not ((self.model.tasks and not warming) or start_now or last):
            return False, {}
        callback(Progress("labels", 0, 1))
        # Without clustering tasks (the baseline, --k auto's first phase) only the last epoch
        # predicts, and k is chosen on the backbone's features. A labelled run keeps them for its
        # diagnostics too: a copy of what the forward pass computes anyway.
        pooled = start_now or self.truth is not None or not self.model.tasks
        self.last_predictions = self.predict(backbone=pooled)
        seed = self.cfg.optim.seed + self.epoch
        if start_now:
            return True, self.start_clusters(seed)
        return True, ({} if warming else self.update_labels(seed))

    def diagnose(self, preds: Predictions) -> dict[str, Any]:
        """The epoch's diagnostics (imgcluster.scoring.diagnostics): label-free ones always,
        scores of each output against the classes when they are known (the memory's p̃, Eq. 3,
        computed here from the features), and of the updated pseudo labels."""
        pseudo, memory = None, None
        if self.truth is not None and CLUSTERING in self.model.tasks:
            labels = self.model.task(CLUSTERING).labels.cpu().numpy()  # on the device
            pseudo = cluster_accuracy(labels, self.truth)
            memory = preds.memory_probs.get(CLUSTERING)
            if memory is None:
                memory = self.memory_probs(preds.features)
        record = epoch_diagnostics(
            preds.features,
            preds.probs.get(CLUSTERING),
            memory,
            self.truth,
            self.cfg.scl.k,
            self.cfg.optim.seed,
            preds.backbone,
            self.device,
        )
        return record if pseudo is None else {**record, "pseudo_label_acc": pseudo}

    @torch.no_grad()
    def memory_probs(self, features: np.ndarray) -> np.ndarray:
        """Eq. 3's p̃ of the 'clustering' task for all N images from their features (N×d, the
        q of :meth:`predict`) → N×k: the same values :func:`predict` gives with ``memory``."""
        task, batch = self.model.task(CLUSTERING), self.predict_batch
        parts = []
        for begin in range(0, len(features), batch):
            q = torch.from_numpy(features[begin : begin + batch]).to(self.device)
            idx = torch.arange(begin, begin + len(q), device=self.device)
            parts.append(task.soft_assignment(q, idx, self.cfg.scl.temperature).cpu())
        return torch.cat(parts).numpy()

    def predict(self, memory: bool = False, backbone: bool = False) -> Predictions:
        """All N images through the final model; under DDP each rank predicts a share.
        ``memory``: also every task's memory p̃ (Eq. 3; the diagnostics compute theirs apart,
        :meth:`memory_probs`); ``backbone``: also the pooled backbone features."""
        temperature = self.cfg.scl.temperature
        return predict_all(
            self.model, self.source, temperature, self.world, self.predict_batch, memory, backbone
        )

    def warmup_epochs(self) -> int:
        """Epochs before the clusters start from k-means (``SCLConfig.warmup`` of the run's
        epochs; None, a frozen pretrained backbone's: :func:`pretrained_warmup_epochs`; the last
        epoch is never one of them). Until then the pseudo labels stay as drawn."""
        share = self.cfg.scl.warmup
        if share is None:
            wanted = pretrained_warmup_epochs(len(self.images), self.epochs_total)
        else:
            wanted = round(share * self.epochs_total)
        return min(wanted, self.epochs_total - 1)

    def restart_epoch(self) -> int | None:
        """The epoch after which the clusters start again (``scl.restart``), the same way as at
        the warm-up's end, from the features trained since: half-way from the warm-up's end to
        the run's planned end (:attr:`epochs_total`, which a time budget re-plans); None when
        off, or when no SCL epoch would follow. SCL goes on improving the features while the
        head keeps near where it started: on CIFAR-10 (frozen, 128 px) k-means on q reached
        0.63 ACC and the head stayed at 0.55, 0.64 after the restart; from scratch on the
        digits (3 seeds) it ended at 0.72-0.92, with the restart at 0.89-0.93
        (docs/benchmarks.md)."""
        if not self.cfg.scl.restart:
            return None
        first = self.warmup_epochs()
        second = first + (self.epochs_total - first) // 2
        return second if first < second < self.epochs_total else None

    def start_clusters(self, seed: int) -> dict[str, Any]:
        """End of the warm-up: every task's labels from k-means on a UMAP of the warmed-up
        features (:func:`imgcluster.method.start_partition.start_labels`; rank 0's, broadcast):
        a frozen backbone's trained embeddings q, else the backbone's pooled features (instance
        discrimination alone spreads the projected embeddings evenly, the backbone's features
        keep the groups); its banks and head started from them and the embeddings
        (:meth:`ClusteringTask.start_from`)."""
        preds = self.last_predictions
        assert preds is not None
        features = torch.from_numpy(preds.features).to(self.device)
        # A frozen backbone's features are where the start already was: its trained
        # embeddings are (docs/benchmarks.md, "Pretrained start").
        pooled = preds.features if self.cfg.model.freeze_encoder else preds.backbone
        pooled = preds.features if pooled is None else pooled
        # UMAP and k-means on rank 0 only; the other ranks take its labels
        space = start_space(pooled, seed) if self.world.is_main else None
        stats: dict[str, Any] = {}
        for name, task in self.model.tasks.items():
            old = task.labels.cpu().numpy().copy()
            if space is None:
                new = torch.zeros_like(task.labels)
            else:
                new = torch.from_numpy(start_labels(space, task.num_clusters, seed))
                new = new.to(task.labels.device, task.labels.dtype)
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


def final_probabilities(trainer: Trainer) -> tuple[np.ndarray, np.ndarray | None]:
    """N×k cluster probabilities of every image from the final model, and the centroids that
    gave them (None for SCL).

    SCL: the 'clustering' head's softmax (Eq. 4's p). The MoCo + k-means baseline: k-means
    (faiss) on the features, then the classifier :func:`centroid_probabilities` makes of its
    clusters; ``export`` puts the same centroids into model.onnx.
    """
    preds = trainer.last_predictions
    assert preds is not None
    cfg = trainer.cfg
    if CLUSTERING in preds.probs:
        return preds.probs[CLUSTERING], None
    labels, _ = kmeans(preds.features, cfg.scl.k, seed=cfg.optim.seed, nredo=3)
    return centroid_probabilities(preds.features, labels, cfg.scl.k, cfg.scl.temperature)


def start_history(trainer: Trainer, out: Path, state: dict | None) -> list[dict[str, Any]]:
    """Fresh history, or (resuming from ``state``) the checkpoint's epochs of the old one:
    later lines, written after the checkpoint, are dropped."""
    if state is None:
        if trainer.world.is_main:
            rd.write_history(out / rd.HISTORY, [])
        return []
    trainer.load_state(state)
    history = [r for r in rd.read_history(out / rd.HISTORY) if r["epoch"] <= trainer.epoch]
    if trainer.world.is_main:
        rd.write_history(out / rd.HISTORY, history)
    return history


def train_epochs(
    trainer: Trainer,
    out: Path,
    history: list[dict[str, Any]],
    callback: Callback,
    budget_s: float | None = None,
    start: float | None = None,
    save: bool = True,
) -> None:
    """The epoch loop: epoch → history line → checkpoint, until the planned epoch count.

    ``budget_s``: seconds this command may train for, counted from ``start`` (a
    ``time.perf_counter()`` value; default now), decoding included when the caller started the
    clock before it. The epoch count is then set after the first epoch and re-planned after each
    later one from the median epoch time so far, so that one slow epoch (a cold start, a busy
    machine) neither cuts the run short nor lets it overrun; a resumed run's budget is that of
    the resuming command. ``save`` False: no history file and no checkpoint (the preliminary
    phase of ``fit --k auto``).
    """
    start = time.perf_counter() if start is None else start
    seconds: list[float] = []
    scoring = 0.0  # seconds of the diagnostics so far
    while trainer.epoch < trainer.epochs_total:
        record = trainer.epoch_once(callback)
        seconds.append(record["seconds"])
        scoring += record["diagnostic_seconds"]
        if budget_s is not None:
            # The diagnostics are left out of both times the planner reads, the epoch's and the
            # time spent: a run scored against labels then plans the epochs the same run plans
            # without them (scoring must not change training), and ends later by its scoring's
            # time, which history.jsonl records. Counted in the time spent instead, they would
            # still take epochs from a labelled run, more the larger the set (kNN is O(N²)).
            epochs_total = epochs_for_budget(
                budget_s,
                time.perf_counter() - start - scoring,
                float(np.median(seconds)),
                trainer.epoch,
                trainer.cfg.optim.epochs,
            )
            trainer.epochs_total = broadcast_object(epochs_total)  # rank 0's clock decides
        record.update(
            epochs_total=trainer.epochs_total,
            device=str(trainer.device),
            world_size=trainer.world.world_size,
            elapsed_seconds=time.perf_counter() - start,
        )
        history.append(record)
        save_epoch(trainer, out, history, save)
        callback(Progress("epoch", trainer.epoch, trainer.epochs_total, record))
    if trainer.model.tasks and not trainer.clusters_started:
        finish_warmup(trainer, callback)
        save_epoch(trainer, out, history, save)  # export reads the started head from it
    elif trainer.last_predictions is None:  # a resumed finished run, or the baseline's budget cut
        trainer.last_predictions = trainer.predict()


def save_epoch(trainer: Trainer, out: Path, history: list[dict[str, Any]], save: bool) -> None:
    """history.jsonl and the checkpoint, atomically, on rank 0; ``save`` False: nothing."""
    state = trainer.state() if save else {}  # every rank: DDP gathers the generators
    if trainer.world.is_main and save:
        rd.write_history(out / rd.HISTORY, history)
        save_checkpoint(out / rd.CHECKPOINT, state)


def finish_warmup(trainer: Trainer, callback: Callback) -> None:
    """A budget that ended the run inside its warm-up (the re-planned epochs fell below the
    warm-up's): the clusters start now, from k-means on the warmed-up features, as they would
    have at the warm-up's end, so the output is their nearest-mean head
    (:meth:`ClusteringTask.start_from`) rather than a head that never trained; a resume then
    continues as SCL."""
    message(callback, f"the time budget ended the run inside its warm-up ({trainer.epoch} "
            "epochs): the clusters are k-means on the warmed-up features, not SCL's")  # fmt: skip
    trainer.last_predictions = trainer.predict(backbone=True)
    trainer.start_clusters(trainer.cfg.optim.seed + trainer.epoch)
    trainer.last_predictions = trainer.predict()
