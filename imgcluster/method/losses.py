"""SCL's losses, Eq. 1-4 and the MoCo InfoNCE loss, as pure functions of tensors.

Notation (docs/method.md): q = f_θ(T1(I)) and k = f_θ̃(T2(I)) are l2-normalised n×d; the semantic
memory holds C banks of B keys; τ is the temperature. Eq. 1 and Eq. 3 both read the one matrix
product q·[M_1 ... M_C]ᵀ (:func:`memory_logits`, computed as its transpose), reduced once to a
log-sum-exp per bank (:func:`bank_logsumexp`, which computes its own gradient in closed form);
a mask then removes each row's own bank for Eq. 1. All reductions run in float32 even when the
matmul ran in bf16 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this temperature the memory's logits are shifted by their maximum before e^ℓ.
UNSHIFTED_MIN_TEMPERATURE = 0.02


def memory_logits(q: Tensor, memory: Tensor, num_banks: int, temperature: float) -> Tensor:
    """cos(q_i, k̃)/τ for every key of every bank, key-major.

    q: n×d, memory: (C·B)×d (banks concatenated) → C×B×n, at least float32 (float64 stays).
    The 1/τ is applied to q (n×d) before the product rather than to the C×B×n result: one
    pass fewer over the largest tensor of the step. Key-major because M·qᵀ runs ~25 % faster
    than q·Mᵀ on a CPU (measured at d = 128, n = 128 and 256, C·B ≈ 4,000-5,000) and a
    per-bank sum over it still reads contiguous rows of n.
    """
    logits = memory @ (q * (1.0 / temperature)).T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 → float32
    return logits.view(num_banks, -1, q.shape[0])


def mask_own_keys_(mem_logits: Tensor, key_ids: Tensor, idx: Tensor) -> Tensor:
    """Set to −inf, in place, the memory entries that are the batch images' own earlier keys
    (ours); returns ``mem_logits``.

    mem_logits: C×B×n (:func:`memory_logits`); key_ids: C×B image index of each key; idx: n.
    On a folder not much larger than the memory, an image's previous key is nearly always
    stored; as a negative it would push q away from itself, and in Eq. 3 it would vote for its
    old cluster. A masked entry is left out of every sum over the memory, and so gets no
    gradient. One comparison of every entry with its batch image: no value is read on the host.
    """
    with torch.no_grad():
        own = key_ids[:, :, None] == idx[None, None, :]
        return mem_logits.masked_fill_(own, float("-inf"))


def bank_logsumexp(
    q: Tensor,
    memory: Tensor,
    key_ids: Tensor | None,
    idx: Tensor,
    num_banks: int,
    temperature: float,
) -> Tensor:
    """log Σ_{k̃∈M_j, k̃ not i's own} e^{cos(q_i,k̃)/τ} for every image i and bank j → n×C.

    The one reduction over the memory that Eq. 1 and Eq. 3 share: a log-sum-exp over a union
    of banks is the log-sum-exp of their per-bank log-sum-exps. q: n×d (the only input with a
    gradient), memory: (C·B)×d, key_ids: C×B, idx: n (see :func:`mask_own_keys_`). A bank
    whose every key is masked gives −inf, and no gradient. ``key_ids`` None: no key is
    masked, every stored key counts (the paper's sums, ``SCLConfig.mask_own_keys`` off).
    """
    return _BankLogSumExp.apply(q, memory, key_ids, idx, num_banks, temperature)


class _BankLogSumExp(torch.autograd.Function):
    """:func:`bank_logsumexp` with its gradient in closed form.

    With ℓ_ijb = q_i·k̃_jb/τ and lse_ij = log Σ_b e^{ℓ_ijb}: ∂lse_ij/∂q_i = (1/τ) Σ_b π_ijb k̃_jb,
    π_ijb = e^{ℓ_ijb − lse_ij} (the softmax within bank j). The forward pass keeps the
    exponentials it computes anyway, so the backward pass is one product and one matmul; the
    generic path (logits → torch.logsumexp) recomputes them and keeps the logits besides.

    q and the keys are unit vectors, so |ℓ| ≤ 1/τ. For τ ≥ :data:`UNSHIFTED_MIN_TEMPERATURE`
    (1/τ ≤ 50; e^50 ≈ 5·10^21, e^−50 ≈ 2·10^−22, both well inside float32) the exponentials
    are taken as they are; the usual subtraction of each bank's maximum, two more passes over
    C×B×n, is needed only below that.
    """

    @staticmethod
    def forward(ctx, q, memory, key_ids, idx, num_banks, temperature):  # type: ignore[override]
        logits = memory_logits(q, memory, num_banks, temperature)
        if key_ids is not None:
            mask_own_keys_(logits, key_ids, idx)
        if temperature >= UNSHIFTED_MIN_TEMPERATURE:
            peak = None  # |ℓ| ≤ 1/τ: e^ℓ neither overflows nor underflows in float32
        else:
            peak = logits.amax(dim=1, keepdim=True)  # C×1×n
            peak = torch.where(torch.isfinite(peak), peak, 0.0)  # an all-masked bank: e^−inf = 0
            logits.sub_(peak)
        exps = logits.exp_()  # in place: the logits are not needed again
        mass = exps.sum(dim=1)  # C×n; an all-masked bank: 0, so its log-sum-exp is −inf
        ctx.save_for_backward(exps, mass, memory)
        ctx.scale, ctx.dtype = 1.0 / temperature, q.dtype
        lse = mass.log() if peak is None else mass.log() + peak.squeeze(1)
        return lse.T  # n×C

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        exps, mass, memory = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        per_bank = torch.where(mass > 0, grad.T / mass, 0.0) * ctx.scale  # C×n
        weights = (exps * per_bank.unsqueeze(1)).flatten(0, 1)  # (C·B)×n: π_ijb·g_ij/τ
        grad_q = (weights.T @ memory.to(weights.dtype)).to(ctx.dtype)
        return grad_q, None, None, None, None, None


def info_nce(positive: Tensor, negatives: Tensor) -> Tensor:
    """Per-sample −log(e^pos / (e^pos + Σ e^neg)) from logits (already divided by τ).

    positive: n, negatives: n×m (−inf entries are excluded) → n. Computed as
    logaddexp(pos, logsumexp(neg)) − pos, which never copies the negatives.
    """
    return torch.logaddexp(positive, torch.logsumexp(negatives, dim=1)) - positive


def cross_cluster_id_loss(
    q: Tensor,
    k: Tensor,
    bank_lse: Tensor,
    labels: Tensor,
    temperature: float,
    cross_cluster: bool = True,
) -> Tensor:
    """Eq. 1-2: instance discrimination against the banks of the other clusters only.

    q, k: n×d; bank_lse: n×C from :func:`bank_logsumexp`; labels: n pseudo labels y_i.
    Returns the per-sample losses L_ID(i), n:
    −log(e^{q·k/τ} / (e^{q·k/τ} + Σ_{j≠y_i} Σ_{k̃∈M_j} e^{q·k̃/τ})), the inner sums being the
    banks' e^{bank_lse}. ``cross_cluster=False`` is the paper's ablation "without cross-cluster
    ID": every bank, the image's own cluster included, is a negative.
    """
    positive = (q * k).sum(dim=1).float() / temperature  # n
    if cross_cluster:
        own = F.one_hot(labels, bank_lse.shape[1]).bool()  # n×C
        bank_lse = bank_lse.masked_fill(own, float("-inf"))  # Q_i = ∪_{j≠y_i} M_j
    return info_nce(positive, bank_lse)


def weighted_loss(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    """Eq. 6: L_ID = Σ_i w_i L_ID(i) with Σ_i w_i = 1; the plain batch mean without weights."""
    if weights is None:
        return per_sample.mean()
    return (weights * per_sample).sum()


def memory_soft_assignment(bank_lse: Tensor) -> Tensor:
    """Eq. 3: p̃_ij ∝ Σ_{k̃∈M_j} e^{cos(q_i,k̃)/τ} = e^{bank_lse_ij}, i.e. a softmax over banks.

    bank_lse: n×C from :func:`bank_logsumexp` → n×C rows summing to one. A target: computed
    without gradient.
    """
    with torch.no_grad():
        return torch.softmax(bank_lse.detach(), dim=1)


def cluster_discrimination_loss(head_logits: Tensor, target: Tensor) -> Tensor:
    """Eq. 4: L_CD = (1/n) Σ_i Σ_j −p̃_ij log p_ij with p_i = softmax(Wᵀq_i + B).

    head_logits: n×C (the head applied to q.detach(), so only W and B learn), target: n×C.
    """
    log_p = torch.log_softmax(head_logits.float(), dim=1)
    return -(target * log_p).sum(dim=1).mean()


def instance_loss(q: Tensor, k: Tensor, queue_lse: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (the 'over-clustering' task): every queued key is a negative.

    q, k: n×d; queue_lse: n×1, log Σ_{queued keys} e^{cos(q_i, key)/τ} (from
    :func:`bank_logsumexp` with one bank, own keys masked) → scalar batch mean.
    """
    positive = (q * k).sum(dim=1).float() / temperature
    return info_nce(positive, queue_lse).mean()
