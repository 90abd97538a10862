"""fit's speed with each start, side by side: the small net from scratch against the packaged
ImageNet network (frozen, trained on its views computed once).

    python benchmarks/fit_speed.py ../shared/data/cifar10-test --epochs 5 --json

For each start ``imgcluster fit FOLDER --init none|imagenet --epochs E --no-report`` runs in a
child process with a fresh, empty decode cache (so the views are computed, not read back), at
each start's default image size. From history.jsonl: the median training images/s over the
epochs (``images_per_s``, one view pair per image), the median label update seconds, and for the
packaged start the views' backbone passes per second (``views_per_s``) and their seconds; the
child's wall time includes decoding, the export and everything else. The two alternate
``--rounds`` times; the best of each is kept. ``assign``'s speed with either model:
benchmarks/assign_speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTS = ("none", "imagenet")


def fit_once(folder: Path, start: str, epochs: int, tmp: Path) -> dict:
    fresh = f"{start}-{time.perf_counter_ns()}"
    env = {**os.environ, "IMGCLUSTER_CACHE_DIR": str(tmp / f"cache-{fresh}")}
    out = tmp / f"run-{fresh}"
    cmd = [sys.executable, "-m", "imgcluster", "fit", str(folder), "--init", start, "--epochs",
           str(epochs), "--no-report", "--out", str(out)]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - began
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    row = {
        "start": start,
        "backbone": config["model"]["backbone"],
        "image_size": config["data"]["image_size"],
        "train_images_per_s": round(statistics.median(r["images_per_s"] for r in history), 1),
        "label_update_seconds": round(
            statistics.median(r["label_update_seconds"] for r in history), 2
        ),
        "wall_seconds": round(wall, 1),
    }
    if "views_per_s" in history[0]:
        row.update(views=history[0]["views"], views_per_s=round(history[0]["views_per_s"], 1),
                   views_seconds=round(history[0]["views_seconds"], 1))  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for start in STARTS:
                row = fit_once(args.folder, start, args.epochs, Path(tmp))
                if start not in best or row["wall_seconds"] < best[start]["wall_seconds"]:
                    best[start] = row
    report = {"folder": args.folder.name, "epochs": args.epochs, "starts": list(best.values())}
    if args.json:
        print(json.dumps(report))
    else:
        for row in best.values():
            print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
