"""Clustering quality of ``imgcluster fit`` within a time budget, next to k-means on raw pixels.

Runs the real CLI once per backbone on a labelled folder (``<class>/<image>`` plus labels.csv,
e.g. the CIFAR-10 test split), scores assignments.csv against the labels, and measures k-means on
the raw pixels of the same decoded images in the same run. Prints one JSON line per method and,
with --markdown, a table for docs/benchmarks.md.

    python benchmarks/fit_quality.py DATA/cifar10-test --k 10 --minutes 30 --backbones small \
        --fit-args "--momentum 0.99" --markdown
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from imgcluster.data.cache import build_cache
from imgcluster.data.scan import scan_folder
from imgcluster.method.kmeans import kmeans
from imgcluster.scoring.metrics import score


def read_labels(folder: Path) -> dict[str, str]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row["label"] for row in csv.DictReader(f)}


def pixel_kmeans(folder: Path, k: int, size: int, labels: dict[str, str]) -> dict:
    """k-means (faiss, all points) on the flattened decoded pixels."""
    scan = scan_folder(folder)
    cache = build_cache(folder, scan.paths, size)
    x = np.asarray(cache.images, dtype=np.float32).reshape(len(cache.paths), -1) / 255.0
    start = time.perf_counter()
    clusters, _ = kmeans(x, k, seed=0, nredo=3)
    seconds = time.perf_counter() - start
    s = score(clusters, np.array([labels[p] for p in cache.paths]))
    return {"method": "k-means on pixels", **s.to_dict(), "seconds": round(seconds, 1)}


def fit_once(
    folder: Path, k: int, minutes: float, backbone: str, extra: list[str], keep: Path | None
) -> dict:
    """One CLI fit with a time budget; ACC/NMI/ARI of its assignments.csv."""
    labels = read_labels(folder)
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep or Path(tmp)) / f"run-{backbone}"
        cmd = [sys.executable, "-m", "imgcluster", "fit", str(folder), "--k", str(k), "--out",
               str(out), "--time-budget", str(minutes), "--backbone", backbone, *extra]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(out / "assignments.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    clusters = np.array([int(r["cluster"]) for r in rows])
    classes = np.array([labels[r["path"]] for r in rows])
    s = score(clusters, classes)
    return {
        "method": f"SCL {backbone}",
        **s.to_dict(),
        "epochs": history[-1]["epoch"],
        "images_per_s": round(float(np.median([h["images_per_s"] for h in history])), 1),
        "minutes": round(wall / 60, 1),
        "budget_minutes": minutes,
        "settings": " ".join(extra),
        "label_update_share": round(
            float(np.median([h["label_update_seconds"] / h["seconds"] for h in history])), 3
        ),
    }


def markdown(rows: list[dict], folder: Path) -> str:
    head = (
        f"Data: {folder.name}, {rows[0]['n']} images; {date.today()}; "
        f"{platform.machine()} CPU, {platform.python_version()}\n\n"
        "| method | ACC | NMI | ARI | epochs | train images/s | wall minutes |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['method']} | {r['acc']:.3f} | {r['nmi']:.3f} | {r['ari']:.3f} | "
        f"{r.get('epochs', '-')} | {r.get('images_per_s', '-')} | {r.get('minutes', '-')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--backbones", default="small", help="comma-separated")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the run directories in this folder")
    parser.add_argument("--fit-args", default="", help='more fit options: "--momentum 0.99"')
    args = parser.parse_args()
    labels = read_labels(args.folder)
    rows = [pixel_kmeans(args.folder, args.k, args.size, labels)]
    print(json.dumps(rows[-1]), flush=True)
    for backbone in args.backbones.split(","):
        extra = shlex.split(args.fit_args)
        rows.append(fit_once(args.folder, args.k, args.minutes, backbone, extra, args.keep))
        print(json.dumps(rows[-1]), flush=True)
    if args.markdown:
        print(markdown(rows, args.folder))


if __name__ == "__main__":
    main()
