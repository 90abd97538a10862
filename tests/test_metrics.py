"""ACC / NMI / ARI: invariances, perfect scores, agreement with a brute-force ACC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from imgcluster.scoring.metrics import cluster_accuracy, confusion, contingency, score


def brute_force_acc(clusters: np.ndarray, classes: np.ndarray) -> float:
    """Best one-to-one mapping by trying every permutation (small cases only)."""
    cs, ys = np.unique(clusters), np.unique(classes)
    best = 0
    size = max(len(cs), len(ys))
    for perm in itertools.permutations(range(size), len(cs)):
        hits = sum(
            int(((clusters == c) & (classes == ys[p])).sum())
            for c, p in zip(cs, perm)
            if p < len(ys)
        )
        best = max(best, hits)
    return best / len(clusters)


@pytest.mark.parametrize("seed", range(6))
def test_acc_equals_brute_force_and_sklearn_scores(seed):
    rng = np.random.default_rng(seed)
    k, classes = rng.integers(2, 6), rng.integers(2, 6)
    y = rng.integers(0, classes, 60)
    c = rng.integers(0, k, 60)
    s = score(c, y)
    assert s.acc == pytest.approx(brute_force_acc(c, y))
    assert s.nmi == pytest.approx(normalized_mutual_info_score(y, c))
    assert s.ari == pytest.approx(adjusted_rand_score(y, c))


def test_permuting_cluster_ids_changes_nothing():
    rng = np.random.default_rng(1)
    y, c = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
    perm = rng.permutation(5)
    assert score(perm[c], y) == score(c, y)


def test_perfect_clustering_scores_one_even_with_string_classes():
    y = np.array(["cat", "dog", "cat", "bird", "dog", "bird"])
    c = np.array([7, 2, 7, 0, 2, 0])
    s = score(c, y)
    assert (s.acc, s.nmi, s.ari) == (1.0, 1.0, 1.0)


def test_more_clusters_than_classes():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    c = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    assert cluster_accuracy(c, y) == pytest.approx(5 / 8)
    assert contingency(c, y).shape == (4, 2)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        score(np.array([1, 2]), np.array([1]))


def test_fewer_clusters_than_classes():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    c = np.array([5, 5, 5, 5, 9, 9, 9])
    assert cluster_accuracy(c, y) == pytest.approx(5 / 7)
    assert score(c, y).acc == pytest.approx(brute_force_acc(c, y))


@pytest.mark.parametrize("seed", range(4))
def test_scores_ignore_the_names_of_clusters_and_classes(seed):
    rng = np.random.default_rng(seed)
    y, c = rng.integers(0, 6, 300), rng.integers(0, 4, 300)
    names = np.array(["a", "b", "c", "d", "e", "f"])[rng.permutation(6)]
    renamed, plain = score(c + 100, names[y]), score(c, y)
    assert renamed.to_dict() == pytest.approx(plain.to_dict(), abs=1e-12)


def test_confusion_rows_follow_the_hungarian_match():
    # cluster 7 is class "b", cluster 3 is class "a", cluster 5 is left over (3 clusters, 2 classes)
    c = np.array([7, 7, 7, 3, 3, 5, 5, 7])
    y = np.array(["b", "b", "b", "a", "a", "a", "b", "a"])
    t = confusion(c, y)
    assert t.classes.tolist() == ["a", "b"]
    assert t.clusters.tolist() == [3, 7, 5]
    assert t.matched.tolist() == [0, 1, -1]
    assert t.table.tolist() == [[2, 0], [1, 3], [1, 1]]
    assert t.majority().tolist() == [0, 1, 0]
    assert t.purity().tolist() == pytest.approx([1.0, 0.75, 0.5])


@pytest.mark.parametrize("seed", range(4))
def test_confusion_diagonal_is_the_acc(seed):
    rng = np.random.default_rng(seed)
    y, c = rng.integers(0, rng.integers(2, 7), 200), rng.integers(0, rng.integers(2, 7), 200)
    t = confusion(c, y)
    rows = np.flatnonzero(t.matched >= 0)
    assert t.table[rows, t.matched[rows]].sum() / 200 == pytest.approx(cluster_accuracy(c, y))
    assert t.table.sum() == 200 and sorted(t.clusters.tolist()) == sorted(set(c.tolist()))
