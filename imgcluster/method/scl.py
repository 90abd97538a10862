"""The SCL model: one encoder, its momentum copy, and three jointly trained tasks.

Tasks (docs/method.md): 'clustering' (C = k) and 'under-clustering' (C = k/2), each
a :class:`ClusteringTask` with its own semantic memory, pseudo labels, flip counts and classifier
head; and 'over-clustering', plain instance discrimination against MoCo's queue. Their losses add
up (Eq. 7 per task). At test time only the 'clustering' head is used.

The pieces of state that change outside backpropagation (memories, labels, flip counts) are
registered buffers, so one ``state_dict`` saves and restores the whole method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imgcluster.config import SCLConfig, under_clustering_k
from imgcluster.method.losses import (
    bank_logsumexp,
    cluster_discrimination_loss,
    cross_cluster_id_loss,
    instance_loss,
    memory_soft_assignment,
    weighted_loss,
)
from imgcluster.method.memory import InstanceQueue, SemanticMemory
from imgcluster.method.model import ClusterHead, Encoder, make_momentum_copy
from imgcluster.method.pseudo_labels import hard_sample_weights

CLUSTERING = "clustering"
UNDER = "under_clustering"


@dataclass
class LossTerms:
    """The step's losses (scalars, still on the device; summed over the clustering tasks)."""

    total: Tensor
    id: Tensor
    cd: Tensor
    instance: Tensor


class ClusteringTask(nn.Module):
    """One clustering granularity: semantic memory, head, pseudo labels y and flip counts s."""

    def __init__(
        self,
        num_clusters: int,
        num_images: int,
        dim: int,
        memory_size: int,
        gen: torch.Generator,
        mask_own_keys: bool = True,
    ) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.mask_own_keys = mask_own_keys  # SCLConfig.mask_own_keys: see bank_lse
        bank = SemanticMemory.bank_size_for(memory_size, num_clusters, num_images)
        self.memory = SemanticMemory(num_clusters, bank, dim)
        self.head = ClusterHead(dim, num_clusters)
        # Random initial assignment (paper: random initialisation of the cluster assignments).
        self.register_buffer("labels", torch.randint(num_clusters, (num_images,), generator=gen))
        # s_i starts at 1 so Eq. 6 weights are uniform until labels move (ours, docs/method.md).
        self.register_buffer("flips", torch.ones(num_images))

    def losses(
        self, q: Tensor, k: Tensor, idx: Tensor, cfg: SCLConfig, batch_idx: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """L_ID (Eq. 1-2, weighted by Eq. 6) and L_CD (Eq. 3-4) for a batch.

        q, k: n×d l2-normalised; idx: n indices of the batch's images into the dataset.
        batch_idx: under DDP, the W·n ids of the global batch that idx is one rank's share of.
        """
        y = self.labels[idx]  # n
        bank_lse = self.bank_lse(q, idx, cfg.temperature)  # n×C
        per_sample = cross_cluster_id_loss(q, k, bank_lse, y, cfg.temperature, cfg.cross_cluster)
        weights = hard_sample_weights(self.flips[idx]) if cfg.hard_mining else None
        if weights is not None and batch_idx is not None:
            # Eq. 6 normalises over the global batch; ×W because DDP averages the W ranks' grads.
            share = self.flips[idx].sum() / self.flips[batch_idx].sum()
            weights = weights * share * (len(batch_idx) / len(idx))
        target = memory_soft_assignment(bank_lse)  # n×C, no gradient
        l_cd = cluster_discrimination_loss(self.head(q.detach()), target)  # grad to W, B only
        return weighted_loss(per_sample, weights), l_cd

    @torch.no_grad()
    def start_from(self, labels: Tensor, features: Tensor, temperature: float) -> None:
        """Start the clusters from a partition of warmed-up features (ours, hypothesis 4 of the
        quality work): the pseudo labels become ``labels`` (N), each bank is filled with its
        cluster's newest features (N×d, unit rows), and the head becomes the nearest-mean
        classifier of those clusters, logits cos(q, c_j)/τ, so its argmax starts where the
        labels are. Flip counts are left as they are."""
        self.labels.copy_(labels)
        ids = torch.arange(len(labels), device=labels.device)
        self.memory.enqueue(features, labels, ids)
        means = torch.zeros(self.num_clusters, features.shape[1], device=features.device)
        means.index_add_(0, labels, features)
        self.head.fc.weight.copy_(torch.nn.functional.normalize(means, dim=1) / temperature)
        self.head.fc.bias.zero_()

    def soft_assignment(self, q: Tensor, idx: Tensor, temperature: float) -> Tensor:
        """Eq. 3 for the label update: p̃ of images idx (q: n×d) over this task's banks → n×C."""
        return memory_soft_assignment(self.bank_lse(q, idx, temperature))

    def bank_lse(self, q: Tensor, idx: Tensor, temperature: float) -> Tensor:
        """Eq. 1 and 3's shared reduction over this task's banks → n×C; the images' own earlier
        keys are left out unless ``mask_own_keys`` is off (the paper's sums)."""
        memory = self.memory
        ids = memory.ids if self.mask_own_keys else None
        return bank_logsumexp(q, memory.flat(), ids, idx, self.num_clusters, temperature)


class SCL(nn.Module):
    """Encoder f_θ, momentum encoder f_θ̃, the clustering tasks and the instance queue.

    With ``method='moco-kmeans'`` there are no clustering tasks: only instance discrimination
    (the paper's baseline), with k-means on the features afterwards.
    """

    def __init__(
        self,
        backbone: str,
        num_images: int,
        cfg: SCLConfig,
        feature_dim: int = 128,
        seed: int = 0,
        projector_bn: bool = True,
        stem: str = "pica",
        frozen: bool = False,
    ) -> None:
        super().__init__()
        if cfg.memory_size is None:
            raise ValueError("SCL needs a memory size (imgcluster.config.resolve sets the paper's)")
        memory_size = cfg.memory_size
        gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.encoder = Encoder(backbone, feature_dim, projector_bn, stem, frozen)
        self.momentum_encoder = make_momentum_copy(self.encoder)
        self.tasks = nn.ModuleDict()
        if cfg.method == "scl":
            for name, c in ((CLUSTERING, cfg.k), (UNDER, under_clustering_k(cfg.k))):
                self.tasks[name] = ClusteringTask(
                    c, num_images, feature_dim, memory_size, gen, cfg.mask_own_keys
                )
        self.queue = InstanceQueue(min(memory_size, num_images), feature_dim)

    def loss_terms(
        self, q: Tensor, k: Tensor, idx: Tensor, batch_idx: Tensor | None = None
    ) -> LossTerms:
        """Eq. 7 summed over the tasks: L = α·ΣL_ID + β·ΣL_CD + L_instance.

        batch_idx: under DDP, the global batch's ids (idx is this rank's share), for Eq. 6.
        """
        zero = q.new_zeros((), dtype=torch.float32)
        l_id, l_cd = zero, zero
        for task in self.tasks.values():
            task_id, task_cd = task.losses(q, k, idx, self.cfg, batch_idx)
            l_id, l_cd = l_id + task_id, l_cd + task_cd
        tau = self.cfg.temperature
        queue_ids = self.queue.ids if self.cfg.mask_own_keys else None
        queue_lse = bank_logsumexp(q, self.queue.flat(), queue_ids, idx, 1, tau)  # n×1
        l_inst = instance_loss(q, k, queue_lse, tau)
        total = self.cfg.alpha * l_id + self.cfg.beta * l_cd + l_inst
        return LossTerms(total=total, id=l_id, cd=l_cd, instance=l_inst)

    @torch.no_grad()
    def enqueue(self, k: Tensor, idx: Tensor) -> None:
        """After the backward pass: k_i into M_{y_i} of every task, and into MoCo's queue.

        Under DDP, k and idx are the whole global batch's (gathered from every rank), and the
        labels y are the same on every rank, so every rank's memories stay identical.
        """
        for task in self.tasks.values():
            task.memory.enqueue(k, task.labels[idx], idx)
        self.queue.enqueue(k, idx)

    def task(self, name: str) -> ClusteringTask:
        return self.tasks[name]  # type: ignore[return-value]
