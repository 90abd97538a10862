"""Trainer overhead: the real SCL training step against the bare network step, side by side.

``trainer``: :func:`imgcluster.train.step.train_step` on the model, optimiser and generators that
:class:`imgcluster.train.trainer.Trainer` builds (augmentation of both views, online and momentum
encoders, every task's losses, SGD step, memory and queue updates, momentum update), on uint8
batches gathered from the image cache.

``bare``: the same encoder (backbone + projector, channels_last, as the trainer holds it) on a
ready-made normalised tensor: online forward, momentum-encoder forward under ``no_grad``, a
one-line loss, backward and an SGD step -- nothing else (under the trainer's bf16 autocast on a
GPU, so both sides do their arithmetic in the same precision).

``run_epoch``: :func:`imgcluster.train.step.run_epoch` over ``steps`` batches, the loop ``fit`` runs
and whose ``images_per_s`` goes into history.jsonl (it adds the batch gather from the memory-
mapped cache, the loss sums and the progress callback to the trainer block).

After warm-up the three blocks alternate ``--rounds`` times in one process, so a busy machine
slows them alike; the medians over rounds and the median of the per-round ratios are reported.
Building the Trainer tunes the process's malloc as ``fit`` does (:mod:`imgcluster.train.allocator`),
so the bare block runs with that tuning too. The JSON also gives each block's page faults and
kernel CPU time per step; ``GLIBC_TUNABLES=glibc.malloc.perturb=0`` (a no-op setting, which
makes imgcluster leave malloc alone) gives glibc's defaults for comparison.

    python benchmarks/throughput.py data/cifar10-test --backbone small --json
    python benchmarks/throughput.py data/cifar10-test --backbone resnet18 --steps 3 --json

Without a folder the images are random uint8 (the JSON says which). On a GPU, ``--sync-check``
also runs a few trainer steps under ``torch.cuda.set_sync_debug_mode("warn")`` and reports how
many host-device synchronisations one step makes, and where (the goal is none). ``--compile``
gives the trainer torch.compile'd augmentation and losses
(:class:`imgcluster.train.step.StepKernels`);
the JSON's ``warmup_seconds`` then includes the compile.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import imgcluster  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcluster.config import RunConfig
from imgcluster.data.cache import ImageCache, build_cache
from imgcluster.data.scan import scan_folder
from imgcluster.method.augment import augment
from imgcluster.method.model import Encoder, make_momentum_copy
from imgcluster.train.device import DeviceImages, autocast, resolve_device
from imgcluster.train.step import MEMORY_FORMAT, run_epoch, train_step
from imgcluster.train.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", type=Path, default=None, help="images (default: random)")
    p.add_argument("--backbone", default="small", choices=("small", "resnet18", "resnet34"))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="alternations of the blocks")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    p.add_argument("--images", type=int, default=10_000, help="at most this many images")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--cache-dir", type=Path, default=None, help="decode cache (default: temp)")
    p.add_argument("--sync-check", action="store_true", help="count host syncs per step (GPU)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="trainer with compiled kernels (default: as fit, on a GPU)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args(argv)


def load_cache(args: argparse.Namespace, tmp: Path) -> tuple[ImageCache, str]:
    """The decoded folder (first ``--images`` files), or random uint8 images of the same shape."""
    size = args.image_size
    if args.folder is not None:
        paths = scan_folder(args.folder).paths[: args.images]
        cache = build_cache(args.folder, paths, size, args.cache_dir or tmp)
        return cache, f"folder ({len(cache.paths)} images)"
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, (args.images, 3, size, size), dtype=np.uint8)
    paths = [f"random/{i}.png" for i in range(args.images)]
    return ImageCache(images, paths, [], tmp / "random.npy", False), "random uint8"


def make_trainer(args: argparse.Namespace, cache: ImageCache, device: torch.device) -> Trainer:
    cfg = RunConfig().replace(
        data={"image_size": args.image_size},
        model={"backbone": args.backbone, "init": "none"},  # the training step from scratch
        scl={"k": args.k},
        optim={
            "epochs": 1,
            "batch_size": args.batch_size,
            "device": device.type,
            "compile": args.compile,
        },
    )
    return Trainer(cfg, cache, device)


def trainer_block(trainer: Trainer, order: torch.Generator) -> Callable[[int], None]:
    """``steps`` calls of the real train_step on random batches of the cache."""
    n, batch, lr = len(trainer.images), trainer.batch, trainer.cfg.optim.lr

    def run(steps: int) -> None:
        for _ in range(steps):
            idx = torch.randperm(n, generator=order)[:batch]
            images = trainer.images.batch(idx)
            train_step(
                trainer.model,
                trainer.optimizer,
                images,
                idx,
                lr,
                trainer.aug_gen,
                kernels=trainer.kernels,
            )

    return run


def epoch_block(trainer: Trainer, cache: ImageCache, steps: int) -> Callable[[int], float]:
    """run_epoch over the first ``steps`` batches' worth of images; returns its images/s."""
    subset = DeviceImages(cache.images[: steps * trainer.batch], trainer.device)
    gens = (trainer.order_gen, trainer.aug_gen)

    def run(_: int) -> float:
        stats = run_epoch(
            trainer.model,
            trainer.optimizer,
            subset,
            trainer.cfg,
            gens,
            0,
            10**6,
            lambda _: None,
            kernels=trainer.kernels,
        )
        return stats["images_per_s"]

    return run


def bare_block(trainer: Trainer, cache: ImageCache) -> Callable[[int], None]:
    """Forward, momentum forward, backward, SGD step of the same encoder on ready tensors."""
    cfg, device, batch = trainer.cfg, trainer.device, trainer.batch
    enc = Encoder(cfg.model.backbone, cfg.model.feature_dim, cfg.model.projector_bn)
    enc.to(device, memory_format=MEMORY_FORMAT)
    key = make_momentum_copy(enc)
    opt = torch.optim.SGD(enc.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)
    raw = torch.from_numpy(np.array(cache.images[: 2 * batch])).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x1, x2 = (augment(v.contiguous(memory_format=MEMORY_FORMAT), gen) for v in raw.split(batch))

    def run(steps: int) -> None:
        for _ in range(steps):
            with autocast(device):
                q = enc(x1)
                with torch.no_grad():
                    k = key(x2)
                loss = -(q.float() * k.float()).sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def sync_sites(trainer: Trainer, steps: int = 3) -> dict[str, object]:
    """Host-device synchronisations in ``steps`` trainer steps on a GPU: count and call sites."""
    run = trainer_block(trainer, torch.Generator().manual_seed(2))
    torch.cuda.synchronize(trainer.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")  # warns once that the mode is a prototype
        try:
            run(steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    sites = sorted({f"{w.filename}:{w.lineno}" for w in syncs})
    return {"host_syncs_per_step": len(syncs) / steps, "sync_sites": sites}


def timed(
    fn: Callable[[int], object],
    steps: int,
    device: torch.device,
    kernel: list[tuple[float, float]] | None = None,
) -> float:
    """Wall seconds of ``fn(steps)``; appends (page faults, kernel CPU ms) per step to
    ``kernel``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    if kernel is not None:
        faults = (after.ru_minflt + after.ru_majflt - before.ru_minflt - before.ru_majflt) / steps
        kernel.append((faults, 1000 * (after.ru_stime - before.ru_stime) / steps))
    return seconds


def measure(args: argparse.Namespace) -> dict[str, object]:
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cache, source = load_cache(args, Path(tmp))
        trainer = make_trainer(args, cache, device)
        blocks = {
            "trainer": trainer_block(trainer, torch.Generator().manual_seed(1)),
            "bare": bare_block(trainer, cache),
        }
        epoch = epoch_block(trainer, cache, args.steps)
        warmup = {name: timed(fn, args.warmup, device) for name, fn in blocks.items()}
        syncs = sync_sites(trainer) if args.sync_check and device.type == "cuda" else {}
        rates: dict[str, list[float]] = {"trainer": [], "bare": [], "run_epoch": []}
        kernel: dict[str, list[tuple[float, float]]] = {"trainer": [], "bare": []}
        for _ in range(args.rounds):
            for name, fn in blocks.items():
                seconds = timed(fn, args.steps, device, kernel[name])
                rates[name].append(args.steps * trainer.batch / seconds)
            rates["run_epoch"].append(epoch(0))
    med = {name: statistics.median(v) for name, v in rates.items()}
    ratios = [t / b for t, b in zip(rates["trainer"], rates["bare"], strict=True)]
    return {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": trainer.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images": source,
        "steps_per_block": args.steps,
        "rounds": args.rounds,
        "trainer_images_per_s": round(med["trainer"], 1),
        "bare_images_per_s": round(med["bare"], 1),
        "run_epoch_images_per_s": round(med["run_epoch"], 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(med["trainer"] / med["bare"], 3),
        "per_round": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        # Medians per step: page faults, and ms of CPU time spent in the kernel (see
        # imgcluster.train.allocator;
        # GLIBC_TUNABLES=glibc.malloc.perturb=0 runs with glibc's defaults).
        "page_faults_per_step": {k: round(median_of(v, 0)) for k, v in kernel.items()},
        "kernel_ms_per_step": {k: round(median_of(v, 1), 1) for k, v in kernel.items()},
        "compile": trainer.kernels.augment is not augment,  # as resolved (auto: on a GPU)
        "warmup_seconds": {k: round(v, 1) for k, v in warmup.items()},  # compiling included
        **syncs,
    }


def median_of(rows: list[tuple[float, float]], column: int) -> float:
    return statistics.median(row[column] for row in rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>24}: {value}")


if __name__ == "__main__":
    main()
