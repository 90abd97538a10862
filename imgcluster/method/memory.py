"""FIFO key memories: SCL's semantic memory (C banks, one per cluster) and MoCo's queue.

The semantic memory M = [M_1 ... M_C] holds, for each cluster j, the most recent momentum-encoder
keys k of images whose pseudo label is j (docs/method.md). MoCo's instance queue is the
same structure with a single bank, so :class:`InstanceQueue` is a one-bank :class:`SemanticMemory`.

Banks live in registered buffers: they follow ``.to(device)`` and are saved in ``state_dict``.
Like MoCo's queue they start filled with random unit vectors (ours, docs/method.md). Each slot also
remembers which image its key came from (``ids``, −1 for the random start), so that an image's
own stale key can be kept out of its negatives (ours: on a small folder the memory holds a key of
nearly every image, and one's own past key would be its hardest "negative").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SemanticMemory(nn.Module):
    """C FIFO banks of ``bank_size`` l2-normalised keys each.

    Buffers: ``banks`` C×B×d, ``ids`` C×B (image index of each key, −1 if none), ``ptr`` C
    (next write position per bank).
    """

    def __init__(self, num_banks: int, bank_size: int, dim: int) -> None:
        super().__init__()
        if num_banks < 1:
            raise ValueError(f"number of banks must be at least 1, got {num_banks}")
        if bank_size < 1:
            raise ValueError(f"bank size must be at least 1, got {bank_size}")
        if dim < 1:
            raise ValueError(f"key dimension must be at least 1, got {dim}")
        self.num_banks, self.bank_size, self.dim = num_banks, bank_size, dim
        self.register_buffer("banks", F.normalize(torch.randn(num_banks, bank_size, dim), dim=2))
        self.register_buffer("ids", torch.full((num_banks, bank_size), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(num_banks, dtype=torch.long))

    @staticmethod
    def bank_size_for(memory_size: int, num_clusters: int, num_images: int) -> int:
        """K/(C-1) keys per bank, with K capped at the number of images (ours, docs/method.md).

        With C-1 foreign banks, the contrastive set Q_i of Eq. 1 then holds K keys in all.
        """
        k_eff = min(memory_size, num_images)
        return max(1, k_eff // max(1, num_clusters - 1))

    def flat(self) -> Tensor:
        """All keys as one (C·B)×d matrix, bank after bank (for q·Mᵀ, docs/method.md)."""
        return self.banks.reshape(-1, self.dim)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor, ids: Tensor) -> None:
        """Push each key into the bank of its label, dropping the oldest (FIFO).

        keys: n×d (l2-normalised), labels: n (long, in [0, C)), ids: n image indices.
        Vectorised, with no host sync: a key's slot is its bank's pointer plus its rank among
        the batch's keys of that bank; when a batch brings more than B keys for one bank only
        its last B are written.
        """
        keys = keys.to(self.banks.dtype)
        # index_add_, not bincount: CUDA's bincount reads the largest label on the host.
        counts = torch.zeros_like(self.ptr).index_add_(0, labels, torch.ones_like(labels))  # C
        order = torch.sort(labels, stable=True).indices  # keys grouped by bank, arrival order kept
        bank = labels[order]
        starts = torch.cumsum(counts, 0) - counts  # C, first position of each bank's group
        rank = torch.arange(labels.numel(), device=labels.device) - starts[bank]
        slot = (self.ptr[bank] + rank) % self.bank_size
        # Keys whose ranks differ by a multiple of B share a slot; all of them write the newest
        # one's key, so the duplicate writes agree and no boolean mask (a host sync) is needed.
        newest = rank + self.bank_size * ((counts[bank] - 1 - rank) // self.bank_size)
        source = order[starts[bank] + newest]
        self.banks[bank, slot] = keys[source]
        self.ids[bank, slot] = ids[source]
        self.ptr.copy_((self.ptr + counts) % self.bank_size)


class InstanceQueue(SemanticMemory):
    """MoCo's FIFO queue of K keys: the 'over-clustering' task's negatives (one bank)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__(1, size, dim)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, ids: Tensor) -> None:  # type: ignore[override]
        """Push n×d keys of images ``ids``, dropping the oldest."""
        zeros = torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)
        super().enqueue(keys, zeros, ids)
