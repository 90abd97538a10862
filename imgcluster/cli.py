"""The ``imgcluster`` command line: options → config → one library call → a rich summary.

Only this module prints. Heavy libraries (torch, faiss, onnxruntime) are imported inside the
commands, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from imgcluster import __version__
from imgcluster.config import RunConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    help="Find the natural groups in a folder of unlabelled images (Semantic Contrastive "
    "Learning).",
)
console = Console(stderr=True)
out_console = Console()

# CLI option → (config section, field). One table, so a setting has one name everywhere.
OPTION_FIELDS: dict[str, tuple[str, str]] = {
    "k": ("scl", "k"),
    "method": ("scl", "method"),
    "momentum": ("scl", "momentum"),
    "memory_size": ("scl", "memory_size"),
    "temperature": ("scl", "temperature"),
    "cross_cluster": ("scl", "cross_cluster"),
    "online_cd": ("scl", "online_cd"),
    "hard_mining": ("scl", "hard_mining"),
    "backbone": ("model", "backbone"),
    "image_size": ("data", "image_size"),
    "workers": ("data", "workers"),
    "cache_dir": ("data", "cache_dir"),
    "follow_links": ("data", "follow_links"),
    "epochs": ("optim", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "time_budget": ("optim", "time_budget_minutes"),
    "seed": ("optim", "seed"),
    "device": ("optim", "device"),
}


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr and a non-zero exit: the only way a command reports an error."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def apply_options(base: RunConfig, options: dict[str, Any]) -> RunConfig:
    """The config with every option the user gave (not None) written into its field."""
    sections: dict[str, dict[str, Any]] = {}
    for option, value in options.items():
        if value is None:
            continue
        section, name = OPTION_FIELDS[option]
        sections.setdefault(section, {})[name] = str(value) if option == "cache_dir" else value
    return base.replace(**sections)


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"imgcluster {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """imgcluster: fit → assign → eval on a folder of images."""


@app.command()
def fit(
    source: Path | None = typer.Argument(
        None, help="Folder of images (searched recursively). Optional with --resume."
    ),
    k: int | None = typer.Option(None, "--k", "-k", help="Number of clusters [default: 10]."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory [default: runs/<folder name>, numbered]."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    epochs: int | None = typer.Option(None, help="Epochs [default: 200]."),
    time_budget: float | None = typer.Option(
        None,
        "--time-budget",
        help="Minutes for the whole run: the first epoch is timed and the epoch count set so the "
        "run, cosine schedule complete, ends in time. Recommended on a CPU.",
    ),
    backbone: str | None = typer.Option(
        None,
        help="auto | resnet34 | resnet18 | small. auto: resnet34 on a GPU (the paper's), small on "
        "a CPU (best clusters within a CPU time budget, see docs/benchmarks.md).",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="Side S of the square training images [default: 32 when the images are up to "
        "~48 px, else 96].",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Batch size [default: 256, capped at the number of images]."
    ),
    lr: float | None = typer.Option(None, help="Learning rate [default: 0.03, cosine schedule]."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda [default: auto]."),
    seed: int | None = typer.Option(None, help="Random seed; CPU runs are reproducible [0]."),
    method: str | None = typer.Option(
        None, help="scl, or moco-kmeans: the paper's baseline (instance contrast, then k-means)."
    ),
    momentum: float | None = typer.Option(None, help="Momentum encoder m [default: 0.9]."),
    memory_size: int | None = typer.Option(
        None, "--memory-size", help="K: keys in the semantic memory [default: 4096, ≤ images]."
    ),
    temperature: float | None = typer.Option(None, help="τ [default: 0.1]."),
    no_cross_cluster: bool = typer.Option(
        False, "--no-cross-cluster", help="Ablation: every bank is a negative (no Eq. 2)."
    ),
    no_online_cd: bool = typer.Option(
        False, "--no-online-cd", help="Ablation: labels from the memory's p̃, not the classifier."
    ),
    no_hard_mining: bool = typer.Option(
        False, "--no-hard-mining", help="Ablation: plain mean of L_ID (no Eq. 6 weights)."
    ),
    workers: int | None = typer.Option(None, help="Decode processes [default: all cores]."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Decode cache folder [default: ~/.cache/imgcluster]."
    ),
    follow_links: bool = typer.Option(
        False, "--follow-links", help="Follow symbolic links out of the source folder."
    ),
) -> None:
    """Train SCL on a folder of images and write a run directory."""
    from imgcluster import rundir

    options = {
        "k": k, "epochs": epochs, "time_budget": time_budget, "backbone": backbone,
        "image_size": image_size, "batch_size": batch_size, "lr": lr, "device": device,
        "seed": seed, "method": method, "momentum": momentum, "memory_size": memory_size,
        "temperature": temperature, "workers": workers, "cache_dir": cache_dir,
        "cross_cluster": False if no_cross_cluster else None,
        "online_cd": False if no_online_cd else None,
        "hard_mining": False if no_hard_mining else None,
        "follow_links": True if follow_links else None,
    }  # fmt: skip
    if source is None and not resume:
        fail("give the folder of images to cluster: imgcluster fit ./photos --k 10")
    base = RunConfig()
    if resume and out is not None and (out / rundir.CONFIG).exists():
        base = RunConfig.from_dict(rundir.read_json(out / rundir.CONFIG))
    config = apply_options(base, options)
    if source is not None:
        config = config.replace(data={"source": str(source)})
    result = run_fit(config, out, resume)
    print_fit_summary(result)


def run_fit(config: RunConfig, out: Path | None, resume: bool) -> Any:
    """Call the library's fit with a rich progress display; user errors become one line."""
    from imgcluster.pipeline import fit as fit_run
    from imgcluster.rundir import RunError

    progress = FitProgress(console)
    try:
        with progress:
            return fit_run(config, out, resume=resume, callback=progress.update)
    except RunError as e:
        fail(str(e))
    except KeyboardInterrupt:
        where = progress.run_dir or out or "<run directory>"
        fail(f"interrupted; the last checkpoint is intact: fit --resume --out {where}", 130)
    return None


class FitProgress:
    """Rich progress bars for fit's callback: decode, epochs (loss, images/s, ETA), labels."""

    def __init__(self, con: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=con,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.run_dir: str | None = None

    def __enter__(self) -> FitProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def _task(self, key: str, description: str, total: int) -> Any:
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(description, total=total, info="")
        return self.tasks[key]

    def update(self, event: Any) -> None:
        """Translate one library Progress event into the bars."""
        if event.stage == "decode":
            self.bar.update(self._task("decode", "decode", event.total), completed=event.done)
        elif event.stage == "run_dir":
            self.run_dir = event.info["path"]
        elif event.stage == "train":
            task = self._task("steps", "steps", event.total)
            self.bar.update(task, completed=event.done, total=event.total)
            self.bar.update(task, info=f"loss {event.info['loss']:.3f}")
        elif event.stage == "epoch":
            task = self._task("epochs", "epochs", event.total)
            r = event.info
            flips = r.get("label_flips", 0)
            info = f"loss {r['loss']:.3f}  {r['images_per_s']:.0f} img/s  flips {flips}"
            self.bar.update(task, completed=event.done, total=event.total, info=info)
        elif event.stage == "message":
            self.bar.console.print(event.info["text"])


def print_fit_summary(result: Any) -> None:
    """Cluster sizes and where the run directory is."""
    import numpy as np

    sizes = np.bincount(result.clusters, minlength=result.config.scl.k)
    table = Table(title=f"{len(result.paths)} images in {result.config.scl.k} clusters")
    table.add_column("cluster", justify="right")
    table.add_column("images", justify="right")
    table.add_column("mean confidence", justify="right")
    for c, n in enumerate(sizes):
        conf = result.confidence[result.clusters == c]
        table.add_row(str(c), str(n), f"{conf.mean():.3f}" if n else "-")
    out_console.print(table)
    if result.skipped:
        out_console.print(
            f"{len(result.skipped)} file(s) skipped: see {result.run_dir}/skipped.csv"
        )
    out_console.print(
        f"{result.epochs} epochs on {result.device}; run directory: [bold]{result.run_dir}[/]"
    )


def _not_yet(command: str, issue: str) -> None:
    fail(f"'{command}' is not yet available in imgcluster {__version__} (coming with {issue})")


@app.command()
def assign(
    source: Path | None = typer.Argument(None, help="Folder to assign [default: the run's]."),
    run: Path | None = typer.Option(None, help="Run directory [default: latest under ./runs]."),
    export_folders: Path | None = typer.Option(None, "--export-folders"),
) -> None:
    """Assign images to clusters with the exported model; sort them into folders."""
    _not_yet("assign", "ONNX export and assignment")


@app.command("eval")
def evaluate(
    labels: Path | None = typer.Option(None, "--labels", help="labels.csv with path,label."),
    run: Path | None = typer.Option(None, help="Run directory [default: latest under ./runs]."),
) -> None:
    """Score a run's clusters against labels: ACC, NMI, ARI."""
    _not_yet("eval", "scoring against labels")


@app.command()
def export(run: Path | None = typer.Option(None, help="Run directory.")) -> None:
    """Export the encoder and clustering head to ONNX."""
    _not_yet("export", "ONNX export and assignment")


@app.command()
def report(run: Path | None = typer.Option(None, help="Run directory.")) -> None:
    """Write an HTML report: contact sheets per cluster, t-SNE, training curves."""
    _not_yet("report", "the report")


@app.command()
def demo(
    work: Path = typer.Option(
        Path("imgcluster-demo"), help="Folder for the demo images and its run."
    ),
    time_budget: float = typer.Option(2.0, "--time-budget", help="Minutes of training."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Cluster scikit-learn's handwritten digits (1,797 images) and score the result."""
    from imgcluster.demo import write_digits

    folder, labels = write_digits(work / "digits")
    out_console.print(f"wrote {len(labels)} digit images to [bold]{folder}[/]")
    # A two-minute CPU run: the small net, batches of 64 for more steps, and momentum 0.99,
    # which escapes the collapsed start far sooner than the paper's 0.9 (docs/benchmarks.md).
    config = RunConfig().replace(
        data={"source": str(folder), "image_size": 32},
        model={"backbone": "small"},
        scl={"momentum": 0.99},
        optim={"time_budget_minutes": time_budget, "device": device, "batch_size": 64},
    )
    from imgcluster.rundir import numbered_run_dir

    result = run_fit(config, numbered_run_dir(work / "runs", "digits"), False)
    print_fit_summary(result)
    print_scores(result.paths, result.clusters, labels)


def print_scores(paths: list[str], clusters: Any, labels: dict[str, str]) -> None:
    """ACC / NMI / ARI of clusters against the labels of the same paths."""
    import numpy as np

    from imgcluster.metrics import score

    classes = np.array([labels[p] for p in paths])
    s = score(np.asarray(clusters), classes)
    table = Table(title=f"agreement with the true classes ({s.n} images)")
    for name in ("ACC", "NMI", "ARI"):
        table.add_column(name, justify="right")
    table.add_row(f"{s.acc:.3f}", f"{s.nmi:.3f}", f"{s.ari:.3f}")
    out_console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()
