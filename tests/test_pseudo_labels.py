"""Eq. 5 label update with merge-and-split, and Eq. 6 flip counts and weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from imgcluster.method.pseudo_labels import (
    align_ids,
    balanced,
    hard_sample_weights,
    merge_and_split,
    merge_small_clusters,
    min_cluster_size,
    update_flip_counts,
    update_labels,
)


def blobs(n_per: int, centres: int, dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=10, size=(centres, dim))
    y = np.repeat(np.arange(centres), n_per)
    return (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_merge_moves_small_cluster_to_next_likeliest():
    probs = np.array([[0.5, 0.3, 0.2]] * 2 + [[0.1, 0.8, 0.1]] * 10 + [[0.1, 0.1, 0.8]] * 10)
    labels = probs.argmax(1)
    labels[:2] = 0  # cluster 0 has 2 images: too small for min size 3
    merged = merge_small_clusters(labels, probs, min_size=3)
    assert (merged[:2] == 1).all()  # 0.3 > 0.2: their next most likely cluster
    assert (merged[2:] == labels[2:]).all()


@pytest.mark.parametrize("seed", range(5))
def test_merge_and_split_leaves_no_empty_or_tiny_cluster(seed):
    rng = np.random.default_rng(seed)
    feats, _ = blobs(60, 3, seed=seed)  # 180 images, 3 real groups
    c = 8
    probs = rng.dirichlet(np.ones(c) * 0.05, size=len(feats))
    probs[:, 5:] *= 0.01  # clusters 5..7 nearly never win: empty or tiny after argmax
    min_size = min_cluster_size(20, len(feats), c)
    labels = merge_and_split(probs.argmax(1), probs, feats, min_size, seed=seed)
    sizes = np.bincount(labels, minlength=c)
    assert sizes.min() >= min_size and sizes.sum() == len(feats)


def test_split_follows_the_feature_structure():
    """One cluster holding two far-apart blobs is split along them when an id is freed."""
    feats, truth = blobs(50, 2)
    probs = np.tile([0.9, 0.1], (100, 1))  # cluster 1 is empty after argmax
    labels = update_labels(probs, feats, min_size=10, seed=0)
    assert sorted(np.bincount(labels).tolist()) == [50, 50]
    assert (labels == truth).all() or (labels == 1 - truth).all()


def test_label_update_is_argmax_when_clusters_are_healthy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=400)
    labels = update_labels(probs, rng.normal(size=(400, 3)).astype(np.float32), 5)
    assert (labels == probs.argmax(1)).all()


def test_min_cluster_size_is_capped_for_small_folders():
    assert min_cluster_size(20, 60000, 10) == 20
    assert min_cluster_size(20, 200, 10) == 10
    assert min_cluster_size(20, 10, 10) == 1


def test_flip_counts_and_weights():
    flips = update_flip_counts(np.ones(5), np.array([0, 1, 2, 3, 4]), np.array([0, 2, 2, 0, 4]))
    assert flips.tolist() == [1, 2, 1, 2, 1]
    w = hard_sample_weights(torch.tensor(flips))
    torch.testing.assert_close(w, torch.tensor([1, 2, 1, 2, 1]) / 7.0)
    torch.testing.assert_close(hard_sample_weights(torch.ones(4)), torch.full((4,), 0.25))


def test_align_ids_undoes_a_renaming():
    rng = np.random.default_rng(0)
    old = rng.integers(0, 6, size=300)
    perm = rng.permutation(6)
    assert np.array_equal(align_ids(perm[old], old, 6), old)


def test_align_ids_keeps_the_partition_and_maximises_overlap():
    rng = np.random.default_rng(1)
    for _ in range(20):
        old = rng.integers(0, 4, size=60)
        new = rng.integers(0, 4, size=60)
        aligned = align_ids(new, old, 4)
        # Same partition: a bijection maps new ids to aligned ids.
        pairs = set(zip(new.tolist(), aligned.tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
        # Largest agreement over all 4! renamings (naive reference).
        best = max(int((np.array(p)[new] == old).sum()) for p in itertools.permutations(range(4)))
        assert int((aligned == old).sum()) == best


def test_align_ids_handles_missing_clusters():
    old = np.array([0, 0, 1, 1, 2, 2])
    new = np.array([3, 3, 3, 3, 0, 0])  # clusters 1 and 2 unused in new
    aligned = align_ids(new, old, 4)
    assert aligned[4] == aligned[5] == 2
    assert aligned[0] == aligned[1] == aligned[2] == aligned[3] in (0, 1)


def test_balanced_rows_sum_to_one_and_columns_approach_equal_mass():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 5))
    logits[:, 0] += 3.0  # the argmax would put most images in cluster 0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for iterations in (1, 3, 50):
        q = balanced(probs, iterations)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-9)
    # Converged, every column holds N/C of the mass (Sinkhorn-Knopp's fixed point).
    np.testing.assert_allclose(balanced(probs, 200).sum(axis=0), 60.0, rtol=1e-3)
    before = np.bincount(probs.argmax(1), minlength=5)
    after = np.bincount(balanced(probs, 3).argmax(1), minlength=5)
    assert before.max() > 200 and after.max() < before.max() and after.min() > before.min()


def test_balanced_leaves_balanced_probabilities_alone():
    """A doubly stochastic input (rows sum to 1, columns to N/C) is Sinkhorn's fixed point."""
    probs = np.tile(np.eye(4) * 0.6 + 0.1, (25, 1))  # 100×4, each column sums to 25
    np.testing.assert_allclose(balanced(probs, 3), probs, atol=1e-9)


def test_update_labels_with_balance_fills_an_overfull_cluster_less():
    x, y = blobs(50, 4)
    probs = np.full((200, 4), 0.05)
    probs[np.arange(200), y] = 0.5
    strays = np.flatnonzero(y == 1)[:30]
    probs[strays, 0] = 0.6  # the head puts 30 of blob 1 into cluster 0 (0.6 against 0.5)
    probs /= probs.sum(1, keepdims=True)
    plain = update_labels(probs, x, min_size=5, seed=0)
    even = update_labels(probs, x, min_size=5, seed=0, balance=3)
    assert np.bincount(plain, minlength=4).tolist() == [80, 20, 50, 50]  # no cluster too small
    assert np.bincount(even, minlength=4).tolist() == [50, 50, 50, 50]
    assert (even == y).all()
