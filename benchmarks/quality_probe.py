"""One fit on a labelled folder with config overrides; prints the per-epoch diagnostics.

    python benchmarks/quality_probe.py FOLDER OUT '{"scl": {"balance": 0}, "optim": {"epochs": 15}}'
    AUGMENT='{"scale": [0.5, 1.0], "flip_p": 0.0}' python benchmarks/quality_probe.py FOLDER OUT
    SMALL_WIDTHS=64,128,256,512 python benchmarks/quality_probe.py FOLDER OUT

FOLDER must hold a labels.csv (path,label) of every image; it is read only to score each epoch.
``AUGMENT`` replaces the views' parameters (both kinds) for crop and flip experiments;
``SMALL_WIDTHS`` the small network's four widths, for capacity experiments. The rows of
docs/benchmarks.md, "Quality experiments", were measured this way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from imgcluster.api import fit
from imgcluster.config import RunConfig
from imgcluster.method import augment, model

COLUMNS = ("acc", "memory_acc", "kmeans_acc", "knn_agreement", "backbone_kmeans_acc",
           "backbone_knn_agreement", "pseudo_label_acc", "feature_spread",
           "largest_cluster_ratio", "label_flips")  # fmt: skip


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    views = json.loads(os.environ.get("AUGMENT") or "{}")
    if views:
        params = augment.AugmentParams(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in views.items()}
        )
        for name in list(augment.AUGMENTATIONS):
            augment.AUGMENTATIONS[name] = params
    widths = os.environ.get("SMALL_WIDTHS")
    if widths:
        model._SMALL_WIDTHS = tuple(int(w) for w in widths.split(","))
        model.FEATURE_DIMS["small"] = model._SMALL_WIDTHS[-1]
    shutil.rmtree(out, ignore_errors=True)
    cfg = RunConfig().replace(data={"source": str(source), "labels": str(source / "labels.csv")})
    start = time.perf_counter()
    result = fit(cfg.replace(**overrides), out, report=False)
    for record in result.history:
        cells = [f"{c}={record[c]:.3f}" if isinstance(record.get(c), float) else
                 f"{c}={record.get(c)}" for c in COLUMNS]  # fmt: skip
        print(record["epoch"], *cells)
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
