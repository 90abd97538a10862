"""Clustering metrics of the paper's protocol: ACC (Hungarian matching), NMI and ARI.

ACC maps clusters one-to-one to classes with scipy's ``linear_sum_assignment`` on the
contingency table; cluster and class counts may differ (unmatched clusters count as errors).
NMI and ARI are scikit-learn's and need no matching. :func:`confusion` gives the same table with
its rows in the order of the Hungarian match, for plots and per-cluster summaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values and their integer codes (labels may be strings)."""
    uniques, codes = np.unique(np.asarray(values), return_inverse=True)
    return uniques, codes.ravel()


def contingency(clusters: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Counts table: rows are clusters, columns classes (both in sorted order of their ids)."""
    _, c = _codes(clusters)
    _, y = _codes(classes)
    table = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return table


def hungarian_match(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one matching that maximises the matched count."""
    return linear_sum_assignment(table, maximize=True)


def cluster_accuracy(clusters: np.ndarray, classes: np.ndarray) -> float:
    """ACC: fraction of images whose cluster's Hungarian-matched class is their class."""
    table = contingency(clusters, classes)
    rows, cols = hungarian_match(table)
    return float(table[rows, cols].sum() / table.sum())


@dataclass(frozen=True)
class Scores:
    """ACC, NMI and ARI of one clustering against reference labels."""

    acc: float
    nmi: float
    ari: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(clusters: np.ndarray, classes: np.ndarray) -> Scores:
    """All three metrics (clusters and classes: N each, any hashable ids)."""
    clusters, classes = np.asarray(clusters), np.asarray(classes)
    if clusters.shape != classes.shape or clusters.ndim != 1 or clusters.size == 0:
        raise ValueError(
            f"need two equal-length non-empty label vectors, got {clusters.shape} and "
            f"{classes.shape}"
        )
    return Scores(
        acc=cluster_accuracy(clusters, classes),
        nmi=float(normalized_mutual_info_score(classes, clusters)),
        ari=float(adjusted_rand_score(classes, clusters)),
        n=int(clusters.size),
    )


@dataclass(frozen=True)
class Confusion:
    """Clusters × classes counts, rows ordered by the Hungarian match.

    Row ``r`` is cluster ``clusters[r]``; column ``j`` is class ``classes[j]`` (sorted ids).
    ``matched[r]`` is the column matched one-to-one to row ``r``, or -1: the matched rows come
    first in the order of their classes, then unmatched clusters (when there are more clusters
    than classes) from largest to smallest.
    """

    table: np.ndarray
    clusters: np.ndarray
    classes: np.ndarray
    matched: np.ndarray

    def majority(self) -> np.ndarray:
        """Column of each row's most frequent class."""
        return self.table.argmax(axis=1)

    def purity(self) -> np.ndarray:
        """Share of each row's images that belong to its most frequent class."""
        return self.table.max(axis=1) / np.maximum(self.table.sum(axis=1), 1)


def confusion(clusters: np.ndarray, classes: np.ndarray) -> Confusion:
    """The contingency table of ``clusters`` against ``classes`` in Hungarian-match order."""
    cluster_ids, _ = _codes(clusters)
    class_ids, _ = _codes(classes)
    table = contingency(clusters, classes)
    rows, cols = hungarian_match(table)
    matched = np.full(len(cluster_ids), -1, dtype=np.int64)
    matched[rows] = cols
    unmatched = np.flatnonzero(matched < 0)
    unmatched = unmatched[np.argsort(-table[unmatched].sum(axis=1), kind="stable")]
    order = np.concatenate([rows[np.argsort(cols)], unmatched])
    return Confusion(table[order], cluster_ids[order], class_ids, matched[order])
