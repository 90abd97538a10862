"""Training throughput of a bare MoCo step for one backbone, on random ready-made tensors.

One step = online encoder forward + backward on view 1, momentum encoder forward on view 2
under ``no_grad``, an InfoNCE loss against the batch's own keys, an SGD step and the momentum
update -- the network cost of SCL's training loop without data loading or memory banks.
Reports images per second (``batch / median step time``; each image is seen as two views), and
the same for the fastest step.

    python benchmarks/backbone_speed.py --backbone small --size 32 --batch 128 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from imgcluster.method.model import (
        Encoder,
        count_parameters,
        make_momentum_copy,
        momentum_update,
    )
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from imgcluster.method.model import (
        Encoder,
        count_parameters,
        make_momentum_copy,
        momentum_update,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="small")
    p.add_argument("--size", type=int, default=32, help="image side S in pixels")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(args: argparse.Namespace) -> list[float]:
    """Seconds per timed step, after ``args.warmup`` untimed ones."""
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    enc = Encoder(args.backbone).to(device, memory_format=fmt)
    key = make_momentum_copy(enc)
    opt = torch.optim.SGD(enc.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)
    shape = (args.batch, 3, args.size, args.size)
    v1 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    v2 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    labels = torch.arange(args.batch, device=device)
    times: list[float] = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        q = enc(v1)
        with torch.no_grad():
            k = key(v2)
        loss = F.cross_entropy(q @ k.t() / 0.1, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        momentum_update(enc, key, 0.9)
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    times = time_steps(args)
    step = statistics.median(times)
    result = {
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
        "channels_last": args.channels_last,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "params": count_parameters(Encoder(args.backbone).backbone),
        "step_s": round(step, 4),
        "images_per_s": round(args.batch / step, 1),
        # Fastest step: less sensitive than the median to other processes on a shared CPU.
        "best_images_per_s": round(args.batch / min(times), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>14}: {value}")


if __name__ == "__main__":
    main()
