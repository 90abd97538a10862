"""Decode-cache throughput: images/s with 1 and 2 decoders, and the time to reuse.

Usage: python benchmarks/decode_cache.py ../shared/data/cifar10-test --limit 10000 --rounds 5 --json

The files are read once before timing so every build sees a warm OS page cache; each build writes
to its own temporary cache folder, so nothing is reused until the reuse measurement. A round
builds with 1 decoder, then with 2 (this process and one worker process). The first 2-decoder
build pays for starting the workers' server (``speedup_cold``); in the later rounds it is
running, as in ``imgcluster fit`` and ``assign``, which start it while torch or onnxruntime
loads (``speedup``: the median of those rounds). On a shared machine the numbers are noisy.

``--ceiling`` also measures, in each round, what two processes can do on this machine at all:
two idle worker processes each decode half of the files in one ``decode_chunk`` call,
timed inside each, against this process decoding all of them the same way. ``ceiling`` is the
median of one / slower half; ``of_ceiling`` is ``speedup`` over it (1.0: the cache's 2-decoder
build loses nothing to its own bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from imgcluster.data.cache import Stamps, build_cache, decode_chunk, default_image_size
from imgcluster.data.scan import scan_folder
from imgcluster.data.workers import usable_cpus, worker_pool


def _timed_build(
    root: Path, paths: list[str], size: int, folder: Path, workers: int, stamps: Stamps
) -> float:
    """Seconds to build the cache (keyed by the scan's stamps, as ``fit`` does)."""
    start = time.perf_counter()
    result = build_cache(root, paths, size, folder, workers=workers, stamps=stamps)
    elapsed = time.perf_counter() - start
    assert len(result.paths) + len(result.skipped) == len(paths)
    return elapsed


def plain_decode(root: str, paths: list[str], size: int) -> float:
    """Seconds for one ``decode_chunk`` of ``paths`` in this process (no file is written)."""
    start = time.perf_counter()
    decode_chunk(root, paths, 0, size)
    return time.perf_counter() - start


def host_ceiling(root: Path, paths: list[str], size: int, pool) -> float:  # noqa: ANN001
    """One process decoding every file, over the slower of two processes decoding half each."""
    one = plain_decode(str(root), paths, size)
    halves = [paths[: len(paths) // 2], paths[len(paths) // 2 :]]
    futures = [pool.submit(plain_decode, str(root), half, size) for half in halves]
    return one / max(f.result() for f in futures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit", type=int, default=10_000, help="at most this many images")
    parser.add_argument("--size", type=int, default=None, help="image side (default: auto)")
    parser.add_argument("--rounds", type=int, default=3, help="1- and 2-decoder builds each")
    parser.add_argument("--ceiling", action="store_true", help="also measure the host's limit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    scan = scan_folder(args.folder)
    paths = scan.paths[: args.limit]
    size = args.size or default_image_size(args.folder, paths)
    for rel in paths:  # warm the page cache so neither run pays for cold reads
        (args.folder / rel).read_bytes()
    ones, twos, ceilings = [], [], []
    pool = worker_pool(2) if args.ceiling else None
    if pool is not None:  # both processes started and idle before any timing
        list(pool.map(plain_decode, [str(args.folder)] * 2, [paths[:8]] * 2, [size] * 2))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n, times in ((1, ones), (2, twos)):
                folder = Path(tmp) / f"{n}-{r}"
                times.append(_timed_build(args.folder, paths, size, folder, n, scan.stamps))
            if pool is not None:
                ceilings.append(host_ceiling(args.folder, paths, size, pool))
        start = time.perf_counter()
        reused = build_cache(args.folder, paths, size, Path(tmp) / "2-0", stamps=scan.stamps)
        reuse_seconds = time.perf_counter() - start
        assert reused.reused
    ratios = [one / two for one, two in zip(ones, twos)]
    warm = slice(1, None) if args.rounds > 1 else slice(None)
    report = {
        "images": len(paths),
        "cpus": usable_cpus(),
        "size": size,
        "rounds": args.rounds,
        "workers_1_images_per_s": round(len(paths) / statistics.median(ones[warm]), 1),
        "workers_2_images_per_s": round(len(paths) / statistics.median(twos[warm]), 1),
        "speedup": round(statistics.median(ratios[warm]), 3),
        "speedup_cold": round(ratios[0], 3),
        "speedup_per_round": [round(x, 3) for x in ratios],
        "reuse_seconds": round(reuse_seconds, 4),
    }
    if pool is not None:
        pool.shutdown()
        ceiling = statistics.median(ceilings[warm])
        report["ceiling"] = round(ceiling, 3)
        report["of_ceiling"] = round(report["speedup"] / ceiling, 3)
        report["ceiling_per_round"] = [round(x, 3) for x in ceilings]
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name:>24}: {value}")


if __name__ == "__main__":
    main()
