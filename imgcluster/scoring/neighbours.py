"""Near-duplicates and outliers, found from the model's embeddings.

- Near-duplicates: images whose embeddings (unit rows, cosine similarity by inner product,
  faiss) are at least :data:`CANDIDATE_SIMILARITY` alike are candidates; a candidate pair counts
  when the images themselves agree too: their 16×16 greyscale thumbnails correlate at
  :data:`PIXEL_CORRELATION` or more (a copy, a resized or re-encoded copy does; two photos of
  the same kind of thing do not). Pairs link into groups (connected components); each group
  is listed most confident first.
- Outliers: in each cluster, the images least like its centre (the normalised mean embedding),
  the ones most likely to be misplaced or odd.

``fit`` writes both as CSV files into the run directory, the report lists them, and
``assign --skip-duplicates`` keeps one image of each group out of the cluster folders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from imgcluster.method.kmeans import cluster_centroids

CANDIDATE_SIMILARITY = 0.9  # embeddings at least this alike are compared pixel by pixel
# Thumbnails correlating this much are the same picture. A resized, JPEG-70 re-encoded copy
# correlates above 0.999; two different 8-px digits drawn alike reach 0.98 (at 0.95 the demo's
# 1,797 digits made 50 groups, one of 414 images chained pair by pair; at 0.99, 13 pairs).
PIXEL_CORRELATION = 0.99
NEIGHBOURS = 10  # candidates looked at per image
THUMB = 16  # side of the greyscale thumbnails compared


def thumbnail(image: np.ndarray) -> np.ndarray:
    """uint8 ``3×S×S`` → zero-mean, unit-norm float ``THUMB²`` greyscale vector."""
    from PIL import Image

    grey = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).convert("L")
    v = np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.BILINEAR), np.float32).ravel()
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def near_duplicates(
    embeddings: np.ndarray,
    image: Callable[[int], np.ndarray | None],
    confidence: np.ndarray | None = None,
) -> list[list[int]]:
    """Groups (of two or more) of row indices of near-identical images.

    ``embeddings``: N×d unit rows; ``image(i)``: image i as uint8 ``3×S×S`` (None when it
    cannot be read: it then joins no group); ``confidence`` orders each group (most first).
    """
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    if n < 2:
        return []
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, min(NEIGHBOURS + 1, n))
    thumbs: dict[int, np.ndarray | None] = {}

    def thumb(i: int) -> np.ndarray | None:
        if i not in thumbs:
            img = image(i)
            thumbs[i] = thumbnail(img) if img is not None else None
        return thumbs[i]

    pairs = []
    for i in range(n):
        for sim, j in zip(sims[i], ids[i], strict=True):
            if j <= i or sim < CANDIDATE_SIMILARITY:
                continue
            a, b = thumb(i), thumb(int(j))
            if a is not None and b is not None and float(a @ b) >= PIXEL_CORRELATION:
                pairs.append((i, int(j)))
    rows, cols = zip(*pairs) if pairs else ((), ())
    linked = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    _, component = connected_components(linked, directed=False)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(component):
        groups.setdefault(int(c), []).append(i)
    order = confidence if confidence is not None else np.zeros(n)
    found = [sorted(g, key=lambda i: (-order[i], i)) for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: g[0])


def outliers(
    embeddings: np.ndarray, clusters: np.ndarray, k: int, per_cluster: int = 5
) -> list[tuple[int, int, float]]:
    """(row, cluster, cosine similarity to its cluster's centre) of the ``per_cluster`` least
    typical images of each cluster of two or more, least typical first."""
    x = np.asarray(embeddings, dtype=np.float32)
    centres = cluster_centroids(x, clusters, k)
    found = []
    for c in range(k):
        members = np.flatnonzero(clusters == c)
        if len(members) < 2:
            continue
        sims = x[members] @ centres[c]
        for r in np.argsort(sims, kind="stable")[:per_cluster]:
            found.append((int(members[r]), c, float(sims[r])))
    return found


def duplicates_rows(groups: Sequence[Sequence[int]], paths: Sequence[str]) -> list[list[str]]:
    """duplicates.csv rows: group number, path (the first of each group is the one kept)."""
    return [[str(g), paths[i]] for g, group in enumerate(groups) for i in group]


def outliers_rows(found: Sequence[tuple[int, int, float]], paths: Sequence[str]) -> list[list]:
    """outliers.csv rows: cluster, path, similarity to the cluster's centre."""
    return [[c, paths[i], f"{s:.4f}"] for i, c, s in found]
