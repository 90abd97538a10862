"""Where the clusters start after the warm-up: k-means on a UMAP of the warmed-up embeddings.

The clusters keep much of the partition they start from, so the start decides most of a run on a
frozen pretrained backbone. k-means straight on the ℓ2-normalised embeddings q cuts the sphere
into k equal-volume cells; a uniform manifold approximation (UMAP, McInnes et al. 2018) of the
images' 15-nearest-neighbour graph first pulls the neighbourhoods together into 10 dimensions,
so k-means there follows the groups the neighbours form. Measured with the packaged start
(40 epochs, docs/benchmarks.md "Pretrained start"): MNIST 0.757 → 0.871 ACC, Imagenette
0.935 → 0.950, 1,000 Imagenette photos 0.64–0.76 → 0.72–0.77 over warm-up lengths; CIFAR-10
0.602 → 0.579. docs/method.md, "Warm-up before the clusters start".
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.preprocessing import normalize

from imgcluster.method.kmeans import kmeans

UMAP_DIMENSIONS = 10
UMAP_NEIGHBOURS = 15
# Below this many images the neighbour graph says little and UMAP's spectral layout is
# unstable: k-means on the embeddings themselves.
FEWEST_FOR_UMAP = 100
# k-means restarts: on trained embeddings the partition of lowest inertia was the one closest
# to the classes (CIFAR-10, 12 restarts: the 4 lowest 0.59–0.61 ACC, the rest 0.52–0.58).
START_RESTARTS = 20


def umap_embedding(x: np.ndarray, seed: int) -> np.ndarray:
    """N×d rows (ℓ2-normalised) → N×:data:`UMAP_DIMENSIONS` float32: UMAP with cosine distances
    on the :data:`UMAP_NEIGHBOURS`-nearest-neighbour graph, ``min_dist`` 0 (points of one group
    may coincide, as clustering wants), seeded (and therefore single-threaded: repeatable)."""
    import umap  # imported here: a few seconds (numba), and only the start needs it

    reducer = umap.UMAP(
        n_components=UMAP_DIMENSIONS,
        n_neighbors=UMAP_NEIGHBOURS,
        min_dist=0.0,
        metric="cosine",
        random_state=seed,
    )
    with warnings.catch_warnings():  # "n_jobs overridden by random_state" and the like
        warnings.simplefilter("ignore")
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def start_space(features: np.ndarray, seed: int) -> np.ndarray:
    """N×d warmed-up features → the rows k-means starts the clusters in: their UMAP
    (:func:`umap_embedding` of the ℓ2-normalised rows), or below :data:`FEWEST_FOR_UMAP` images
    the ℓ2-normalised rows themselves."""
    x = normalize(np.asarray(features, dtype=np.float32))
    return umap_embedding(x, seed) if len(x) >= FEWEST_FOR_UMAP else x


def start_labels(space: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """N cluster ids: k-means (:data:`START_RESTARTS` k-means++ restarts, the lowest inertia
    kept) on the rows of :func:`start_space`."""
    labels, _ = kmeans(space, num_clusters, seed=seed, nredo=START_RESTARTS, plusplus=True)
    return labels
