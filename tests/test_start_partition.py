"""Where the clusters start: k-means on a UMAP of the warmed-up features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_moons

from imgcluster.method.start_partition import (
    FEWEST_FOR_UMAP,
    UMAP_DIMENSIONS,
    start_labels,
    start_space,
)
from imgcluster.scoring.metrics import score


@pytest.fixture(scope="module")
def moons() -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved arcs, lifted off the origin so that ℓ2-normalising keeps their shape:
    groups a neighbour graph follows and equal-volume cells (k-means) cut across."""
    x, y = make_moons(400, noise=0.05, random_state=0)
    return np.c_[x, np.full(len(x), 2.0)].astype(np.float32), y


def test_the_neighbour_graph_finds_groups_k_means_cuts(moons) -> None:
    x, truth = moons
    space = start_space(x, seed=0)
    assert space.shape == (len(x), UMAP_DIMENSIONS) and space.dtype == np.float32
    assert score(start_labels(space, 2, seed=0), truth).acc >= 0.98
    rows = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert score(start_labels(rows, 2, seed=0), truth).acc < 0.85  # what the start was


def test_the_start_repeats_with_its_seed(moons) -> None:
    x, _ = moons
    np.testing.assert_array_equal(start_space(x, seed=3), start_space(x, seed=3))


def test_few_images_start_from_the_normalised_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((FEWEST_FOR_UMAP - 1, 5)).astype(np.float32)
    space = start_space(x, seed=0)
    np.testing.assert_allclose(space, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    labels = start_labels(space, 4, seed=0)
    assert labels.shape == (len(x),) and set(labels.tolist()) <= set(range(4))
