"""k-means (faiss) and the baseline's classifier made of its clusters."""

from __future__ import annotations

import numpy as np

from imgcluster.method.kmeans import centroid_probabilities, kmeans


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 8, dtype=np.float32)
    labels = np.repeat(np.arange(4), 25)
    x = centres[labels] + 0.05 * rng.standard_normal((100, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_kmeans_finds_separated_blobs() -> None:
    x, truth = _blobs()
    labels, centroids = kmeans(x, 4, seed=0, nredo=3)
    assert centroids.shape == (4, 8)
    pairs = set(zip(labels.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == 4  # one cluster per blob


def test_centroid_probabilities_closed_form() -> None:
    x, labels = _blobs()
    probs, centroids = centroid_probabilities(x, labels, 5, temperature=0.1)  # cluster 4 empty
    means = np.stack([x[labels == c].mean(axis=0) for c in range(4)])
    np.testing.assert_allclose(centroids[:4], means / np.linalg.norm(means, axis=1)[:, None],
                               rtol=1e-5)  # fmt: skip
    assert not centroids[4].any()
    logits = x @ centroids.T / 0.1
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(axis=1, keepdims=True), rtol=1e-5)
    assert (probs.argmax(axis=1) == labels).all()
