"""k-means with faiss: the one home of clustering by centroids.

Used for the 2-means split of merge-and-split (ODC), the "MoCo + k-means" baseline of the paper's
Table 2, and the raw-pixel baseline of the benchmarks. faiss trains on only
``max_points_per_centroid · k`` points by default; we raise that limit so every point counts.
With faiss-gpu installed (the ``gpu`` extra) and a GPU visible, faiss trains on the GPUs.
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import normalize


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 1,
    plusplus: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on the rows of ``x``, the best (lowest inertia) of ``nredo`` runs.

    x: N×d (any float dtype; copied to contiguous float32) → (labels N int64, centroids k×d).
    faiss starts each run from k random points; ``plusplus`` starts it from k-means++ seeds
    (Arthur & Vassilvitskii 2007, scikit-learn's ``kmeans_plusplus``) instead, which finds k
    equal, well-separated groups where random starts often leave two centroids in one group.
    """
    import faiss  # imported here: ~1 s, and only training paths need it

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {n} points")
    runs = [(seed, None)]
    if plusplus:
        from sklearn.cluster import kmeans_plusplus

        runs = [(seed + r, kmeans_plusplus(x, k, random_state=seed + r)[0]) for r in range(nredo)]
    best = None
    for run_seed, start in runs:
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            nredo=1 if plusplus else nredo,
            seed=run_seed,
            verbose=False,
            max_points_per_centroid=max(256, -(-n // k)),
            min_points_per_centroid=1,
            gpu=_gpus(faiss),
        )
        km.train(x, init_centroids=None if start is None else np.ascontiguousarray(start))
        if best is None or km.obj[-1] < best.obj[-1]:
            best = km
    assert best is not None
    _, assigned = best.index.search(x, 1)
    return assigned[:, 0].astype(np.int64), np.asarray(best.centroids)


def cluster_centroids(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The l2-normalised mean of each cluster's features, ``k×d`` (a zero row when empty)."""
    features = np.asarray(features, dtype=np.float32)
    sums = np.zeros((k, features.shape[1]), dtype=np.float32)
    np.add.at(sums, np.asarray(labels, dtype=np.int64), features)
    return normalize(sums)


def centroid_probabilities(
    features: np.ndarray, labels: np.ndarray, k: int, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """The k-means step as a classifier, for the MoCo + k-means baseline.

    Centroids: :func:`cluster_centroids` of the unit features. Probabilities:
    ``softmax(features · centroidsᵀ / τ)``, ``N×k``. Returns (probabilities, centroids);
    ``export`` puts the same centroids into model.onnx.
    """
    from scipy.special import softmax

    centroids = cluster_centroids(features, labels, k)
    logits = np.asarray(features, dtype=np.float32) @ centroids.T / temperature
    return softmax(logits, axis=1), centroids


def _gpus(faiss: object) -> int:
    """GPUs faiss can use: 0 for faiss-cpu, which lacks ``get_num_gpus`` or reports none."""
    count = getattr(faiss, "get_num_gpus", None)
    return int(count()) if count is not None else 0
