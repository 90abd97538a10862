"""Label-free checks of a clustering: the signs that a result is not worth using.

No labels are needed: the checks read only each image's cluster and confidence (its cluster's
probability). Chance is 1/k, the confidence of a model that cannot tell the clusters apart.

- ``chance``: the mean confidence is under 1.5/k: the model barely prefers one cluster;
- ``dominant``: one cluster holds more than 3× the mean cluster size (90 % of the images when
  k ≤ 3), so most images were not sorted at all;
- ``empty``: some clusters hold no image.

``fit`` and ``assign`` print them with a remedy, the report shows them at its top, ``--json``
carries them, and ``--strict`` turns them into a non-zero exit status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CHANCE_FACTOR = 1.5  # a mean confidence under this × 1/k is "near chance"
DOMINANT_FACTOR = 3.0  # a cluster over this × the mean size "holds most images"
DOMINANT_MAX_SHARE = 0.9  # ... or over this share of the images, whichever is lower


@dataclass(frozen=True)
class Problem:
    """One sign of a poor clustering, in words a user can act on."""

    code: str  # "chance", "dominant" or "empty"
    message: str
    remedy: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_clusters(clusters: np.ndarray, confidence: np.ndarray, k: int) -> list[Problem]:
    """The problems of a clustering of N images into k clusters (none for N = 0)."""
    n = len(clusters)
    if n == 0 or k < 2:
        return []
    problems = []
    mean_conf = float(np.mean(confidence))
    if mean_conf < CHANCE_FACTOR / k:
        problems.append(
            Problem(
                "chance",
                f"mean confidence {mean_conf:.2f} is near chance (1/k = {1 / k:.2f}): the model "
                "barely tells the clusters apart",
                "train longer (--time-budget or --epochs), or check that the folder holds "
                "images of different kinds",
            )
        )
    sizes = np.bincount(np.asarray(clusters, dtype=np.int64), minlength=k)
    largest = int(sizes.argmax())
    limit = min(DOMINANT_FACTOR * n / k, DOMINANT_MAX_SHARE * n)
    if sizes[largest] > limit:
        problems.append(
            Problem(
                "dominant",
                f"cluster {largest} holds {sizes[largest] / n:.0%} of the images "
                f"({int(sizes[largest])} of {n})",
                "train longer, or try a smaller --k",
            )
        )
    empty = int((sizes == 0).sum())
    if empty:
        problems.append(
            Problem(
                "empty",
                f"{empty} of the {k} clusters {'is' if empty == 1 else 'are'} empty",
                f"the images may hold fewer groups: try --k {max(2, k - empty)}",
            )
        )
    return problems


def per_cluster(
    clusters: np.ndarray, confidence: np.ndarray, k: int
) -> tuple[list[int], list[float | None]]:
    """Each cluster's size and mean confidence (None when empty), for summaries and --json."""
    sizes = np.bincount(np.asarray(clusters, dtype=np.int64), minlength=k).tolist() if k else []
    means = [round(float(confidence[clusters == c].mean()), 6) if n else None
             for c, n in enumerate(sizes)]  # fmt: skip
    return sizes, means


def confidence_words(confidence: float, k: int) -> str:
    """A confidence against chance, e.g. ``0.62 (6.2× chance, 1/k = 0.10)``."""
    return f"{confidence:.2f} ({confidence * k:.1f}× chance, 1/k = {1 / k:.2f})"
