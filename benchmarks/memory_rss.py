"""Peak resident memory of ``imgcluster fit`` for growing numbers of images.

For each ``--sizes`` N, N images evenly spaced over FOLDER's sorted list are copied into a
temporary folder and ``imgcluster fit`` runs on it in a child process (``--epochs 1 --backbone
small --no-report`` by default, its decode cache in a temporary folder). The child's peak RSS is
``/usr/bin/time -v``'s "Maximum resident set size" (without it, ``getrusage(RUSAGE_CHILDREN)``);
the memory-mapped cache's size (N×3×S×S bytes) is reported beside it, so one can see whether
the growth with N is only the cache's pages.

    python benchmarks/memory_rss.py data/cifar10-test --sizes 2000 10000 --json
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgcluster.data.scan import scan_folder

TIME = "/usr/bin/time"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10_000])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--fit-args", default="--epochs 1 --backbone small --no-report --k 10")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args(argv)


def _run_peak_kib(cmd: list[str]) -> int:
    """Run ``cmd``; its peak RSS in KiB (the largest single process of its tree).

    ``/usr/bin/time -v`` where it exists; otherwise ``getrusage(RUSAGE_CHILDREN)``, whose
    maximum covers every child so far (hence the sizes run in increasing order).
    """
    if Path(TIME).exists():
        done = subprocess.run(
            [TIME, "-v", *cmd],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        assert match, done.stderr[-2000:]
        return int(match.group(1))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux


def peak_rss_of_fit(folder: Path, paths: list[str], args: argparse.Namespace) -> dict:
    """Copy ``paths`` into a temporary folder, fit on it in a child; its peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "images"
        for rel in paths:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / rel, src / rel)
        cmd = [sys.executable, "-m", "imgcluster", "fit", str(src), "--out", f"{tmp}/run"]
        cmd += ["--cache-dir", f"{tmp}/cache", "--image-size", str(args.image_size)]
        cmd += args.fit_args.split()
        start = time.perf_counter()
        peak = _run_peak_kib(cmd)
        seconds = time.perf_counter() - start
    cache_mib = len(paths) * 3 * args.image_size**2 / 2**20
    return {
        "images": len(paths),
        "peak_rss_mib": round(peak / 1024, 1),
        "cache_mib": round(cache_mib, 1),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = scan_folder(args.folder).paths
    runs = []
    for n in sorted(args.sizes):
        n = min(n, len(paths))  # evenly spaced: every class folder, not the first few
        runs.append(
            peak_rss_of_fit(args.folder, [paths[i * len(paths) // n] for i in range(n)], args)
        )
    result: dict = {"fit_args": args.fit_args, "runs": runs}
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        result["rss_growth_mib"] = round(last["peak_rss_mib"] - first["peak_rss_mib"], 1)
        result["cache_growth_mib"] = round(last["cache_mib"] - first["cache_mib"], 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
