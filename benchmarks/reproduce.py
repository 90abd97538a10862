"""Reproduce a row of the paper's Table 1 and record it in docs/benchmarks.md.

Runs ``imgcluster fit <set> --data-root DIR`` through the real command line, scores the run with
``imgcluster eval --json`` (the set's labels are kept in the run directory), and inserts a row
under that set's Table 1 row in docs/benchmarks.md: ACC / NMI / ARI, images, epochs, settings,
wall time and device, and, from history.jsonl's per-epoch scores, the minutes it took to reach
each ACC level.

    python benchmarks/reproduce.py cifar10 --data-root DATA --minutes 30 --momentum 0.99
    python benchmarks/reproduce.py cifar10 --data-root DATA --note "GPU, paper settings"

Options this script does not know (``--momentum 0.99``, ``--backbone resnet18``...) go to
``imgcluster fit``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from imgcluster import rundir
from imgcluster.data.benchmarks import BENCHMARKS

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"
LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

# Table 1 of Huang & Gong (BMVC 2022), SCL: (ACC, NMI, ARI) and the protocol's image count.
PAPER = {
    "cifar10": ((0.813, 0.744, 0.683), 60_000),
    "cifar100-20": ((0.482, 0.477, 0.314), 60_000),
    "stl10": ((0.638, 0.593, 0.485), 13_000),
    "imagenet10": ((0.930, 0.877, 0.861), 13_000),
    "imagenet-dogs": ((0.763, 0.728, 0.652), 19_500),
    "tiny-imagenet": ((0.172, 0.337, 0.080), 100_000),
}
HEADER = (
    "| set | run | ACC | NMI | ARI | images | epochs | wall min | device | settings | "
    "ACC reached after (min) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def reached(history: list[dict]) -> str:
    """'0.3: 1.2, 0.4: 5.0' — the first minute at which the run's ACC reached each level.

    Read from history.jsonl, whose lines on a benchmark set score each epoch's clusters and
    count the seconds since ``fit`` began (decoding included).
    """
    parts = []
    for level in LEVELS:
        first = next((h["elapsed_seconds"] / 60 for h in history if h.get("acc", 0) >= level), None)
        if first is not None:
            parts.append(f"{level:.1f}: {first:.1f}")
    return ", ".join(parts) or "–"


def run_fit(args: argparse.Namespace, extra: list[str]) -> float:
    """``imgcluster fit`` in a subprocess; returns its wall seconds."""
    cmd = [sys.executable, "-m", "imgcluster", "fit", args.set, "--data-root", str(args.data_root),
           "--out", str(args.out), *extra]  # fmt: skip
    if args.minutes:
        cmd += ["--time-budget", str(args.minutes)]
    start = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode:
        sys.exit(f"fit failed (exit {proc.returncode}): {' '.join(cmd)}")
    return time.time() - start


def evaluate(run: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "imgcluster", "eval", "--run", str(run), "--json"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out)


def device_name(history: list[dict]) -> str:
    device = history[-1].get("device", "cpu") if history else "cpu"
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores ({platform.machine()})"


def settings(run: Path, args: argparse.Namespace, extra: list[str]) -> str:
    cfg = rundir.read_json(run / rundir.CONFIG)
    parts = [cfg["model"]["backbone"], f"{cfg['data']['image_size']} px",
             f"batch {cfg['optim']['batch_size']}", f"k {cfg['scl']['k']}",
             f"m {cfg['scl']['momentum']}"]  # fmt: skip
    if args.minutes:
        parts.append(f"budget {args.minutes:g} min")
    return ", ".join(parts) + (f"; `{' '.join(extra)}`" if extra else "")


def result_row(args: argparse.Namespace, extra: list[str], wall: float, history: list[dict]) -> str:
    scores = evaluate(args.out)
    label = f"{date.today()}" + (f" {args.note}" if args.note else "")
    cells = [args.set, label, f"{scores['acc']:.3f}", f"{scores['nmi']:.3f}",
             f"{scores['ari']:.3f}", f"{scores['n']:,}", str(len(history)), f"{wall / 60:.1f}",
             device_name(history), settings(args.out, args, extra), reached(history)]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def paper_row(name: str) -> str:
    (acc, nmi, ari), n = PAPER[name]
    return (f"| {name} | **paper, Table 1** | {acc:.3f} | {nmi:.3f} | {ari:.3f} | {n:,} | 200 | – "
            "| GPU | ResNet-34 (PICA variant), batch 256 | – |")  # fmt: skip


def insert_row(doc: str, name: str, row: str) -> str:
    """``doc`` with ``row`` after the last row of set ``name`` in the Table 1 section."""
    if BEGIN not in doc:
        rows = "\n".join(paper_row(n) for n in PAPER)
        doc = (
            doc.rstrip("\n") + f"\n\n## Table 1 reproductions\n\n{BEGIN}\n{HEADER}\n{rows}\n{END}\n"
        )
    head, rest = doc.split(BEGIN, 1)
    table, tail = rest.split(END, 1)
    lines = table.strip("\n").splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith(f"| {name} |"))
    lines.insert(last + 1, row)
    return f"{head}{BEGIN}\n" + "\n".join(lines) + f"\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=list(BENCHMARKS))
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--minutes", type=float, help="time budget of the fit (--time-budget)")
    parser.add_argument("--out", type=Path, help="run directory [runs/bench-<set>-<time>]")
    parser.add_argument("--note", default="", help="words for the row's 'run' cell")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to add the row to")
    parser.add_argument("--dry-run", action="store_true", help="print the row, change no file")
    args, extra = parser.parse_known_args()
    args.out = args.out or Path("runs") / f"bench-{args.set}-{time.strftime('%Y%m%d-%H%M%S')}"
    wall = run_fit(args, extra)
    history = rundir.read_history(args.out / rundir.HISTORY)
    row = result_row(args, extra, wall, history)
    curve = [(h["epoch"], round(h["elapsed_seconds"] / 60, 2), h.get("acc")) for h in history]
    print(json.dumps({"curve": curve}))
    print(row)
    if not args.dry_run:
        args.doc.write_text(insert_row(args.doc.read_text(encoding="utf-8"), args.set, row))


if __name__ == "__main__":
    main()
