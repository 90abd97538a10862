"""Pseudo labels: the per-epoch update (Eq. 5) with merge-and-split, and flip counts (Eq. 6).

Once per epoch every image gets y_i = argmax_j p_ij from the classifier on a non-augmented view
(Eq. 5). Merge-and-split (ODC, Zhan et al. CVPR 2020) then keeps the partition from degenerating:
a cluster smaller than the minimum size hands its images to their next most likely clusters, and
each freed id is reused by splitting the largest cluster in two with 2-means on its features.
Flip counts s_i (how often image i changed cluster) weight the hard samples in L_ID (Eq. 6).

Works on numpy arrays on the host: it runs once per epoch on N labels, not in the training step.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from imgcluster.method.kmeans import kmeans


def min_cluster_size(requested: int, num_images: int, num_clusters: int) -> int:
    """ODC's minimum size (20), capped at half the mean cluster size for small folders (ours).

    The cap guarantees that merge-and-split can always succeed: the largest cluster then holds
    at least twice the minimum, so it can be split into two legal halves.
    """
    return max(1, min(requested, num_images // (2 * num_clusters)))


def merge_small_clusters(labels: np.ndarray, probs: np.ndarray, min_size: int) -> np.ndarray:
    """Give the images of every cluster smaller than ``min_size`` to their next likeliest cluster.

    labels: N in [0, C); probs: N×C → new labels in which every used cluster has ≥ min_size images.
    """
    num_clusters = probs.shape[1]
    sizes = np.bincount(labels, minlength=num_clusters)
    small = sizes < min_size
    if small.all():  # nothing legal to merge into: keep the largest cluster
        small[np.argmax(sizes)] = False
    moved = small[labels]
    masked = np.where(small[None, :], -np.inf, probs[moved])
    labels = labels.copy()
    labels[moved] = masked.argmax(axis=1)
    return labels


def split_cluster(
    labels: np.ndarray, features: np.ndarray, old: int, new: int, min_size: int, seed: int
) -> np.ndarray:
    """Split cluster ``old`` in two with 2-means on its features; one half takes id ``new``.

    The half nearer the second centroid goes to ``new``; its size is clamped to
    [min_size, n - min_size] by ranking members on (d_old² − d_new²), so neither half is tiny.
    """
    members = np.flatnonzero(labels == old)
    x = features[members]
    _, centroids = kmeans(x, 2, seed=seed, niter=20)
    d = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)  # n×2
    score = d[:, 0] - d[:, 1]  # > 0: closer to centroid 1
    n_new = int(np.clip((score > 0).sum(), min_size, len(members) - min_size))
    labels = labels.copy()
    labels[members[np.argsort(-score, kind="stable")[:n_new]]] = new
    return labels


def merge_and_split(
    labels: np.ndarray, probs: np.ndarray, features: np.ndarray, min_size: int, seed: int = 0
) -> np.ndarray:
    """ODC's merge-and-split: afterwards no cluster is empty or smaller than ``min_size``.

    labels: N; probs: N×C; features: N×d. Requires N ≥ 2·C·min_size (see
    :func:`min_cluster_size`). Deterministic for a given seed.
    """
    num_clusters = probs.shape[1]
    labels = merge_small_clusters(labels, probs, min_size)
    sizes = np.bincount(labels, minlength=num_clusters)
    for step, freed in enumerate(np.flatnonzero(sizes == 0)):
        largest = int(np.argmax(np.bincount(labels, minlength=num_clusters)))
        labels = split_cluster(labels, features, largest, int(freed), min_size, seed + step)
    return labels


def balanced(probs: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Sinkhorn-Knopp towards equal cluster sizes (SeLa, Asano et al. ICLR 2020; SwAV).

    Alternately rescales the columns of the N×C probabilities to equal mass N/C and the rows to
    one, ``iterations`` times: a cluster that the argmax would over-fill loses its least sure
    images to their next likeliest cluster. Returns N×C rows that sum to one.
    """
    q = np.asarray(probs, dtype=np.float64) + 1e-12
    q /= q.sum()
    n, c = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=0, keepdims=True) * c
        q /= q.sum(axis=1, keepdims=True) * n
    return q * n


def update_labels(
    probs: np.ndarray, features: np.ndarray, min_size: int, seed: int = 0, balance: int = 0
) -> np.ndarray:
    """Eq. 5 then merge-and-split: y_i = argmax_j p_ij, repaired so every cluster is legal.

    probs: N×C (classifier, or the memory's p̃ for the "without online CD" ablation);
    features: N×d → labels N int64. ``balance``: Sinkhorn iterations towards equal sizes
    applied to the probabilities first (:func:`balanced`; 0: none, the paper's).
    """
    if balance:
        probs = balanced(probs, balance)
    return merge_and_split(probs.argmax(axis=1).astype(np.int64), probs, features, min_size, seed)


def align_ids(new: np.ndarray, old: np.ndarray, num_clusters: int) -> np.ndarray:
    """Rename the new clusters so that each keeps the id of the old cluster it overlaps most (ours).

    Cluster ids are arbitrary: the classifier's argmax may permute them and merge-and-split hands
    freed ids to fresh halves. Renaming by the one-to-one matching of largest overlap (Hungarian,
    scipy's linear_sum_assignment on the C×C contingency table) changes no partition, keeps each
    bank of the semantic memory and each head's target on the same group of images, and makes
    Eq. 6 count images that changed group rather than groups that changed name.

    new, old: N labels in [0, C) → N labels, the same partition as ``new``.
    """
    overlap = np.zeros((num_clusters, num_clusters), dtype=np.int64)
    np.add.at(overlap, (new, old), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    rename = np.empty(num_clusters, dtype=np.int64)
    rename[rows] = cols
    return rename[new]


def update_flip_counts(flips: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Eq. 6's s_i: add one for every image whose cluster changed in this update."""
    return flips + (old != new).astype(flips.dtype)


def hard_sample_weights(flips: Tensor) -> Tensor:
    """Eq. 6: w_i = s_i / Σ_{j∈batch} s_j for the images of one mini-batch (n → n)."""
    flips = flips.to(torch.float32)
    return flips / flips.sum()
