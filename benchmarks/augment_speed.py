"""Throughput of :func:`imgcluster.method.augment.augment` against a per-image torchvision loop.

Both sides turn the same random uint8 batch ``B×3×S×S`` into normalised float32 views with
the MoCo v2 recipe without blur (RandomResizedCrop, flip, ColorJitter with p=0.8, grayscale);
torchvision must be called once per image to get per-image randomness. Each side is warmed up,
then timed ``--repeats`` times; the median is reported in views per second.

    python benchmarks/augment_speed.py --size 32 --batch 256 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.transforms import v2

try:
    from imgcluster.method.augment import MEAN, STD, AugmentParams, augment
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from imgcluster.method.augment import MEAN, STD, AugmentParams, augment


def _torchvision_pipeline(size: int, p: AugmentParams) -> v2.Compose:
    """The same augmentation as :func:`augment`, as a per-image torchvision v2 pipeline."""
    jitter = v2.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=p.scale, ratio=p.ratio, antialias=True),
            v2.RandomHorizontalFlip(p.flip_p),
            v2.RandomApply([jitter], p=p.jitter_p),
            v2.RandomGrayscale(p.grayscale_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(size: int, batch: int, repeats: int, device: str) -> dict[str, float | int | str]:
    """Views per second of both implementations on one ``batch×3×size×size`` uint8 batch."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ours = _median_seconds(lambda: augment(x, gen), repeats, warmup=3, sync=sync)
    pipeline = _torchvision_pipeline(size, AugmentParams())
    x_cpu = x.cpu()
    # The per-image loop is slow, so fewer repeats keep the benchmark short; still a median.
    tv = _median_seconds(
        lambda: torch.stack([pipeline(img) for img in x_cpu]),
        max(3, repeats // 3),
        warmup=1,
        sync=lambda: None,
    )
    return {
        "size": size,
        "batch": batch,
        "views_per_s": round(batch / ours, 1),
        "torchvision_per_image_views_per_s": round(batch / tv, 1),
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs (median reported)")
    parser.add_argument("--device", default="cpu", help="where our augment runs (cpu, cuda)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args.size, args.batch, args.repeats, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>36}: {value}")


if __name__ == "__main__":
    main()
