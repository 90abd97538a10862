"""``imgcluster eval``, ``export`` and ``report``: a finished run scored, exported, drawn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from imgcluster.cli.app import app, console, out_console, user_errors


@app.command("eval")
def evaluate(
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="CSV (comma or tab) with a header naming a path column (path, filepath, file, "
        "filename or image) and a label column; paths relative to the file, to the run's "
        "source, or absolute \\[default: the run's own labels.csv, kept by benchmark runs].",
    ),
    run: Path | None = typer.Option(None, help="Run directory \\[default: latest under ./runs]."),
    assignments: Path | None = typer.Option(
        None, "--assignments", help="Score this assignments.csv instead of the run's."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print one JSON object (scores, per-cluster majority and purity)."
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw the confusion matrix here (.png, .svg, .pdf); a run's always goes to "
        "its report/confusion.png.",
    ),
    no_report: bool = typer.Option(
        False, "--no-report", help="Leave the run's report as it is.", metavar=""
    ),
) -> None:
    """Score clusters against true labels: ACC (Hungarian), NMI, ARI, confusion matrix."""
    from imgcluster import rundir as rd
    from imgcluster.api import evaluate as evaluate_run

    with user_errors():
        result = evaluate_run(labels, run=run, assignments=assignments, plot=plot)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        print_evaluation(result)
    if (
        result.run is not None
        and not no_report
        and (result.run / rd.REPORT / "index.html").is_file()
    ):
        with user_errors(), console.status("updating the run's report with these scores"):
            page = _update_report(result)
        if not json_output and page is not None:
            out_console.print(f"report updated with these scores: [bold]{escape(str(page))}[/]")


def _update_report(result: Any) -> Path | None:
    """The run's report redrawn with the scores. A run without labels.csv keeps the labels
    just matched there (``fit --labels`` would have); a run with its own is redrawn only when
    those were the labels scored."""
    from imgcluster import rundir as rd
    from imgcluster.api import report

    own = result.run / rd.LABELS
    if not own.is_file():
        m = result.matched
        rd.write_labels(own, list(m.paths), [str(c) for c in m.classes])
    elif own.resolve() != Path(result.labels).resolve():
        return None
    return report(result.run).path


def print_evaluation(result: Any) -> None:
    """The scores, the per-cluster summary (when short enough) and what was left out."""
    s = result.scores
    table = Table(title=escape(f"{result.assignments} against {result.labels}"))
    for name in ("ACC", "NMI", "ARI", "images scored", "clusters", "classes"):
        table.add_column(name, justify="right")
    table.add_row(f"{s.acc:.3f}", f"{s.nmi:.3f}", f"{s.ari:.3f}", str(s.n),
                  str(result.n_clusters), str(result.n_classes))  # fmt: skip
    out_console.print(table)
    if len(result.per_cluster) <= 50:
        clusters = Table(title="clusters, in the order of their matched classes")
        for name in ("cluster", "images", "majority class", "purity", "matched class"):
            clusters.add_column(name, justify="left" if "class" in name else "right")
        for c in result.per_cluster:
            clusters.add_row(str(c.cluster), str(c.size), c.majority, f"{c.purity:.3f}",
                             c.matched or "-")  # fmt: skip
        out_console.print(clusters)
    for what, paths in (
        ("assigned image(s) have no label", result.only_in_assignments),
        ("labelled image(s) are not in the assignments", result.only_in_labels),
    ):
        if paths:
            examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            out_console.print(f"{len(paths)} {what} (left out): {escape(examples)}")
    for path in result.plots:
        out_console.print(f"confusion matrix: [bold]{escape(str(path))}[/]")


@app.command()
def export(
    run: Path | None = typer.Option(None, help="Run directory \\[default: latest under ./runs]."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Model file to write \\[default: RUN/model.onnx]."
    ),
) -> None:
    """Export the encoder and 'clustering' head to ONNX, checked against torch."""
    from imgcluster.api import export_onnx

    with user_errors(), console.status("exporting to ONNX and checking it against torch"):
        result = export_onnx(run, out)
    out_console.print(f"wrote [bold]{escape(str(result.path))}[/] ({result.bytes / 1e6:.1f} MB)")
    out_console.print(
        f"onnxruntime vs torch on {result.checked_images} real images: max abs diff "
        f"{result.max_abs_diff:.1e}, same cluster for {result.argmax_agreement:.1%}"
    )


@app.command()
def report(
    run: Path | None = typer.Option(None, help="Run directory \\[default: latest under ./runs]."),
) -> None:
    """Write an HTML report: contact sheets per cluster, t-SNE, training curves."""
    run_report(run)


def run_report(run: Path | None) -> None:
    """The library's report with a spinner; notes and the page's path."""
    from imgcluster.api import report as write_report

    with user_errors(), console.status("drawing the report"):
        result = write_report(run)
    for note in result.notes:
        out_console.print(escape(note))
    out_console.print(f"report: [bold]{escape(str(result.path))}[/]")
