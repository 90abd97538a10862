"""Per-epoch diagnostics of a run whose classes are known: which of the method's outputs is good.

When the true classes are known (a benchmark set, or ``fit --labels``, read only for this), every
epoch's record in history.jsonl says how well each candidate output of the model agrees with them:

- ``acc``/``nmi``/``ari``: the 'clustering' head's argmax (Eq. 4's p), the output ``assign`` uses;
- ``memory_acc``: the argmax of the memory's soft assignment p̃ (Eq. 3);
- ``kmeans_acc``: k-means (faiss) on the encoder's features, as the MoCo + k-means baseline;
- ``knn_agreement``: the share of each image's 20 nearest neighbours (cosine) that share its
  class, a label-free clustering's ceiling on how separable the features are;
- ``backbone_kmeans_acc`` / ``backbone_knn_agreement``: the same two on the backbone's pooled
  features (before the projection MLP), when given.

And, needing no labels, how collapsed the features are (``feature_spread`` = 1 − ‖mean of the
unit features‖², 0 when every image maps to one vector) and how unbalanced the head's clusters are
(``largest_cluster_ratio`` = largest size over N/k). No label ever reaches training: these numbers
are written, never read back by the method.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import normalize

from imgcluster.method.kmeans import kmeans
from imgcluster.scoring.metrics import cluster_accuracy, score

KNN_NEIGHBOURS = 20


def knn_agreement(
    features: np.ndarray,
    classes: np.ndarray,
    k: int = KNN_NEIGHBOURS,
    device: torch.device | str = "cpu",
) -> float:
    """Mean share of each row's k nearest other rows (cosine) that have its class.

    features: N×d, l2-normalised; classes: N labels of any type → a float in [0, 1]. Computed
    on ``device``: its N×N similarities grow with the square of the set, so a GPU run scores
    them on its GPU rather than on the host's cores.
    """
    _, codes = np.unique(classes, return_inverse=True)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    y = torch.from_numpy(codes.astype(np.int64)).to(device)
    k = min(k, len(x) - 1)
    hits = 0.0
    for start in range(0, len(x), 1024):  # N×N similarities, 1,024 rows at a time
        sim = x[start : start + 1024] @ x.T
        rows = torch.arange(start, min(start + 1024, len(x)), device=x.device)
        sim[torch.arange(len(rows), device=x.device), rows] = -float("inf")  # not its own
        nearest = sim.topk(k, dim=1).indices
        hits += float((y[nearest] == y[rows, None]).float().sum())
    return hits / (len(x) * k)


def feature_spread(features: np.ndarray) -> float:
    """1 − ‖mean of the unit rows‖²: 0 when all rows are one vector, ~1 when spread evenly."""
    mean = features.astype(np.float64).mean(axis=0)
    return float(1.0 - mean @ mean)


def epoch_diagnostics(
    features: np.ndarray,
    head_probs: np.ndarray | None,
    memory_probs: np.ndarray | None,
    classes: np.ndarray | None,
    k: int,
    seed: int = 0,
    backbone: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The diagnostics of one epoch (see the module docstring); label-free ones when ``classes``
    is None. features: N×d unit rows; head_probs, memory_probs: N×k or None; backbone: N×D
    pooled backbone features or None; ``device``: where the kNN agreement runs."""
    record: dict[str, Any] = {"feature_spread": feature_spread(features)}
    if head_probs is not None:
        sizes = np.bincount(head_probs.argmax(axis=1), minlength=head_probs.shape[1])
        record["largest_cluster_ratio"] = float(sizes.max() * len(sizes) / len(features))
        record["mean_confidence"] = float(head_probs.max(axis=1).mean())
    if classes is None:
        return record
    if head_probs is not None:
        s = score(head_probs.argmax(axis=1), classes)
        record.update(acc=s.acc, nmi=s.nmi, ari=s.ari)
    if memory_probs is not None:
        record["memory_acc"] = cluster_accuracy(memory_probs.argmax(axis=1), classes)
    clusters, _ = kmeans(features, k, seed=seed)
    record["kmeans_acc"] = cluster_accuracy(clusters, classes)
    record["knn_agreement"] = knn_agreement(features, classes, device=device)
    if backbone is not None:
        unit = normalize(np.asarray(backbone, dtype=np.float32))
        clusters, _ = kmeans(unit, k, seed=seed)
        record["backbone_kmeans_acc"] = cluster_accuracy(clusters, classes)
        record["backbone_knn_agreement"] = knn_agreement(unit, classes, device=device)
    return record
