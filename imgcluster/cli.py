"""The ``imgcluster`` command line: options → config → one library call → a rich summary.

Only this module prints. Heavy libraries (torch, faiss, onnxruntime) are imported inside the
commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from imgcluster import __version__
from imgcluster.config import RunConfig, with_preset

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
    "balance": ("scl", "balance"),
    "warmup": ("scl", "warmup"),
    "backbone": ("model", "backbone"),
    "image_size": ("data", "image_size"),
    "workers": ("data", "workers"),
    "cache_dir": ("data", "cache_dir"),
    "follow_links": ("data", "follow_links"),
    "labels": ("data", "labels"),
    "augment": ("data", "augment"),
    "epochs": ("optim", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "head_lr_scale": ("optim", "head_lr_scale"),
    "projector_bn": ("model", "projector_bn"),
    "time_budget": ("optim", "time_budget_minutes"),
    "seed": ("optim", "seed"),
    "device": ("optim", "device"),
    "compile": ("optim", "compile"),
}


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr and a non-zero exit: the only way a command reports an error."""
    # Escaped: paths in messages may hold "[...]", which rich would read as (broken) markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
        None,
        help="Folder of images (searched recursively), or a benchmark set: cifar10, "
        "cifar100-20, stl10, imagenet10, imagenet-dogs, tiny-imagenet (with --data-root). "
        "Optional with --resume.",
    ),
    k: int | None = typer.Option(None, "--k", "-k", help="Number of clusters \\[default: 10]."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory \\[default: runs/<folder name>, numbered]."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    epochs: int | None = typer.Option(None, help="Epochs \\[default: 200]."),
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
        help="Side S of the square training images \\[default: 32 when the images are up to "
        "~48 px, else 96].",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Batch size \\[default: 256, smaller for small folders so an epoch has 32 steps, "
        "at least 32]; under torchrun per process (docs/distributed.md).",
    ),
    lr: float | None = typer.Option(None, help="Learning rate \\[default: 0.03, cosine schedule]."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda \\[default: auto]."),
    seed: int | None = typer.Option(None, help="Random seed; CPU runs are reproducible \\[0]."),
    method: str | None = typer.Option(
        None, help="scl, or moco-kmeans: the paper's baseline (instance contrast, then k-means)."
    ),
    momentum: float | None = typer.Option(
        None,
        help="Momentum encoder m \\[default: 0.99; the paper's 0.9 learns far slower in the "
        "runs a CPU can make, docs/benchmarks.md].",
    ),
    head_lr_scale: float | None = typer.Option(
        None, "--head-lr-scale", help="Cluster heads learn at this × the learning rate \\[100]."
    ),
    no_projector_bn: bool = typer.Option(
        False, "--no-projector-bn", help="No batch norm in the projection MLP (MoCo v2's as is)."
    ),
    memory_size: int | None = typer.Option(
        None, "--memory-size", help="K: keys in the semantic memory \\[default: 4096, ≤ images]."
    ),
    temperature: float | None = typer.Option(None, help="τ \\[default: 0.1]."),
    no_cross_cluster: bool = typer.Option(
        False, "--no-cross-cluster", help="Ablation: every bank is a negative (no Eq. 2)."
    ),
    no_online_cd: bool = typer.Option(
        False, "--no-online-cd", help="Ablation: labels from the memory's p̃, not the classifier."
    ),
    no_hard_mining: bool = typer.Option(
        False, "--no-hard-mining", help="Ablation: plain mean of L_ID (no Eq. 6 weights)."
    ),
    balance: int | None = typer.Option(
        None,
        help="Label update: Sinkhorn iterations towards equal cluster sizes \\[default: 3; "
        "0 = plain argmax, the paper's].",
    ),
    workers: int | None = typer.Option(
        None, help="Decoders: this process and N-1 worker processes \\[default: all cores]."
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Decode cache folder \\[default: ~/.cache/imgcluster]."
    ),
    follow_links: bool = typer.Option(
        False, "--follow-links", help="Follow symbolic links out of the source folder."
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="Folder holding the benchmark set's files (torchvision's, an ImageNet train "
        "folder, or <class>/<image> folders) \\[default: ./data].",
    ),
    download: bool = typer.Option(
        False, "--download", help="Fetch cifar10, cifar100-20 or stl10 into --data-root first."
    ),
    warmup: float | None = typer.Option(
        None,
        help="Share of the epochs that train the features alone before the clusters start from "
        "k-means on them \\[default: 0, the paper's].",
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="paper: the paper's settings (ResNet-34, momentum 0.9, batch 256, lr 0.03, 200 "
        "epochs, colour views, no balancing), to reproduce its Table 1; your other options "
        "still apply.",
    ),
    augment: str | None = typer.Option(
        None,
        help="Views: colour (the paper's), greyscale (no flips, milder crops) \\[default: "
        "auto, chosen from the images].",
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="labels.csv (path,label) of every image, read only to score each epoch in "
        "history.jsonl; never used for training.",
    ),
    no_report: bool = typer.Option(
        False,
        "--no-report",
        help="Skip the HTML report at the end (model.onnx is still exported).",
    ),
    compile_step: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the augmentation and the losses: faster steps on a GPU after "
        "~25 s of compiling; no gain on a CPU \\[default: on a GPU].",
    ),
) -> None:
    """Train SCL on a folder of images (or a benchmark set) and write a run directory."""
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
        "head_lr_scale": head_lr_scale,
        "projector_bn": False if no_projector_bn else None,
        "compile": compile_step,
        "labels": str(labels.resolve()) if labels is not None else None,
        "augment": augment,
        "balance": balance,
        "warmup": warmup,
    }  # fmt: skip
    if source is None and not resume:
        fail("give the folder of images to cluster: imgcluster fit ./photos --k 10")
    base = RunConfig()
    if resume and out is not None and (out / rundir.CONFIG).exists():
        base = RunConfig.from_dict(rundir.read_json(out / rundir.CONFIG))
    if preset is not None:
        try:
            base = with_preset(base, preset)
        except ValueError as e:
            fail(str(e))
    config = apply_options(base, options)
    if source is not None:
        config = with_source(config, source, data_root, download, k_given=k is not None)
    elif data_root is not None:
        config = config.replace(data={"data_root": str(data_root)})
    start_decoders(config.data.workers)
    result = run_fit(config, out, resume, report=not no_report)
    if result is not None:  # None on torchrun's other ranks: rank 0 reports
        print_fit_summary(result)


def with_source(
    config: RunConfig, source: Path, data_root: Path | None, download: bool, k_given: bool
) -> RunConfig:
    """SOURCE as a benchmark set (named, and --data-root given or no such folder) or a folder.

    A benchmark's k defaults to its number of classes.
    """
    from imgcluster.datasets import BENCHMARKS

    bench = BENCHMARKS.get(str(source))
    if bench is not None and (data_root is not None or download or not source.exists()):
        root = str(data_root) if data_root is not None else None
        data = {"benchmark": bench.name, "data_root": root, "download": download, "source": ""}
        config = config.replace(data=data)
        return config if k_given else config.replace(scl={"k": bench.classes})
    if data_root is not None or download:
        fail(f"--data-root and --download go with a benchmark set ({', '.join(BENCHMARKS)})")
    return config.replace(data={"source": str(source)})


def start_decoders(workers: int | None) -> None:
    """Start the decode workers' server now, so that it loads while torch or onnxruntime does:
    the decode then finds it ready (it takes ~0.4 s to start, ~15 % of decoding 10,000 small
    JPEGs). A folder too small for workers, or an existing decode cache, leaves it idle."""
    from imgcluster.workers import decoder_count, start_worker_server

    if decoder_count(workers) > 1:
        start_worker_server()


def run_fit(config: RunConfig, out: Path | None, resume: bool, report: bool = True) -> Any:
    """Call the library's fit with a rich progress display; user errors become one line.

    Under torchrun only rank 0 draws progress and returns the result; the other ranks train
    silently, print only their errors (naming the rank) and return None.
    """
    from imgcluster.distributed import env_world
    from imgcluster.pipeline import fit as fit_run
    from imgcluster.rundir import RunError

    try:
        rank = env_world().rank
    except ValueError as e:
        fail(str(e))
    if rank != 0:
        try:
            fit_run(config, out, resume=resume, report=report)
        except RunError as e:
            fail(f"rank {rank}: {e}")
        except KeyboardInterrupt:
            raise typer.Exit(130) from None  # rank 0 says where the checkpoint is
        return None
    progress = FitProgress(console)
    try:
        with progress:
            return fit_run(config, out, resume=resume, callback=progress.update, report=report)
    except RunError as e:
        fail(str(e))
    except KeyboardInterrupt:
        where = progress.run_dir or out or "<run directory>"
        fail(f"interrupted; the last checkpoint is intact: fit --resume --out {where}", 130)
    return None


def progress_bars(con: Console, *extra: Any) -> Any:
    """A rich Progress: description, bar, n/total, elapsed, remaining, then ``extra`` columns."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra,
        console=con,
    )


class FitProgress:
    """Rich progress bars for fit's callback: decode, epochs (loss, images/s, ETA), labels."""

    def __init__(self, con: Console) -> None:
        from rich.progress import TextColumn

        self.bar = progress_bars(con, TextColumn("{task.fields[info]}"))
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
            self.bar.console.print(escape(event.info["text"]))


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
            f"{len(result.skipped)} file(s) skipped: see {escape(str(result.run_dir))}/skipped.csv"
        )
    where = escape(str(result.run_dir))
    out_console.print(f"{result.epochs} epochs on {result.device}; run directory: [bold]{where}[/]")


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
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Assign images to a trained run's clusters (onnxruntime; torch not needed)."""
    if unsure_below is not None and export_folders is None:
        fail("--unsure-below sorts images into OUT/unsure/: give --export-folders OUT too")
    start_decoders(workers)
    from imgcluster.assignment import assign as assign_images
    from imgcluster.rundir import RunError

    options = {
        "run": run, "model": model, "export_folders_to": export_folders, "mode": mode,
        "batch_size": batch_size, "unsure_below": unsure_below, "csv": csv, "workers": workers,
        "follow_links": True if follow_links else None,
    }  # fmt: skip
    try:
        with StageBars(console) as bars:
            result = assign_images(source, progress=bars.update, **options)
    except RunError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    if json_output:
        typer.echo(json.dumps(result.summary(), sort_keys=True))
    else:
        print_assign_summary(result)


class StageBars:
    """One rich progress bar per stage, for library callbacks ``(stage, done, total)``."""

    def __init__(self, con: Console) -> None:
        self.bar = progress_bars(con)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> StageBars:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


def print_assign_summary(result: Any) -> None:
    """Cluster sizes and confidences, where the results went, agreement with fit."""
    import numpy as np

    from imgcluster.folders import cluster_folder

    table = Table(title=escape(f"{len(result.paths)} images of {result.source}"))
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
        out_console.print(f"{len(result.skipped)} file(s) skipped ({escape(examples)})")


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
) -> None:
    """Score clusters against true labels: ACC (Hungarian), NMI, ARI, confusion matrix."""
    from imgcluster.rundir import RunError
    from imgcluster.scoring import evaluate as evaluate_run

    try:
        result = evaluate_run(labels, run=run, assignments=assignments, plot=plot)
    except RunError as e:
        fail(str(e))
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        print_evaluation(result)


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
    from imgcluster.export import export_onnx
    from imgcluster.rundir import RunError

    try:
        with console.status("exporting to ONNX and checking it against torch"):
            result = export_onnx(run, out)
    except RunError as e:
        fail(str(e))
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
    from imgcluster.reporting import report as write_report
    from imgcluster.rundir import RunError

    try:
        with console.status("drawing the report"):
            result = write_report(run)
    except RunError as e:
        fail(str(e))
    for note in result.notes:
        out_console.print(escape(note))
    out_console.print(f"report: [bold]{escape(str(result.path))}[/]")


@app.command()
def demo(
    work: Path = typer.Option(
        Path("imgcluster-demo"), help="Folder for the demo images and its run."
    ),
    time_budget: float = typer.Option(2.0, "--time-budget", help="Minutes of training."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Cluster scikit-learn's handwritten digits (1,797 images): fit → assign → score → report."""
    from imgcluster.demo import write_digits

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

    result = run_fit(config, numbered_run_dir(work / "runs", "digits"), False, report=False)
    print_fit_summary(result)
    demo_assign(result.run_dir, folder, work / "clusters")
    print_scores(result.paths, result.clusters, labels)
    run_report(result.run_dir)


def demo_assign(run: Path, folder: Path, out: Path) -> None:
    """The demo's second step: the digits sorted into cluster folders by the exported model."""
    from imgcluster.assignment import assign as assign_images
    from imgcluster.rundir import RunError

    try:
        with StageBars(console) as bars:
            assigned = assign_images(folder, run=run, export_folders_to=out, progress=bars.update)
    except RunError as e:
        fail(str(e))
    print_folder_summary(assigned.folders, 0)


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
