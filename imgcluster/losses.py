"""SCL's losses, Eq. 1-4 and the MoCo InfoNCE loss, as pure functions of tensors.

Notation (SCL.md): q = f_θ(T1(I)) and k = f_θ̃(T2(I)) are l2-normalised n×d; the semantic
memory holds C banks of B keys; τ is the temperature. Eq. 1 and Eq. 3 both read the one matrix
product q·[M_1 ... M_C]ᵀ (:func:`memory_logits`), and a mask removes each row's own bank for Eq. 1.
All reductions run in float32 even when the matmul ran in bf16 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def memory_logits(q: Tensor, memory: Tensor, num_banks: int, temperature: float) -> Tensor:
    """cos(q_i, k̃)/τ for every key of every bank.

    q: n×d, memory: (C·B)×d (banks concatenated) → n×C×B, float32.
    """
    return (q @ memory.T).float().view(q.shape[0], num_banks, -1) / temperature


def mask_own_keys(mem_logits: Tensor, key_ids: Tensor, idx: Tensor) -> Tensor:
    """Set to −inf the memory entries that are the batch images' own earlier keys (ours).

    mem_logits: n×C×B; key_ids: C×B image index of each key; idx: n → n×C×B. On a folder not
    much larger than the memory, an image's previous key is nearly always stored; as a
    negative it would push q away from itself, and in Eq. 3 it would vote for its old cluster.
    """
    own = key_ids[None, :, :] == idx[:, None, None]
    return mem_logits.masked_fill(own, float("-inf"))


def info_nce(positive: Tensor, negatives: Tensor) -> Tensor:
    """Per-sample −log(e^pos / (e^pos + Σ e^neg)) from logits (already divided by τ).

    positive: n, negatives: n×m (−inf entries are excluded) → n.
    """
    logits = torch.cat([positive[:, None], negatives], dim=1)
    return torch.logsumexp(logits, dim=1) - positive


def cross_cluster_id_loss(
    q: Tensor,
    k: Tensor,
    mem_logits: Tensor,
    labels: Tensor,
    temperature: float,
    cross_cluster: bool = True,
) -> Tensor:
    """Eq. 1-2: instance discrimination against the banks of the other clusters only.

    q, k: n×d; mem_logits: n×C×B from :func:`memory_logits`; labels: n pseudo labels y_i.
    Returns the per-sample losses L_ID(i), n. ``cross_cluster=False`` is the paper's ablation
    "without cross-cluster ID": every bank, the image's own cluster included, is a negative.
    """
    positive = (q * k).sum(dim=1).float() / temperature  # n
    if cross_cluster:
        own = F.one_hot(labels, mem_logits.shape[1]).bool()[:, :, None]  # n×C×1
        mem_logits = mem_logits.masked_fill(own, float("-inf"))  # Q_i = ∪_{j≠y_i} M_j
    return info_nce(positive, mem_logits.flatten(1))


def weighted_loss(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    """Eq. 6: L_ID = Σ_i w_i L_ID(i) with Σ_i w_i = 1; the plain batch mean without weights."""
    if weights is None:
        return per_sample.mean()
    return (weights * per_sample).sum()


def memory_soft_assignment(mem_logits: Tensor) -> Tensor:
    """Eq. 3: p̃_ij ∝ Σ_{k̃∈M_j} e^{cos(q_i,k̃)/τ}, with a log-sum-exp per bank.

    mem_logits: n×C×B → n×C rows summing to one. A target: computed without gradient.
    """
    with torch.no_grad():
        return torch.softmax(torch.logsumexp(mem_logits.detach(), dim=2), dim=1)


def cluster_discrimination_loss(head_logits: Tensor, target: Tensor) -> Tensor:
    """Eq. 4: L_CD = (1/n) Σ_i Σ_j −p̃_ij log p_ij with p_i = softmax(Wᵀq_i + B).

    head_logits: n×C (the head applied to q.detach(), so only W and B learn), target: n×C.
    """
    log_p = torch.log_softmax(head_logits.float(), dim=1)
    return -(target * log_p).sum(dim=1).mean()


def instance_loss(q: Tensor, k: Tensor, queue_logits: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (the 'over-clustering' task): every queued key is a negative.

    q, k: n×d; queue_logits: n×K, cos(q_i, queue key)/τ (from :func:`memory_logits` with one
    bank, own keys masked) → scalar batch mean.
    """
    positive = (q * k).sum(dim=1).float() / temperature
    return info_nce(positive, queue_logits).mean()
