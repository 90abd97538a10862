"""Decode-cache throughput: images/s with 1 and 2 worker processes, and the time to reuse.

Usage: python benchmarks/decode_cache.py ../shared/data/cifar10-test --limit 10000 --json

The files are read once before timing so both runs see a warm OS page cache; each build writes
to its own temporary cache folder, so nothing is reused until the reuse measurement. The
2-worker time includes starting the worker pool. On a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from imgcluster.cache import build_cache, default_image_size
from imgcluster.scan import scan_folder


def _timed_build(root: Path, paths: list[str], size: int, folder: Path, workers: int) -> float:
    start = time.perf_counter()
    result = build_cache(root, paths, size, folder, workers=workers)
    elapsed = time.perf_counter() - start
    assert len(result.paths) + len(result.skipped) == len(paths)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit", type=int, default=10_000, help="at most this many images")
    parser.add_argument("--size", type=int, default=None, help="image side (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    paths = scan_folder(args.folder).paths[: args.limit]
    size = args.size or default_image_size(args.folder, paths)
    for rel in paths:  # warm the page cache so neither run pays for cold reads
        (args.folder / rel).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        one = _timed_build(args.folder, paths, size, Path(tmp) / "w1", workers=1)
        two = _timed_build(args.folder, paths, size, Path(tmp) / "w2", workers=2)
        start = time.perf_counter()
        reused = build_cache(args.folder, paths, size, Path(tmp) / "w2", workers=2)
        reuse_seconds = time.perf_counter() - start
        assert reused.reused
    report = {
        "images": len(paths),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "size": size,
        "workers_1_images_per_s": round(len(paths) / one, 1),
        "workers_2_images_per_s": round(len(paths) / two, 1),
        "speedup": round(one / two, 3),
        "reuse_seconds": round(reuse_seconds, 4),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name:>24}: {value}")


if __name__ == "__main__":
    main()
