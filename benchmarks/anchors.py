"""The anchors a trained run must beat: k-means (and UMAP + k-means) on a network's frozen
features, or on the pixels, of a labelled folder.

    python benchmarks/anchors.py ../shared/data/cifar10-test --size 96 --json
    python benchmarks/anchors.py ../shared/data/mnist-test --features pixels --size 28
    python benchmarks/anchors.py FOLDER --limit 300 --seeds 1 --no-umap --json
    python benchmarks/anchors.py ../shared/data/mnist-test --size 96 --seeds 1 --k-scan

``--features``: ``efficientnet_lite0`` / ``efficientnet_lite2`` (the packaged ImageNet
weights, pooled 1,280-d features of the plain view, exactly what ``fit``'s default start
begins from, rows l2-normalised) or ``pixels`` (the decoded S×S image, centred per image and
l2-normalised). Images are decoded as ``fit`` decodes them (the decode cache, side ``--size``).
k-means: faiss, 10 k-means++ restarts, the lowest inertia kept, one run per seed; the table
gives the mean over ``--seeds`` and each seed's ACC. UMAP (10 dimensions, 15 neighbours, cosine
metric; needs ``pip install umap-learn``, skipped without it) runs once per seed before the same
k-means. The folder needs a labels.csv (path,label); k is its number of classes.

``--k-scan``: how ``--k auto``'s criteria would choose in the space the clusters start in
(``start_partition.start_space``: a UMAP of 3,000 sampled features, as the start computes it):
the k each of the silhouette, Davies–Bouldin and Calinski–Harabasz prefers among k-means
partitions (best of 5) for k = 2..``--k-max``, each score per k, and HDBSCAN's number of
clusters at minimum cluster sizes of 1 %, 2 % and 3.3 % of the sample.

``--tap``: which of the network's features: ``head`` (the pooled 1,280-d features above),
``N`` (block N's output, average-pooled: blocks 14 and 15 are Lite0's last two stages) or
``head+N`` (both, each l2-normalised, side by side). Every report also gives how well the
features' neighbourhoods follow the classes (``knn20``: the share of each image's 20 nearest
neighbours, cosine, that share its class), and ``--probe`` a linear probe (logistic regression,
3-fold cross-validation on at most 4,000 images): a supervised bound on what the features
separate, not a clustering.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    import imgcluster  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcluster.data.cache import build_cache
from imgcluster.data.scan import scan_folder
from imgcluster.data.sources import known_classes
from imgcluster.method.kmeans import kmeans
from imgcluster.scoring.diagnostics import knn_agreement
from imgcluster.scoring.metrics import score


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="labelled image folder (with labels.csv)")
    p.add_argument("--features", default="efficientnet_lite0",
                   choices=("efficientnet_lite0", "efficientnet_lite2", "pixels"))  # fmt: skip
    p.add_argument("--size", type=int, default=96, help="image side S (as fit --image-size)")
    p.add_argument("--tap", default="head", type=tap_spec,
                   help="head, N or head+N (block N's pooled output)")  # fmt: skip
    p.add_argument("--probe", action="store_true", help="also a linear probe (uses the labels)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-umap", action="store_true", help="k-means only")
    p.add_argument("--k-scan", action="store_true", help="criteria for k on the start's UMAP")
    p.add_argument("--k-max", type=int, default=30, help="largest k of --k-scan")
    p.add_argument("--save", type=Path, default=None,
                   help="write the features and classes to this .npz (benchmarks/k_auto.py "
                   "score reads it)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def tap_spec(text: str) -> str:
    """``--tap``'s form, checked before any image is decoded (the block's range once the
    network is built)."""
    parts = text.split("+")
    numbers = [part for part in parts if part != "head"]
    if len(parts) > 2 or parts.count("head") > 1 or not all(n.isdigit() for n in numbers):
        raise argparse.ArgumentTypeError(f"expected head, N or head+N, got {text!r}")
    return text


def frozen_features(
    images: np.ndarray, name: str, batch: int = 64, tap: str = "head"
) -> np.ndarray:
    """Pooled features of the packaged ImageNet network: N×1280 for ``tap="head"``; block N's
    pooled output for ``"N"``; both, each l2-normalised, for ``"head+N"``."""
    import torch
    import torch.nn.functional as F

    from imgcluster.method.augment import preprocess
    from imgcluster.method.model import build_backbone
    from imgcluster.method.pretrained import load_start

    net = build_backbone(name)
    state, _ = load_start(net, "imagenet", name)
    net.load_state_dict(state)
    net = net.eval().to(memory_format=torch.channels_last)
    parts = tap.split("+")
    blocks = [int(part) for part in tap_spec(tap).split("+") if part != "head"]
    if any(b >= len(net._blocks) for b in blocks):
        raise SystemExit(f"--tap {tap}: this network's blocks are 0 to {len(net._blocks) - 1}")
    tapped: dict[int, list[np.ndarray]] = {b: [] for b in blocks}
    hooks = [net._blocks[b].register_forward_hook(
        lambda _m, _i, y, b=b: tapped[b].append(F.adaptive_avg_pool2d(y, 1).flatten(1).numpy()))
        for b in blocks]  # fmt: skip
    head = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = preprocess(torch.from_numpy(np.array(images[i : i + batch])))
            head.append(net(x.contiguous(memory_format=torch.channels_last)).numpy())
    for hook in hooks:
        hook.remove()
    chosen = [np.concatenate(head)] if "head" in parts else []
    chosen += [np.concatenate(tapped[b]) for b in blocks]
    return np.hstack([unit_rows(c) for c in chosen]) if len(chosen) > 1 else chosen[0]


def pixel_features(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return x - x.mean(axis=1, keepdims=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def linear_probe(x: np.ndarray, classes: np.ndarray, limit: int = 4000) -> float:
    """3-fold cross-validated accuracy of a logistic regression on (at most ``limit``) rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rows = np.random.default_rng(0).permutation(len(x))[:limit]
    probe = LogisticRegression(C=10.0, max_iter=300)
    return float(cross_val_score(probe, x[rows], np.asarray(classes)[rows], cv=3).mean())


def clustered(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    labels, _ = kmeans(x, k, seed=seed, nredo=10, plusplus=True)
    return labels


def k_scan(x: np.ndarray, k_max: int, seed: int = 0, sample: int = 3000) -> dict:
    """Each criterion's k, and its score per k, on the start's UMAP of ``sample`` rows."""
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    from imgcluster.method.start_partition import start_space

    rows = np.random.default_rng(seed).permutation(len(x))[:sample]
    space = start_space(x[np.sort(rows)], seed)
    ks = list(range(2, min(k_max, len(space) - 1) + 1))
    scores: dict[str, list[float]] = {"silhouette": [], "davies_bouldin": [],
                                      "calinski_harabasz": []}  # fmt: skip
    for k in ks:
        labels, _ = kmeans(space, k, seed=seed, nredo=5, plusplus=True)
        scores["silhouette"].append(float(silhouette_score(space, labels)))
        scores["davies_bouldin"].append(float(davies_bouldin_score(space, labels)))
        scores["calinski_harabasz"].append(float(calinski_harabasz_score(space, labels)))
    picks = {name: ks[int(np.argmin(v) if name == "davies_bouldin" else np.argmax(v))]
             for name, v in scores.items()}  # fmt: skip
    hdbscan = {}
    for share in (0.01, 0.02, 0.033):
        size = max(5, round(share * len(space)))
        found = HDBSCAN(min_cluster_size=size).fit(space).labels_
        hdbscan[size] = int(found.max() + 1)
    rounded = {name: [round(v, 3) for v in values] for name, values in scores.items()}
    return {"images": len(space), "ks": ks, "picks": picks, "hdbscan_clusters": hdbscan,
            "scores": rounded}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = scan_folder(args.folder).paths[: args.limit]
    cache = build_cache(args.folder, paths, args.size)
    classes = known_classes(cache.paths, args.folder / "labels.csv", args.folder)
    k = len(np.unique(classes))
    began = time.perf_counter()
    if args.features == "pixels":
        x = unit_rows(pixel_features(cache.images))
    else:
        x = unit_rows(frozen_features(cache.images, args.features, tap=args.tap))
    seconds = time.perf_counter() - began
    if args.save is not None:
        np.savez(args.save, backbone=x, classes=classes)
    rows = {"kmeans": [score(clustered(x, k, s), classes) for s in range(args.seeds)]}
    umap_note = None
    if not args.no_umap:
        try:
            import umap
        except ImportError:
            umap_note = "umap-learn not installed"
        else:
            rows["umap_kmeans"] = []
            for s in range(args.seeds):
                low = umap.UMAP(n_components=10, n_neighbors=15, metric="cosine",
                                random_state=s).fit_transform(x)  # fmt: skip
                rows["umap_kmeans"].append(score(clustered(low, k, s), classes))
    report: dict = {"folder": args.folder.name, "images": len(x), "k": k,
                    "features": args.features, "size": args.size,
                    "tap": args.tap if args.features != "pixels" else None,
                    "feature_seconds": round(seconds, 1),
                    "knn20": round(knn_agreement(x, classes), 4)}  # fmt: skip
    if args.probe:
        report["linear_probe"] = round(linear_probe(x, classes), 4)
    for name, scores in rows.items():
        report[name] = {
            "acc": round(float(np.mean([s.acc for s in scores])), 4),
            "nmi": round(float(np.mean([s.nmi for s in scores])), 4),
            "ari": round(float(np.mean([s.ari for s in scores])), 4),
            "acc_per_seed": [round(s.acc, 4) for s in scores],
        }
    if umap_note:
        report["umap_kmeans"] = umap_note
    if args.k_scan:
        report["k_scan"] = k_scan(x, args.k_max)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
