"""assign throughput (images/s) next to a bare PIL decode+resize loop over the same files.

Usage: python benchmarks/assign_speed.py ../shared/data/imagenette-val [--size 96] [--json]
       python benchmarks/assign_speed.py FOLDER --backbone efficientnet_lite0 --size 160 --json

The model is the backbone (``--backbone``, default the small net; ``efficientnet_lite0`` is the
packaged start's) with a 10-cluster head, untrained (random weights): an assign pass costs the
same whatever the weights, so no training run is needed. It is exported with
imgcluster's own exporter (checked against torch) into a temporary folder. Every file is read
once before timing (warm page cache for both sides). Then, alternately and ``--repeats`` times:
the bare loop (one process: open, ``draft`` as decode_image does, convert to RGB, resize to
``S×S``) and ``assign(folder, model=...)`` (scan, decode in worker processes while onnxruntime
runs, ranks, assignments.csv; a fresh, empty decode cache so nothing is reused). The best of
each is reported; the machine is shared, so single runs are noisy. ``--folders`` also times
``--export-folders`` (copies) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcluster.data.scan import scan_folder


def bare_loop(root: Path, paths: list[str], size: int) -> float:
    """Seconds for the plainest decode + resize of every file, in this process."""
    start = time.perf_counter()
    for rel in paths:
        with Image.open(root / rel) as im:
            im.draft("RGB", (size, size))
            np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return time.perf_counter() - start


def export_untrained(folder: Path, size: int, backbone: str = "small", k: int = 10) -> Path:
    """A model with random weights, exported and checked like a real run's."""
    import torch

    from imgcluster.assigning.onnx_model import ModelInfo
    from imgcluster.config import SCLConfig
    from imgcluster.export import InferenceGraph, compare, to_onnx
    from imgcluster.method.scl import CLUSTERING, SCL

    torch.manual_seed(0)
    scl = SCL(backbone, 2 * k, SCLConfig(k=k))
    graph = InferenceGraph(scl.encoder, scl.task(CLUSTERING).head).eval()
    batch = np.random.default_rng(0).integers(0, 256, (8, 3, size, size), dtype=np.uint8)
    info = ModelInfo(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), k, "bench", "", backbone)
    data = to_onnx(graph, batch, info)
    diff, _ = compare(graph, data, batch)
    assert diff < 1e-4, diff
    path = folder / "model.onnx"
    path.write_bytes(data)
    return path


def timed_assign(root: Path, model: Path, folder: Path, export: bool) -> float:
    from imgcluster.assigning.assignment import assign

    fresh = time.perf_counter_ns()  # a new cache (nothing to reuse) and a new, empty OUT
    os.environ["IMGCLUSTER_CACHE_DIR"] = str(folder / f"cache-{fresh}")
    out = folder / f"out-{fresh}" if export else None
    start = time.perf_counter()
    result = assign(root, model=model, csv=folder / "assignments.csv", export_folders_to=out)
    elapsed = time.perf_counter() - start
    assert not result.skipped and len(result.paths) > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=96, help="image side S (default 96)")
    parser.add_argument("--backbone", default="small", help="small or efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folders", action="store_true", help="also time --export-folders")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    paths = scan_folder(args.folder).paths
    for rel in paths:  # warm the page cache so neither side pays for cold reads
        (args.folder / rel).read_bytes()
    bare, assign_s, folders_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        model = export_untrained(Path(tmp), args.size, args.backbone)
        for _ in range(args.repeats):
            bare.append(bare_loop(args.folder, paths, args.size))
            assign_s.append(timed_assign(args.folder, model, Path(tmp), export=False))
            if args.folders:
                folders_s.append(timed_assign(args.folder, model, Path(tmp), export=True))
    n = len(paths)
    report = {
        "images": n,
        "size": args.size,
        "backbone": args.backbone,
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "bare_images_per_s": round(n / min(bare), 1),
        "assign_images_per_s": round(n / min(assign_s), 1),
        "ratio": round(min(bare) / min(assign_s), 3),
        "all_bare_s": [round(s, 2) for s in bare],
        "all_assign_s": [round(s, 2) for s in assign_s],
    }
    if folders_s:
        report["assign_with_folders_images_per_s"] = round(n / min(folders_s), 1)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>34}: {value}")


if __name__ == "__main__":
    main()
