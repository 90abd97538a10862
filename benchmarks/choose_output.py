"""Would a label-free criterion pick the better partition of a finished, labelled run?

    python benchmarks/choose_output.py RUN [RUN ...]

For each run (with labels.csv, as ``fit --labels`` writes): the head's clusters
(assignments.csv) and four k-means restarts on the model's embeddings (model.onnx), each scored
by neighbour consistency (the share of each image's 20 nearest neighbours, by cosine, in its
cluster; no labels) and by ACC against labels.csv. Printed best consistency first: the criterion
is useful when that order is also the order of ACC (docs/benchmarks.md, row 21).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from imgcluster import rundir as rd
from imgcluster.assigning.onnx_model import OnnxModel
from imgcluster.config import RunConfig
from imgcluster.data.sources import training_images
from imgcluster.method.kmeans import kmeans
from imgcluster.scoring.metrics import cluster_accuracy


def consistency(embeddings: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Share of each image's k nearest neighbours (cosine) that share its cluster."""
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -2.0)
    nearest = np.argpartition(-sims, k, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        cfg = RunConfig.from_dict(rd.read_json(run / rd.CONFIG))
        paths, head, _ = rd.read_assignments(run / rd.ASSIGNMENTS)
        label_of = {r["path"]: r["label"] for r in rd.read_rows(run / rd.LABELS)}
        truth = np.array([label_of[p] for p in paths])
        images = np.asarray(training_images(run, cfg, paths))
        _, embeddings = OnnxModel(run / rd.MODEL)(images)
        candidates = {"head": head}
        for seed in range(4):
            candidates[f"kmeans{seed}"] = kmeans(embeddings, cfg.scl.k or 2, seed=seed)[0]
        rows = sorted(
            ((consistency(embeddings, c), cluster_accuracy(c, truth), name)
             for name, c in candidates.items()),
            reverse=True,
        )  # fmt: skip
        print(run.name, *(f"{n}: consistency {a:.3f} ACC {b:.3f}" for a, b, n in rows), sep="\n  ")


if __name__ == "__main__":
    main()
