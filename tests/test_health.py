"""The label-free checks of a clustering (imgcluster.scoring.health)."""

from __future__ import annotations

import numpy as np

from imgcluster.scoring.health import check_clusters, confidence_words


def codes(clusters: list[int], confidence: float, k: int) -> list[str]:
    conf = np.full(len(clusters), confidence)
    return [p.code for p in check_clusters(np.array(clusters), conf, k)]


def test_a_balanced_confident_clustering_has_no_problem() -> None:
    assert codes([0, 1, 2, 3] * 25, 0.8, 4) == []


def test_confidence_near_chance() -> None:
    clusters = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 10
    assert codes(clusters, 0.11, 10) == ["chance"]  # 1/k = 0.10
    assert codes(clusters, 0.16, 10) == []  # over 1.5/k


def test_one_cluster_holding_most_images_and_empty_ones() -> None:
    # 200 images all in one cluster at 1/k: the degenerate run of the issue.
    problems = check_clusters(np.zeros(200, dtype=int), np.full(200, 0.1), 10)
    assert [p.code for p in problems] == ["chance", "dominant", "empty"]
    assert "cluster 0 holds 100% of the images (200 of 200)" in problems[1].message
    assert "9 of the 10 clusters are empty" in problems[2].message
    assert problems[2].remedy.endswith("--k 2")


def test_dominance_is_relative_to_the_mean_size() -> None:
    # k = 10, N = 100: more than 3 × 10 images in a cluster.
    assert "dominant" in codes([0] * 31 + list(range(1, 10)) * 7 + [1] * 6, 0.5, 10)
    assert "dominant" not in codes([0] * 30 + list(range(1, 10)) * 7 + [1] * 7, 0.5, 10)
    # k = 2: over 90 % of the images.
    assert codes([0] * 91 + [1] * 9, 0.9, 2) == ["dominant"]
    assert codes([0] * 90 + [1] * 10, 0.9, 2) == []


def test_no_images_no_problem_and_confidence_words() -> None:
    assert check_clusters(np.zeros(0, dtype=int), np.zeros(0), 5) == []
    assert confidence_words(0.62, 10) == "0.62 (6.2× chance, 1/k = 0.10)"
