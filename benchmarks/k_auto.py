"""How well ``fit --k auto`` finds the number of classes: each criterion's pick, per set.

    python benchmarks/k_auto.py features FOLDER OUT.npz MINUTES [SEED]
    python benchmarks/k_auto.py score OUT.npz [OUT2.npz ...] [--k-max 30] [--classes 0,1,2]

``features`` trains the features alone (instance discrimination, the first phase of
``--k auto``) on FOLDER for MINUTES of a 2-core CPU and saves them with the classes of
FOLDER/labels.csv (read only to score). ``score`` runs :func:`estimate_k` on saved features and
prints every criterion's k next to the number of classes; ``--classes`` keeps only the images of
those classes (their labels as saved). The "Choosing k" rows of docs/benchmarks.md were measured
this way; ``benchmarks/anchors.py --save OUT.npz`` saves a pretrained network's frozen features
for it (score them with ``FEATURES=backbone``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = os.environ.get("FEATURES", "features")  # or "backbone": before the projection MLP


def features(folder: Path, out: Path, minutes: float, seed: int) -> None:
    import torch

    from imgcluster.config import RunConfig, resolve
    from imgcluster.data import sources
    from imgcluster.events import silent
    from imgcluster.train.trainer import Trainer, fitted_to_images, train_epochs

    cfg = RunConfig().replace(
        data={"source": str(folder)},
        scl={"k": 2, "method": "moco-kmeans"},
        optim={"time_budget_minutes": minutes, "seed": seed},
    )
    cfg = resolve(cfg)
    images = sources.load(cfg, [], silent)
    cfg = fitted_to_images(images.config(cfg), images.cache.images)
    classes = sources.known_classes(images.cache.paths, folder / "labels.csv", images.root)
    trainer = Trainer(cfg, images.cache, torch.device("cpu"))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_epochs(trainer, Path(tmp), [], silent, minutes * 60.0, save=False)
    feats = trainer.last_predictions.features  # type: ignore[union-attr]
    np.savez(out, features=feats, classes=classes, backbone=backbone_features(trainer, images))
    print(f"{folder.name}: {len(feats)} images, {trainer.epoch} epochs, "
          f"{time.perf_counter() - began:.0f} s")  # fmt: skip


def backbone_features(trainer, images) -> np.ndarray:  # noqa: ANN001
    """The pooled backbone features (before the projection MLP) of every image, N×D."""
    import torch

    from imgcluster.method.augment import preprocess

    encoder = trainer.model.encoder.eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(images.cache.paths), 256):
            x = torch.from_numpy(np.asarray(images.cache.images[i : i + 256]))
            rows.append(encoder.features(preprocess(x)).numpy())
    return np.concatenate(rows)


def score(files: list[Path], k_max: int, keep: list[str] | None = None) -> None:
    from imgcluster.method.k_estimate import CRITERIA, estimate_k
    from imgcluster.method.kmeans import kmeans
    from imgcluster.scoring.metrics import score as scores

    print("set", "classes", *CRITERIA, "seconds", "kmeans_acc_true_k", sep=" | ")
    for f in files:
        data = np.load(f)
        x, classes = data[FEATURES], data["classes"]
        if keep is not None:
            rows = np.isin(classes.astype(str), keep)
            x, classes = x[rows], classes[rows]
        true_k = len(np.unique(classes))
        began = time.perf_counter()
        choice = estimate_k(x, min(k_max, len(x) // 2))
        took = time.perf_counter() - began
        labels, _ = kmeans(x, true_k, nredo=3)
        acc = scores(labels, classes).acc
        picks = [str(choice.picks[c]) for c in CRITERIA]
        print(f.stem, true_k, *picks, f"{took:.1f}", f"{acc:.3f}", sep=" | ")


def main() -> None:
    if sys.argv[1] == "features":
        seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        features(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), seed)
    else:
        args = sys.argv[2:]
        k_max = 30
        if "--k-max" in args:
            i = args.index("--k-max")
            k_max = int(args[i + 1])
            args = args[:i] + args[i + 2 :]
        keep = None
        if "--classes" in args:
            i = args.index("--classes")
            keep = args[i + 1].split(",")
            args = args[:i] + args[i + 2 :]
        score([Path(a) for a in args], k_max, keep)


if __name__ == "__main__":
    main()
