"""``imgcluster demo``: the whole job on embedded digits: fit → assign → score → report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from imgcluster.cli.app import app, console, out_console, user_errors
from imgcluster.cli.assign import print_folder_summary
from imgcluster.cli.evaluate import run_report
from imgcluster.cli.fit import print_fit_summary, run_fit
from imgcluster.cli.progress import Bars
from imgcluster.config import RunConfig


@app.command()
def demo(
    work: Path = typer.Option(
        Path("imgcluster-demo"), help="Folder for the demo images and its run."
    ),
    time_budget: float = typer.Option(2.0, "--time-budget", help="Minutes of training."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Cluster scikit-learn's handwritten digits (1,797 images): fit → assign → score → report."""
    from imgcluster import api
    from imgcluster.data.digits import write_digits

    folder, labels = write_digits(work / "digits")
    out_console.print(f"wrote {len(labels)} digit images to [bold]{folder}[/]")
    # fit's own defaults (the demo shows what a user's run does); the labels only score each
    # epoch in history.jsonl. Never compiled: on a GPU the compile would take a large share of
    # so short a run.
    config = RunConfig().replace(
        data={"source": str(folder), "labels": str(folder / "labels.csv")},
        optim={"time_budget_minutes": time_budget, "device": device, "compile": False},
    )
    from imgcluster.rundir import numbered_run_dir

    out = numbered_run_dir(work / "runs", "digits")
    result = run_fit(lambda callback: api.fit(config, out, callback=callback, report=False), out)
    print_fit_summary(result, report=False, next_step=False)
    demo_assign(result.run_dir, folder, work / "clusters")
    print_scores(result.paths, result.clusters, labels)
    run_report(result.run_dir)


def demo_assign(run: Path, folder: Path, out: Path) -> None:
    """The demo's second step: the digits sorted into cluster folders by the exported model."""
    from imgcluster.api import assign as assign_images

    with user_errors(), Bars(console) as bars:
        assigned = assign_images(folder, run=run, export_folders_to=out, progress=bars.update)
    print_folder_summary(assigned.folders, 0)


def print_scores(paths: list[str], clusters: Any, labels: dict[str, str]) -> None:
    """ACC / NMI / ARI of clusters against the labels of the same paths."""
    import numpy as np

    from imgcluster.scoring.metrics import score

    classes = np.array([labels[p] for p in paths])
    s = score(np.asarray(clusters), classes)
    table = Table(title=f"agreement with the true classes ({s.n} images)")
    for name in ("ACC", "NMI", "ARI"):
        table.add_column(name, justify="right")
    table.add_row(f"{s.acc:.3f}", f"{s.nmi:.3f}", f"{s.ari:.3f}")
    out_console.print(table)
