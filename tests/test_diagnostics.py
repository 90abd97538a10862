"""Per-epoch diagnostics: kNN agreement against a naive loop, closed forms of the spread, and
which scores a record holds with and without the classes."""

from __future__ import annotations

import numpy as np
import pytest

from imgcluster.scoring.diagnostics import epoch_diagnostics, feature_spread, knn_agreement


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(3))
def test_knn_agreement_matches_a_naive_loop(seed: int):
    x = unit_rows(1500, 6, seed)  # over one 1,024-row chunk
    classes = np.random.default_rng(seed).integers(0, 3, size=len(x)).astype(str)
    k = 7
    hits = 0
    for i in range(len(x)):
        sim = x @ x[i]
        sim[i] = -np.inf
        hits += (classes[np.argsort(-sim, kind="stable")[:k]] == classes[i]).sum()
    assert knn_agreement(x, classes, k) == pytest.approx(hits / (len(x) * k), abs=1e-3)


def test_knn_agreement_is_one_for_separated_classes():
    centres = np.eye(4, dtype=np.float32)
    x = np.repeat(centres, 30, axis=0) + 0.01 * unit_rows(120, 4, 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert knn_agreement(x, np.repeat(np.arange(4), 30)) == 1.0


def test_feature_spread_closed_forms():
    one = np.tile(unit_rows(1, 8, 0), (50, 1))
    assert feature_spread(one) == pytest.approx(0.0, abs=1e-6)  # collapsed: one vector
    opposite = np.concatenate([one, -one])
    assert feature_spread(opposite) == pytest.approx(1.0)  # the mean is the origin


def test_record_without_classes_holds_only_label_free_figures():
    x = unit_rows(60, 5, 1)
    probs = np.full((60, 3), 0.1)
    probs[:40, 0] = 0.8  # 40 of 60 in cluster 0: twice the mean size of 20
    probs[40:, 1] = 0.8
    record = epoch_diagnostics(x, probs, None, None, k=3)
    assert set(record) == {"feature_spread", "largest_cluster_ratio", "mean_confidence"}
    assert record["largest_cluster_ratio"] == pytest.approx(2.0)
    assert record["mean_confidence"] == pytest.approx(0.8)


def test_record_with_classes_scores_every_output():
    classes = np.repeat(np.arange(3), 20)
    x = np.repeat(np.eye(3, 5, dtype=np.float32), 20, axis=0)
    right = np.eye(3)[classes] * 0.9 + 0.05
    wrong = np.eye(3)[(classes + 1) % 3] * 0.9 + 0.05  # a renaming: ACC is still 1
    mixed = np.eye(3)[np.arange(60) % 3] * 0.9 + 0.05  # each cluster 7, 7, 6 of the classes
    record = epoch_diagnostics(x, wrong, mixed, classes, k=3)
    assert record["acc"] == record["nmi"] == pytest.approx(1.0)
    assert record["memory_acc"] == pytest.approx(21 / 60)
    assert record["kmeans_acc"] == 1.0
    assert record["knn_agreement"] == pytest.approx(19 / 20)  # 19 others share each class
    assert epoch_diagnostics(x, right, None, classes, k=3)["acc"] == 1.0
