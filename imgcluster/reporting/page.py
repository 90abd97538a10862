"""``report``: one HTML page per run, ``report/index.html``, to see what the clusters hold.

Per cluster: size, share, mean confidence, and contact sheets of its most and least confident
images (the paper's Fig. 6). For the whole run: a t-SNE map of the embeddings coloured by
cluster (Fig. 5; scikit-learn's TSNE on a sample of at most :data:`TSNE_SAMPLE` images), cluster
sizes, the pseudo-label sizes and the losses per epoch from history.jsonl, and the confusion
matrix when ``eval`` drew one. The page is self-contained (inline style, no script, no network)
and links only files beside it or in the run directory, by relative paths.

Clusters and confidences are fit's (assignments.csv, what ``eval`` scores); embeddings come from
the exported model (``model.onnx``, exported first if missing), on the training images.
"""

from __future__ import annotations

import datetime
import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from imgcluster import rundir as rd
from imgcluster.assigning.folders import cluster_folder
from imgcluster.atomic import atomic_write_bytes, atomic_write_text
from imgcluster.config import RunConfig
from imgcluster.errors import RunError
from imgcluster.reporting.template import TEMPLATE
from imgcluster.scoring.health import check_clusters, confidence_words

TSNE_SAMPLE = 2000  # Barnes-Hut t-SNE, one thread: ~3 s for 1,000 points on a busy 2-core CPU
TSNE_STEPS = 500
PER_SHEET = 16  # images on each contact sheet
DUPLICATES_NAMED = 6  # file names listed per near-duplicate group
INDEX = "index.html"
CONFUSION = "confusion.png"  # drawn by ``eval`` into the report folder


@dataclass(frozen=True)
class ReportResult:
    """Where the page is, and what it covers."""

    path: Path
    images: int
    clusters: int
    seconds: float
    notes: tuple[str, ...] = ()  # parts left out, and why


@dataclass
class _Run:
    """What the page is made from."""

    run: Path
    config: RunConfig
    paths: list[str]
    clusters: np.ndarray
    confidence: np.ndarray
    history: list[dict[str, Any]]
    images: np.ndarray | None  # decoded training images, rows as paths (None: unavailable)
    notes: list[str]
    k_choice: dict[str, Any] | None = None  # fit --k auto: config.json's record of the choice
    start_choice: dict[str, Any] | None = None  # fit --init auto: config.json's record
    exported: Path | None = None  # where assign --export-folders sorted the images, if it did


def report(
    run: Path | None = None,
    *,
    images: np.ndarray | None = None,
    sample: int = TSNE_SAMPLE,
    per_sheet: int = PER_SHEET,
) -> ReportResult:
    """Write ``run/report/index.html`` (default run: the latest under ./runs) and its images.

    ``images``: the run's decoded training images in assignments.csv order (``fit`` passes its
    cache); by default they are found again. Raises :class:`imgcluster.RunError`.
    """
    began = time.perf_counter()
    data = _load(Path(run) if run is not None else rd.latest_run(Path("runs")), images)
    folder = data.run / rd.REPORT
    folder.mkdir(exist_ok=True)
    from imgcluster.reporting.plots import cluster_colors

    colors = cluster_colors(data.config.scl.k)
    evaluation = _evaluation(data)  # also draws the confusion matrix into the folder
    figures = _figures(data, folder, colors, sample)
    sheets = _sheets(data, folder, per_sheet)
    page = _page(data, figures, sheets, colors, evaluation)
    atomic_write_text(folder / INDEX, page)
    k = data.config.scl.k
    notes = tuple(data.notes)
    return ReportResult(folder / INDEX, len(data.paths), k, time.perf_counter() - began, notes)


def _load(run: Path, images: np.ndarray | None) -> _Run:
    if not (run / rd.ASSIGNMENTS).is_file():
        raise RunError(f"{run} has no {rd.ASSIGNMENTS}: let its fit finish first")
    saved = rd.read_json(run / rd.CONFIG)
    config = RunConfig.from_dict(saved)
    paths, clusters, confidence = rd.read_assignments(run / rd.ASSIGNMENTS)
    notes: list[str] = []
    if images is None:
        from imgcluster.data.sources import training_images

        try:
            images = training_images(run, config, paths)
        except RunError as e:
            notes.append(f"no t-SNE map: {e}")
    history = rd.read_history(run / rd.HISTORY)
    choice = saved.get("k_choice")
    exported = None
    if (run / rd.EXPORTED).is_file():
        folders = Path(rd.read_json(run / rd.EXPORTED).get("folders", ""))
        exported = folders if folders.is_dir() else None
    return _Run(run, config, paths, clusters, confidence, history, images, notes, choice,
                saved.get("start_choice"), exported)  # fmt: skip


def _evaluation(data: _Run) -> Any:
    """The scores against the run's own labels.csv (benchmark sets, ``fit --labels``, the
    demo), or None when it has none or they cannot be matched (a note says why)."""
    if not (data.run / rd.LABELS).is_file():
        return None
    from imgcluster.scoring.evaluate import evaluate

    try:
        return evaluate(run=data.run)
    except RunError as e:
        data.notes.append(f"no scores: {e}")
        return None


def _figures(data: _Run, folder: Path, colors: list[str], sample: int) -> dict[str, str]:
    """Draw the figures; name → file name in the report folder."""
    from imgcluster.reporting import plots

    k = data.config.scl.k
    sizes = np.bincount(data.clusters, minlength=k)
    means = [float(data.confidence[data.clusters == c].mean()) if n else 0.0
             for c, n in enumerate(sizes)]  # fmt: skip
    drawn = {
        "tsne.png": _tsne(data, colors, sample),
        "sizes.png": plots.cluster_sizes(sizes.tolist(), means, colors),
        "labels.png": plots.label_sizes(data.history, colors),
        "training.png": plots.training_curves(data.history),
        "scores.png": plots.label_scores(data.history),
        "k.png": plots.k_choice(data.k_choice),
    }
    names = {}
    for name, png in drawn.items():
        if png is not None:
            atomic_write_bytes(folder / name, png)
            names[name.removesuffix(".png")] = name
    if (folder / CONFUSION).is_file():
        names["confusion"] = CONFUSION
    return names


def _tsne(data: _Run, colors: list[str], sample: int) -> bytes | None:
    """t-SNE of the model's embeddings of (a sample of) the training images."""
    if data.images is None:
        return None
    n = len(data.paths)
    if n < 10:
        data.notes.append("no t-SNE map: fewer than 10 images")
        return None
    rows = np.sort(np.random.default_rng(0).permutation(n)[: min(sample, n)])
    xy = tsne_2d(_embed(data, rows))
    from imgcluster.reporting.plots import tsne_map

    return tsne_map(xy, data.clusters[rows], colors)


def tsne_2d(points: np.ndarray) -> np.ndarray:
    """scikit-learn's t-SNE of ``n×d`` points → ``n×2`` (PCA start, fixed seed)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    options = {"perplexity": float(min(30.0, (len(points) - 1) / 3)), "init": "pca"}
    try:
        tsne = TSNE(2, max_iter=TSNE_STEPS, random_state=0, **options)
    except TypeError:  # scikit-learn < 1.5 calls it n_iter
        tsne = TSNE(2, n_iter=TSNE_STEPS, random_state=0, **options)
    # One OpenMP thread: on a shared 2-core machine two threads ran 1,000 points 6x slower
    # (16 s against 2.8 s), spinning against the other load; alone they gain little.
    with threadpool_limits(1):
        return tsne.fit_transform(points)


def _embed(data: _Run, rows: np.ndarray) -> np.ndarray:
    """Embeddings ``n×d`` of training images ``rows`` from model.onnx (exported if missing)."""
    from imgcluster.assigning.onnx_model import OnnxModel

    model_file = data.run / rd.MODEL
    if not model_file.is_file():
        from imgcluster.export import export_onnx

        export_onnx(data.run, images=data.images)
    model = OnnxModel(model_file)
    assert data.images is not None
    parts = [model(np.asarray(data.images[rows[i : i + 256]]))[1] for i in range(0, len(rows), 256)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class _Sheet:
    """One contact sheet: its file in the report folder and, per tile, the image shown there."""

    name: str
    size: tuple[int, int]  # the PNG's width and height
    tiles: list[tuple[tuple[int, int, int, int], str, float]]  # (box, path, confidence)


def _sheets(data: _Run, folder: Path, per_sheet: int) -> dict[int, list[tuple[str, _Sheet]]]:
    """Contact sheets of each cluster's most and least confident images: cluster → sheets."""
    from imgcluster.reporting.sheets import contact_sheet, png_bytes, tile_boxes

    root = Path(data.config.data.source)
    out: dict[int, list[tuple[str, _Sheet]]] = {}
    for c in range(data.config.scl.k):
        members = np.flatnonzero(data.clusters == c)
        order = members[np.lexsort((members, -data.confidence[members]))]  # most confident first
        top = order[:per_sheet]
        bottom = order[len(top) :][-per_sheet:][::-1]  # least confident first, no overlap
        out[c] = []
        for label, kind, rows in (("most confident", "top", top),
                                  ("least confident", "bottom", bottom)):  # fmt: skip
            if not len(rows):
                continue
            paths = [data.paths[i] for i in rows]
            captions = [f"{data.confidence[i]:.2f}" for i in rows]
            spare = [data.images[i] for i in rows] if data.images is not None else None
            name = f"cluster_{c:02d}_{kind}.png"
            atomic_write_bytes(
                folder / name, png_bytes(contact_sheet(root, paths, captions, spare))
            )
            size, boxes = tile_boxes(len(rows))
            tiles = [(box, data.paths[i], float(data.confidence[i])) for box, i in zip(boxes, rows)]
            out[c].append((label, _Sheet(name, size, tiles)))
    return out


def _sheet_html(sheet: _Sheet, label: str, root: Path, folder: Path) -> str:
    """The sheet with a box over every tile: hovering names the file, clicking opens it."""
    w, h = sheet.size
    links = []
    for (x, y, tw, th), path, conf in sheet.tiles:
        href = _relative_url(root / path, folder)
        style = (f"left:{100 * x / w:.3f}%;top:{100 * y / h:.3f}%;"
                 f"width:{100 * tw / w:.3f}%;height:{100 * th / h:.3f}%")  # fmt: skip
        title = f"title='{_e(path)} · confidence {conf:.2f}'"
        if (root / path).is_file():  # a moved source: names still show, no broken link
            links.append(f"<a class='tile' style='{style}' href='{_e(href)}' {title}></a>")
        else:
            links.append(f"<span class='tile' style='{style}' {title}></span>")
    return (f"<h3>{label}</h3><div class='sheetbox'><img class='sheet' src='{_e(sheet.name)}' "
            f"alt='{label}'>{''.join(links)}</div>")  # fmt: skip


def _page(
    data: _Run,
    figures: dict[str, str],
    sheets: dict[int, list[tuple[str, _Sheet]]],
    colors: list[str],
    evaluation: Any = None,
) -> str:
    """The whole HTML page; ``evaluation``: scores against known labels, if any."""
    cfg, k, n = data.config, data.config.scl.k, len(data.paths)
    sizes = np.bincount(data.clusters, minlength=k)
    facts = [
        ("images", f"{n:,}"),
        ("clusters (k)", str(k) + (" (chosen from the images)" if data.k_choice else "")),
        ("source", cfg.data.source or str(cfg.data.benchmark)),
        ("method", cfg.scl.method),
        ("backbone", cfg.model.backbone),
        ("start", _start_words(cfg.model.init, cfg.model.freeze_encoder, data.start_choice)),
        ("image size", f"{cfg.data.image_size} px"),
        ("epochs", str(len(data.history))),
        ("mean confidence", confidence_words(float(data.confidence.mean()), k) if n else "-"),
    ]
    if evaluation is not None:
        sc = evaluation.scores
        facts.append(("agreement with the labels", f"ACC {sc.acc:.3f} · NMI {sc.nmi:.3f} · "
                      f"ARI {sc.ari:.3f}"))  # fmt: skip
    majority = {c.cluster: c for c in evaluation.per_cluster} if evaluation is not None else {}
    odd: dict[int, list[str]] = {}
    for row in rd.read_rows(data.run / rd.OUTLIERS):  # read once for every cluster
        odd.setdefault(int(row["cluster"]), []).append(row["path"])
    problems = check_clusters(data.clusters, data.confidence, k)
    body = [
        f"<header><h1>{_e(data.run.name)}</h1><p class='sub'>imgcluster report · "
        f"{datetime.date.today().isoformat()} · <a href='../{rd.ASSIGNMENTS}'>"
        f"{rd.ASSIGNMENTS}</a>{_exported_link(data)}</p></header>",
        "<dl class='facts'>"
        + "".join(f"<div><dt>{_e(a)}</dt><dd>{_e(b)}</dd></div>" for a, b in facts)
        + "</dl>",  # fmt: skip
        *[
            f"<p class='warning'><b>Warning:</b> {_e(p.message)}; {_e(p.remedy)}.</p>"
            for p in problems
        ],  # fmt: skip
        _look_first(data, sizes, majority),
        _duplicates(data),
        _nav(sizes, colors),
        _overview(figures),
        *[
            _cluster(c, data, sizes[c], sheets[c], colors[c], majority.get(c), odd.get(c, []))
            for c in range(k)
        ],  # fmt: skip
    ]
    body += [f"<p class='note'>{_e(note)}</p>" for note in data.notes]
    title = f"imgcluster report: {data.run.name}"
    return TEMPLATE.format(title=_e(title), body="\n".join(body))


def _look_first(data: _Run, sizes: np.ndarray, majority: dict[int, Any]) -> str:
    """The clusters to check first: the least confident, the smallest and (with labels) the
    most mixed, each linked."""
    used = [c for c in range(len(sizes)) if sizes[c]]
    if len(used) < 2:
        return ""
    means = {c: float(data.confidence[data.clusters == c].mean()) for c in used}
    picks = [
        ("least confident", min(used, key=means.__getitem__),
         lambda c: f"mean confidence {means[c]:.2f}"),
        ("smallest", min(used, key=lambda c: sizes[c]), lambda c: f"{sizes[c]:,} images"),
    ]  # fmt: skip
    if majority:
        mixed = min(majority, key=lambda c: majority[c].purity)
        picks.append(("most mixed", mixed, lambda c: f"{majority[c].purity:.0%} one class"))
    items = "".join(
        f"<li><a href='#cluster-{c}'>cluster {c}</a>: {what} ({_e(detail(c))})</li>"
        for what, c, detail in picks
    )
    return f"<section class='first'><h2>Look here first</h2><ul>{items}</ul></section>"


def _duplicates(data: _Run) -> str:
    """The near-duplicate groups of duplicates.csv, the first few named."""
    rows = rd.read_rows(data.run / rd.DUPLICATES)
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["path"])
    if not groups:
        return ""
    shown = list(groups.values())[:10]
    n = DUPLICATES_NAMED
    items = "".join(
        "<li>" + " = ".join(_e(p) for p in g[:n]) + (f" (+{len(g) - n} more)" if len(g) > n else "")
        + "</li>"
        for g in shown
    )  # fmt: skip
    more = f"<p class='note'>and {len(groups) - len(shown)} more</p>" if len(groups) > 10 else ""
    title = f"{len(groups)} group" + ("" if len(groups) == 1 else "s")
    return (f"<section class='first'><h2>Near-duplicates: {title}</h2>"
            f"<p class='note'>Near-identical images (copies, resized or re-encoded): "
            f"<a href='../{rd.DUPLICATES}'>{rd.DUPLICATES}</a>; <code>imgcluster assign "
            f"--skip-duplicates</code> sorts only the first of each.</p><ul>{items}</ul>{more}"
            "</section>")  # fmt: skip


def _nav(sizes: np.ndarray, colors: list[str]) -> str:
    items = "".join(
        f"<a href='#cluster-{c}'><span class='dot' style='background:{colors[c]}'></span>"
        f"{c}<small>{n:,}</small></a>"
        for c, n in enumerate(sizes)
    )
    return f"<nav>{items}</nav>"


_CAPTIONS = {
    "tsne": "Each dot is an image, placed by t-SNE so that images the encoder finds similar sit "
    "close together; colour is its cluster.",
    "sizes": "How many images each cluster holds.",
    "labels": "How the pseudo labels spread over the clusters as training went on.",
    "training": "Losses and label changes per epoch (history.jsonl).",
    "confusion": "Clusters against the true classes (from imgcluster eval).",
    "k": "How many clusters (fit --k auto): after the features trained alone, each k was "
    "scored by internal criteria (no labels); the run took the k its criterion preferred.",
    "scores": "Per epoch, the share of images each output puts with its true class (ACC, "
    "clusters matched to classes one to one), and the share of each image's 20 nearest "
    "neighbours that share its class: a ceiling for any clustering of these features.",
}


def _overview(figures: dict[str, str]) -> str:
    """The figures in a two-column grid: the t-SNE map tall on the left, sizes and label sizes
    stacked beside it, then the confusion matrix, then the training curves across."""
    layout = {"tsne": " tall", "training": " wide"}
    blocks = [
        f"<figure class='plot{layout.get(key, '')}'><img src='{_e(figures[key])}' alt='{key}'>"
        f"<figcaption>{_e(_CAPTIONS[key])}</figcaption></figure>"
        for key in ("tsne", "sizes", "labels", "k", "confusion", "scores", "training")
        if key in figures
    ]
    return "<section class='overview'>" + "".join(blocks) + "</section>"


def _cluster(
    c: int,
    data: _Run,
    size: int,
    sheets: list[tuple[str, _Sheet]],
    color: str,
    labelled: Any = None,
    odd: list[str] | None = None,
) -> str:
    """One cluster's section; ``odd``: its least typical images (outliers.csv)."""
    conf = data.confidence[data.clusters == c]
    share = size / max(1, len(data.paths))
    stats = (
        f"{size:,} images · {share:.1%} · mean confidence {conf.mean():.3f} "
        f"(range {conf.min():.2f}–{conf.max():.2f})"
        if size
        else "empty"
    )
    if labelled is not None and size:
        stats += f" · mostly {labelled.majority} ({labelled.purity:.0%} of it)"
    name = cluster_folder(c, data.config.scl.k)
    folder_tag = f"<span class='folder'>{name}/</span>"
    if data.exported is not None and (data.exported / name).is_dir():
        href = _relative_url(data.exported / name, data.run / rd.REPORT)
        folder_tag = (f"<a class='folder' href='{_e(href)}' title='{_e(data.exported / name)}'>"
                      f"{name}/</a>")  # fmt: skip
    parts = [
        f"<section class='cluster' id='cluster-{c}' style='border-left-color:{color}'>",
        f"<h2><span class='dot' style='background:{color}'></span>Cluster {c}{folder_tag}</h2>",
        f"<p class='stats'>{stats}</p>",
    ]
    if odd:
        parts.append(f"<p class='note'>least typical (outliers.csv): {_e(', '.join(odd))}</p>")
    root, folder = Path(data.config.data.source), data.run / rd.REPORT
    parts += [_sheet_html(sheet, label, root, folder) for label, sheet in sheets]
    parts.append("</section>")
    return "".join(parts)


def _exported_link(data: _Run) -> str:
    """' · sorted into OUT' when assign --export-folders sorted the run's images."""
    if data.exported is None:
        return ""
    href = _relative_url(data.exported, data.run / rd.REPORT)
    return f" · sorted into <a href='{_e(href)}'>{_e(data.exported)}</a>"


def _relative_url(target: Path, folder: Path) -> str:
    """A link from a page in ``folder`` to ``target``, relative so the report can move along
    with the files it points to, quoted for a URL."""
    return quote(Path(os.path.relpath(target, folder)).as_posix())


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _start_words(init: str | None, frozen: bool | None, choice: dict[str, Any] | None) -> str:
    """How the encoder started: from scratch (the paper), ImageNet weights or a file; with
    ``--init auto``, why."""
    if init in (None, "none"):
        words = "random weights (trained from scratch)"
    else:
        where = "ImageNet weights" if init == "imagenet" else Path(init).name
        words = f"{where}{', backbone frozen' if frozen else ''}"
    return f"{words} (auto: {choice['reason']})" if choice else words
