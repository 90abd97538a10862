"""The SCL training step and epoch, the per-epoch prediction and label update.

One step (docs/method.md, "One step, in order"): two augmented views → q from the encoder, k
from the momentum encoder → losses of every task (Eq. 1-4, 6, 7) → SGD step → enqueue k into the
memories → momentum update. State changes are named calls in :func:`train_step`, never hidden in
forward. Once per epoch the whole set is predicted on a non-augmented view and the pseudo labels
are updated (Eq. 5, merge-and-split); :mod:`imgcluster.train.trainer` then writes history and
checkpoint. The library stays silent: progress goes to a callback.

Under torchrun (docs/distributed.md) each rank runs :func:`train_step` on its share of the global
batch with a :class:`Shard`: the encoder and heads are wrapped in DistributedDataParallel
(gradients averaged), the momentum encoder's keys use MoCo's shuffle-BN, and the keys of the whole
global batch are gathered before they enter the memories, so every rank's memories stay equal to
those of one process trained with the global batch. :func:`predict_all` predicts each rank's share
and gathers all N predictions.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from imgcluster.config import RunConfig
from imgcluster.events import Callback, Progress
from imgcluster.method.augment import AugmentParams, augment, compiled_augment, preprocess
from imgcluster.method.model import momentum_update
from imgcluster.method.pseudo_labels import (
    align_ids,
    min_cluster_size,
    update_flip_counts,
    update_labels,
)
from imgcluster.method.scl import SCL, LossTerms
from imgcluster.train.device import DeviceImages, autocast
from imgcluster.train.distributed import KeyShuffle, World, all_gather_rows, average_
from imgcluster.train.feature_views import FeatureViews
from imgcluster.train.schedule import cosine_lr

# Every backbone runs faster in channels_last, on a 2-core CPU (small net: training +40 %,
# inference +55 %; ResNet-18 +14 %) as on GPUs with tensor cores.
MEMORY_FORMAT = torch.channels_last
# The label update's batch on a GPU, where larger batches mean fewer launches. On a CPU it
# predicts in training batches, whose memory the steps have just freed (see Trainer).
PREDICT_BATCH = 512


@dataclass(frozen=True)
class StepKernels:
    """The step's two stages made of many small element-wise operations: the augmentation of
    a view and the losses. Eager by default; :meth:`compiled` fuses them with torch.compile,
    which pays on a GPU, where each small operation is a kernel launch (docs/benchmarks.md).
    """

    augment: Callable[[Tensor, torch.Generator], Tensor]
    loss_terms: Callable[..., LossTerms]

    @classmethod
    def eager(cls, model: SCL, params: AugmentParams = AugmentParams()) -> StepKernels:
        return cls(functools.partial(augment, params=params), model.loss_terms)

    @classmethod
    def compiled(cls, model: SCL, params: AugmentParams = AugmentParams()) -> StepKernels:
        """Compiled on first use (tens of seconds); the same results up to float rounding.

        If compiling fails (no C++ compiler for a CPU, a GPU Triton cannot target), torch
        logs a warning and the stage runs eagerly: a run is never stopped by its fast path.
        """
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        return cls(compiled_augment(params), torch.compile(model.loss_terms, dynamic=False))


@dataclass
class Predictions:
    """The whole set through the eval-mode encoder: features and each task's probabilities."""

    features: np.ndarray  # N×d, l2-normalised
    probs: dict[str, np.ndarray]  # task → N×C, the classifier's softmax (Eq. 4's p)
    memory_probs: dict[str, np.ndarray]  # task → N×C, the memory's p̃ (Eq. 3), when asked for
    backbone: np.ndarray | None = None  # N×D pooled backbone features, when asked for


class _Trainable(nn.Module):
    """The encoder and the cluster heads as one module for DDP; its forward is the encoder's.

    The heads are used outside this forward (Eq. 4 on detached q), but DDP's gradient hooks
    sit on every parameter, so their gradients are averaged over the ranks as well.
    """

    def __init__(self, model: SCL) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.heads = nn.ModuleList(task.head for task in model.tasks.values())

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@dataclass
class Replica:
    """This rank's part in data-parallel training: its world and the DDP-wrapped encoder."""

    world: World
    encoder: nn.Module  # DDP(encoder + heads): call it for q so gradients are averaged

    @classmethod
    def wrap(cls, model: SCL, world: World, device: torch.device) -> Replica:
        ids = [device.index] if device.type == "cuda" else None
        return cls(world, DistributedDataParallel(_Trainable(model), device_ids=ids))

    def shard(self, batch: Tensor, images: DeviceImages, gen: torch.Generator) -> Shard:
        """This rank's share of a global batch, its shuffle-BN key images loaded."""
        shuffle = KeyShuffle.plan(batch, self.world, gen)
        return Shard(self.encoder, shuffle, images.batch(shuffle.key_ids))


@dataclass
class Shard:
    """One rank's share of one global batch (see :class:`KeyShuffle`)."""

    encoder: nn.Module
    shuffle: KeyShuffle
    key_images: Tensor  # uint8 n×3×S×S: images of shuffle.key_ids, for the momentum encoder


def train_step(
    model: SCL,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    idx: Tensor,
    lr: float,
    gen: torch.Generator,
    shard: Shard | None = None,
    kernels: StepKernels | None = None,
) -> LossTerms:
    """One SCL step on a batch of uint8 images (n×3×S×S on the device) with dataset ids idx.

    With a frozen backbone the batch may instead be its cached views (n×V×D, from
    :class:`imgcluster.train.feature_views.FeatureViews`), and ``kernels.augment`` draws one.

    With ``shard`` (DDP): images and idx are this rank's share of the global batch; the keys of
    the whole global batch are gathered and enqueued on every rank. ``kernels``: the
    augmentation and losses to use (default: eager).
    """
    kernels = kernels or StepKernels.eager(model)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    idx = idx.to(images.device, non_blocking=True)
    key_images = images if shard is None else shard.key_images
    if images.ndim == 4:  # images, not cached views: augment keeps the layout
        images = images.contiguous(memory_format=MEMORY_FORMAT)
        key_images = key_images.contiguous(memory_format=MEMORY_FORMAT)
    encoder = model.encoder if shard is None else shard.encoder
    # T1(I) and T2(I) in one call: every image still gets two independent draws, and the
    # augmentation's per-operation cost (a kernel launch each on a GPU) is paid once.
    x1, x2 = kernels.augment(torch.cat([images, key_images]), gen).split(len(images))
    with autocast(images.device):
        q = encoder(x1)  # n×d
        with torch.no_grad():
            k = model.momentum_encoder(x2).float()  # n×d, no gradient to θ̃
            keys, key_ids = (k, idx) if shard is None else shard.shuffle.gather_keys(k)
            k = k if shard is None else keys[shard.shuffle.own]  # W·n×d → this rank's n×d
        batch_ids = None if shard is None else key_ids
        terms = kernels.loss_terms(q.float(), k, idx, batch_ids)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    model.enqueue(keys, key_ids)  # after the backward pass (docs/method.md); DDP: the global batch
    momentum_update(model.encoder, model.momentum_encoder, model.cfg.momentum)
    return LossTerms(*(t.detach() for t in (terms.total, terms.id, terms.cd, terms.instance)))


@torch.no_grad()
def predict(
    model: SCL,
    images: DeviceImages | FeatureViews,
    temperature: float,
    indices: Tensor | None = None,
    batch_size: int = PREDICT_BATCH,
    memory: bool = False,
    backbone: bool = False,
) -> Predictions:
    """Encoder (eval mode) and every head on a non-augmented view of all N images (or of
    ``indices``, in their order).

    The memory's p̃ over all N is computed for the "without online CD" ablation, the one label
    update that reads it, and when ``memory`` is set.
    ``backbone``: also the pooled backbone features (before the projection MLP).
    """
    was_training = model.training
    model.eval()
    feats, probs, pooled = [], {name: [] for name in model.tasks}, []
    mem_probs = {name: [] for name in model.tasks}
    encoder = model.encoder
    for idx, batch in images.sequential(batch_size, indices):
        with autocast(batch.device):
            # Images are normalised; cached views (FeatureViews) are the backbone's features.
            x = (
                preprocess(batch).contiguous(memory_format=MEMORY_FORMAT)
                if batch.ndim == 4
                else batch
            )
            h = encoder.features(x)  # n×D
            q = encoder.project(h).float()  # n×d
        feats.append(q.cpu())
        if backbone:
            pooled.append(h.float().cpu())
        for name, task in model.tasks.items():
            probs[name].append(torch.softmax(task.head(q).float(), dim=1).cpu())
            if memory or not model.cfg.online_cd:
                p_mem = task.soft_assignment(q, idx.to(q.device), temperature)
                mem_probs[name].append(p_mem.cpu())
    model.train(was_training)
    cat = {name: torch.cat(v).numpy() for name, v in probs.items()}
    mem = {name: torch.cat(v).numpy() for name, v in mem_probs.items() if v}
    h_all = torch.cat(pooled).numpy() if backbone else None
    return Predictions(torch.cat(feats).numpy(), cat, mem, h_all)


def predict_all(
    model: SCL,
    images: DeviceImages | FeatureViews,
    temperature: float,
    world: World = World(),
    batch_size: int = PREDICT_BATCH,
    memory: bool = False,
    backbone: bool = False,
) -> Predictions:
    """:func:`predict` of all N images; under DDP each rank predicts a contiguous share and the
    shares are gathered, so every rank holds all N predictions in order."""
    if not world.distributed:
        return predict(model, images, temperature, None, batch_size, memory, backbone)
    shares = torch.arange(len(images)).tensor_split(world.world_size)
    part = predict(model, images, temperature, shares[world.rank], batch_size, memory, backbone)
    sizes = [len(s) for s in shares]

    def gather(a: np.ndarray) -> np.ndarray:
        return all_gather_rows(torch.from_numpy(a), sizes).numpy()

    probs = {name: gather(p) for name, p in part.probs.items()}
    memory_probs = {name: gather(p) for name, p in part.memory_probs.items()}
    pooled = gather(part.backbone) if part.backbone is not None else None
    return Predictions(gather(part.features), probs, memory_probs, pooled)


def sync_buffers(model: SCL) -> None:
    """Average the encoders' batch-norm statistics over the ranks (a no-op for one process).

    Each rank's last forward updated them with its own batch; averaged, every rank predicts
    with the same model, the one rank 0 saves.
    """
    buffers = [b for m in (model.encoder, model.momentum_encoder) for b in m.buffers()]
    average_([b for b in buffers if b.is_floating_point()])


def update_task_labels(model: SCL, preds: Predictions, min_size: int, seed: int) -> dict:
    """Eq. 5 + merge-and-split + Eq. 6 flip counts for every task; returns per-task statistics."""
    stats = {}
    for name, task in model.tasks.items():
        source = preds.probs[name] if model.cfg.online_cd else preds.memory_probs[name]
        size = min_cluster_size(min_size, len(preds.features), task.num_clusters)
        old = task.labels.cpu().numpy().copy()  # .numpy() of a CPU buffer shares its memory
        labels = update_labels(source, preds.features, size, seed, model.cfg.balance)
        new = align_ids(labels, old, task.num_clusters) if model.cfg.align_ids else labels
        flips = update_flip_counts(task.flips.cpu().numpy().copy(), old, new)
        task.labels.copy_(torch.from_numpy(new))
        task.flips.copy_(torch.from_numpy(flips))
        stats[name] = {
            "cluster_sizes": np.bincount(new, minlength=task.num_clusters).tolist(),
            "label_flips": int((old != new).sum()),
        }
    return stats


def global_batch_size(per_rank: int, num_images: int, world_size: int = 1) -> int:
    """Per-rank batch × world size, with the per-rank batch capped at N / world size."""
    return max(1, min(per_rank, num_images // world_size)) * world_size


def epoch_order(num_images: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """A fresh permutation cut into full batches (the ragged tail is dropped, as in MoCo)."""
    perm = torch.randperm(num_images, generator=gen)
    steps = max(1, num_images // batch_size)
    return [perm[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def run_epoch(
    model: SCL,
    optimizer: torch.optim.Optimizer,
    images: DeviceImages | FeatureViews,
    cfg: RunConfig,
    gens: tuple[torch.Generator, torch.Generator],
    step0: int,
    total_steps: int,
    callback: Callback,
    replica: Replica | None = None,
    kernels: StepKernels | None = None,
) -> dict[str, float]:
    """Train over one permutation of the data; returns mean losses, lr and images/s.

    gens: (order generator on the CPU, augmentation generator on the device). With ``replica``
    (DDP) the batches are global (per-rank batch × world size, the same on every rank) and each
    rank trains on its share; losses are averaged over the ranks, images/s counts all of them.
    """
    order_gen, aug_gen = gens
    world = 1 if replica is None else replica.world.world_size
    batch_size = global_batch_size(cfg.optim.batch_size, len(images), world)
    batches = epoch_order(len(images), batch_size, order_gen)
    sums = torch.zeros(4, device=images.device)
    start = time.perf_counter()
    lr = cfg.optim.lr
    for i, idx in enumerate(batches):
        lr = cosine_lr(step0 + i, total_steps, cfg.optim.lr)
        shard = None if replica is None else replica.shard(idx, images, order_gen)
        own = idx if shard is None else shard.shuffle.query_ids
        terms = train_step(model, optimizer, images.batch(own), own, lr, aug_gen, shard, kernels)
        sums += torch.stack([terms.total, terms.id, terms.cd, terms.instance])
        if callback is not None and (i % 10 == 9 or i == len(batches) - 1):
            callback(Progress("train", i + 1, len(batches), {"loss": float(terms.total)}))
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    seconds = time.perf_counter() - start
    average_([sums])
    means = (sums / len(batches)).tolist()
    return {
        "loss": means[0],
        "loss_id": means[1],
        "loss_cd": means[2],
        "loss_instance": means[3],
        "lr": lr,
        "images_per_s": len(batches) * batch_size / seconds,
        "train_seconds": seconds,
        "steps": len(batches),
    }


def make_optimizer(model: SCL, cfg: RunConfig) -> torch.optim.SGD:
    """SGD, momentum 0.9, weight decay 5e-4 over the trainable parameters (not θ̃).

    Groups, each with its ``lr_scale`` of the scheduled lr (applied by :func:`train_step`): the
    backbone at ``encoder_lr_scale`` (none when frozen), the projector at 1, the cluster heads
    at ``head_lr_scale``.
    """
    heads = [p for task in model.tasks.values() for p in task.head.parameters()]
    encoder_scale = cfg.optim.encoder_lr_scale or 1.0
    backbone = [p for p in model.encoder.backbone.parameters() if p.requires_grad]
    if encoder_scale == 1.0:
        backbone = []  # in the main group, as in checkpoints written before the option
    apart = {id(p) for p in heads + backbone}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in apart]
    groups: list[dict[str, Any]] = [{"params": rest, "lr_scale": 1.0}]
    if backbone:
        lr = cfg.optim.lr * encoder_scale
        groups.insert(0, {"params": backbone, "lr_scale": encoder_scale, "lr": lr})
    if heads:
        scale = cfg.optim.head_lr_scale
        groups.append({"params": heads, "lr_scale": scale, "lr": cfg.optim.lr * scale})
    return torch.optim.SGD(
        groups,
        lr=cfg.optim.lr,
        momentum=cfg.optim.sgd_momentum,
        weight_decay=cfg.optim.weight_decay,
    )
