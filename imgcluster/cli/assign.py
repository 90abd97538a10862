"""``imgcluster assign``: a folder through a run's exported model, into clusters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from imgcluster.cli.app import (
    app,
    console,
    exit_if_strict,
    fail,
    out_console,
    plural,
    print_problems,
    start_decoders,
    user_errors,
)
from imgcluster.cli.progress import Bars


@app.command()
def assign(
    source: Path | None = typer.Argument(
        None, help="Folder of images to assign \\[default: the run's training folder]."
    ),
    run: Path | None = typer.Option(
        None, help="Run directory \\[default: the latest under ./runs with a model.onnx]."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="An exported model file (.onnx) to use instead of a run."
    ),
    export_folders: Path | None = typer.Option(
        None,
        "--export-folders",
        help="Sort the images into OUT/cluster_00/ … as NNNN_<name> (NNNN: confidence rank in "
        "the cluster), plus OUT/assignments.csv. Only files imgcluster wrote are ever replaced.",
    ),
    mode: str = typer.Option("copy", "--mode", help="copy | hardlink | symlink."),
    batch_size: int = typer.Option(
        256,
        "--batch-size",
        help="Most images per onnxruntime call (at most 64 where each decoder runs the model).",
    ),
    unsure_below: float | None = typer.Option(
        None, "--unsure-below", help="Put images with confidence under P into OUT/unsure/."
    ),
    csv: Path | None = typer.Option(
        None,
        "--csv",
        help="Write assignments.csv here \\[default: OUT/assignments.csv with --export-folders, "
        "else assignments-<folder>.csv beside the model].",
    ),
    workers: int | None = typer.Option(
        None,
        help="Decoders (on a CPU, with a small model, each also runs it): this process and N-1 "
        "worker processes \\[default: all cores].",
    ),
    follow_links: bool = typer.Option(
        False,
        "--follow-links",
        help="Follow symbolic links out of the source folder \\[default: as the run's fit did].",
        metavar="",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object.", metavar=""),
    skip_duplicates: bool = typer.Option(
        False,
        "--skip-duplicates",
        help="Find near-identical images (copies, resized or re-encoded) and put only the most "
        "confident of each group into the folders; --json lists the groups.",
        metavar="",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Exit with status 3 when the clusters look degenerate.", metavar=""
    ),
    no_report: bool = typer.Option(
        False,
        "--no-report",
        help="Leave the run's report as it is (by default, sorting the run's own images into "
        "folders redraws it with each cluster linked to its folder).",
        metavar="",
    ),
) -> None:
    """Assign images to a trained run's clusters (onnxruntime; torch not needed)."""
    if unsure_below is not None and export_folders is None:
        fail("--unsure-below sorts images into OUT/unsure/: give --export-folders OUT too")
    start_decoders(workers)
    from imgcluster.api import assign as assign_images

    options = {
        "run": run, "model": model, "export_folders_to": export_folders, "mode": mode,
        "batch_size": batch_size, "unsure_below": unsure_below, "csv": csv, "workers": workers,
        "follow_links": True if follow_links else None, "skip_duplicates": skip_duplicates,
        "report": not no_report,
    }  # fmt: skip
    with user_errors(), Bars(console) as bars:
        result = assign_images(source, progress=bars.update, **options)
    if json_output:
        typer.echo(json.dumps(result.summary(), sort_keys=True))
    else:
        print_assign_summary(result)
    exit_if_strict(result.problems, strict)


def print_assign_summary(result: Any) -> None:
    """Cluster sizes and confidences, where the results went, agreement with fit."""
    import numpy as np

    from imgcluster.assigning.folders import cluster_folder

    table = Table(title=escape(f"{plural(len(result.paths), 'image')} of {result.source}"))
    for name in ("cluster", "folder", "images", "mean confidence"):
        table.add_column(name, justify="left" if name == "folder" else "right")
    for c, n in enumerate(np.bincount(result.clusters, minlength=result.k)):
        conf = result.confidence[result.clusters == c]
        mean = f"{conf.mean():.3f}" if n else "-"
        table.add_row(str(c), cluster_folder(c, result.k), str(n), mean)
    out_console.print(table)
    speed = f"{result.images_per_s:.0f} images/s, {result.provider}"
    out_console.print(
        f"assigned in {result.seconds:.1f} s ({speed}) by {escape(str(result.model))}"
    )
    if result.agreement is not None:
        out_console.print(
            f"agrees with fit's assignments.csv on {result.agreement:.1%} of "
            f"{result.compared} training images"
        )
    if result.folders is not None:
        print_folder_summary(result.folders, result.unsure)
    out_console.print(f"assignments: [bold]{escape(str(result.csv))}[/]")
    if result.skipped:
        examples = "; ".join(f"{p}: {r}" for p, r in result.skipped[:3])
        out_console.print(f"{plural(len(result.skipped), 'file')} skipped ({escape(examples)})")
    if result.duplicates:
        left = sum(len(g) - 1 for g in result.duplicates)
        out_console.print(
            f"{plural(len(result.duplicates), 'group')} of near-identical images: "
            f"{plural(left, 'image')} left out of the folders (listed in assignments.csv)"
        )
    if result.report is not None:
        page = escape(str(result.report))
        out_console.print(f"report updated, each cluster linked to its folder: [bold]{page}[/]")
    print_problems(result.problems)
    if result.folders is not None and result.paths:
        first = escape(str(result.folders.out / cluster_folder(0, result.k)))
        out_console.print(
            f"next: look through [bold]{first}[/] and its neighbours: each folder's images are "
            "numbered from the most confident; imgcluster eval --labels FILE scores them when "
            "some labels are known"
        )


def print_folder_summary(folders: Any, unsure: int) -> None:
    f = folders
    line = f"{f.written} written, {f.unchanged} unchanged, {f.removed} old removed"
    if unsure:
        line += f"; {unsure} under the threshold in unsure/"
    out_console.print(f"folders: [bold]{escape(str(f.out))}[/] ({line})")
    if f.renamed:
        first = f"{f.renamed[0][0]} → {f.renamed[0][1]}"
        out_console.print(
            f"{len(f.renamed)} image(s) took another name, a file not written by imgcluster "
            f"holding theirs (e.g. {escape(first)})"
        )
