"""The report's figures, drawn with matplotlib (Agg, no display): t-SNE map of the embeddings
(the paper's Fig. 5), cluster sizes and confidence, and training curves from history.jsonl.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot, so no global
state or GUI backend is touched; each function returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 110
_GRID = {"color": "#e4e4ea", "linewidth": 0.8}
# Plain words in the legend; the equations (docs/method.md): total = Eq. 7, telling images apart
# across clusters = L_ID (Eq. 1-2), the classifier = L_CD (Eq. 4), each image from all = InfoNCE.
_LOSSES = (
    ("loss", "total"),
    ("loss_id", "images apart, across clusters"),
    ("loss_cd", "cluster classifier"),
    ("loss_instance", "each image from all others"),
)


def cluster_colors(k: int) -> list[str]:
    """One colour per cluster (hex): tab10 / tab20, else evenly spaced hues."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if k <= 10:
        cmap, values = colormaps["tab10"], np.arange(k)
    elif k <= 20:
        cmap, values = colormaps["tab20"], np.arange(k)
    else:
        cmap, values = colormaps["turbo"], np.linspace(0.05, 0.95, k)
    return [to_hex(cmap(v)) for v in values]


def tsne_map(xy: np.ndarray, clusters: np.ndarray, colors: Sequence[str]) -> bytes:
    """Scatter of 2-D points ``N×2`` coloured by cluster, a label at each cluster's centre."""
    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    order = np.random.default_rng(0).permutation(len(xy))  # no cluster painted over the rest
    ax.scatter(
        xy[order, 0],
        xy[order, 1],
        c=[colors[c] for c in clusters[order]],
        s=max(4.0, 40.0 / np.sqrt(max(len(xy), 1) / 100)),
        alpha=0.75,
        linewidths=0,
    )
    for c in np.unique(clusters):
        cx, cy = np.median(xy[clusters == c], axis=0)
        ax.annotate(
            str(c),
            (cx, cy),
            ha="center",
            va="center",
            fontsize=10,
            weight="bold",
            bbox={"boxstyle": "circle,pad=0.25", "fc": "white", "ec": colors[c]},
        )
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_color("#d0d0d8")
    ax.set_title(f"t-SNE of the embeddings ({len(xy):,} images)", loc="left", fontsize=11)
    return _png(fig)


def cluster_sizes(
    sizes: Sequence[int], confidence: Sequence[float], colors: Sequence[str]
) -> bytes:
    """Bars of the cluster sizes, each annotated with its mean confidence (up to 30 clusters)."""
    k = len(sizes)
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ax.bar(np.arange(k), sizes, color=colors, width=0.75)
    for c, (n, conf) in enumerate(zip(sizes, confidence)):
        if n and k <= 30:
            ax.annotate(
                f"{conf:.2f}",
                (c, n),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
                color="#555",
            )
    if k <= 30:
        ax.set_xticks(np.arange(k), [str(c) for c in range(k)], fontsize=8)
    ax.set_xlabel("cluster")
    ax.set_ylabel("images")
    ax.set_title("cluster sizes (numbers: mean confidence)", loc="left", fontsize=11)
    _tidy(ax)
    return _png(fig)


def training_curves(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Losses, pseudo labels changed and learning rate per epoch; None without history."""
    if not history:
        return None
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    marker = {"marker": "o", "markersize": 3} if len(epochs) < 25 else {}
    fig = _figure(11.0, 3.9)
    losses, flips, lr = fig.subplots(1, 3, width_ratios=[1.4, 1, 1])
    for key, label in _LOSSES:
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            losses.plot(epochs, [np.nan if v is None else v for v in values], label=label, **marker)
    # Under the plot, not over the lines.
    losses.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  ncol=2)  # fmt: skip
    flips.plot(epochs, [r.get("label_flips", np.nan) for r in history], color="#c0392b", **marker)
    lr.plot(epochs, [r.get("lr", np.nan) for r in history], color="#7f8c8d", **marker)
    titles = ("losses", "pseudo labels changed", "learning rate")
    for ax, title in zip((losses, flips, lr), titles):
        ax.set_title(title, loc="left", fontsize=11)
        ax.set_xlabel("epoch")
        _tidy(ax, integer_x=True)
    return _png(fig)


# The diagnostics of a labelled run (imgcluster.scoring.diagnostics), in plain words.
_SCORES = (
    ("acc", "clusters (the model's answer)", "#2c3e50"),
    ("memory_acc", "memory's assignment", "#8e44ad"),
    ("kmeans_acc", "k-means on the features", "#27ae60"),
    ("knn_agreement", "20 nearest neighbours in the same class", "#e67e22"),
)


def label_scores(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Per epoch, how well each output of the model agrees with the known classes (ACC), and how
    separable the features are (kNN agreement); None when the run had no labels."""
    rows = [r for r in history if "acc" in r]
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    marker = {"marker": "o", "markersize": 3} if len(epochs) < 25 else {}
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    for key, label, color in _SCORES:
        ax.plot(epochs, [r.get(key, np.nan) for r in rows], label=label, color=color, **marker)
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("agreement with the labels")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title("agreement with the known classes", loc="left", fontsize=11)
    _tidy(ax, integer_x=True)
    return _png(fig)


def k_choice(choice: dict[str, Any] | None) -> bytes | None:
    """``fit --k auto``: each criterion's score against k, rescaled to [0, 1] (1 = preferred;
    Davies–Bouldin inverted, as lower is better), each pick marked, the chosen k as a line."""
    if not choice:
        return None
    from imgcluster.method.k_estimate import LOWER_IS_BETTER

    ks = np.asarray(choice["ks"])
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    for name, values in choice["scores"].items():
        v = np.asarray(values, dtype=float)
        v = np.where(np.isfinite(v), v, np.nan)
        if name in LOWER_IS_BETTER:
            v = -v
        span = np.nanmax(v) - np.nanmin(v)
        v = (v - np.nanmin(v)) / span if span > 0 else np.ones_like(v)
        label = f"{name.replace('_', '-')}: k = {choice['picks'][name]}"
        width = 2.2 if name == choice["criterion"] else 1.0
        ax.plot(ks, v, label=label, linewidth=width, marker="o", markersize=2.5)
    ax.axvline(choice["k"], color="#444", linestyle="--", linewidth=1)
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("score (1 = best)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22),
              ncol=3)  # fmt: skip
    ax.set_title(f"choosing k: {choice['k']} (by {choice['criterion'].replace('_', '-')})",
                 loc="left", fontsize=11)  # fmt: skip
    _tidy(ax, integer_x=True)
    return _png(fig)


def label_sizes(history: Sequence[dict[str, Any]], colors: Sequence[str]) -> bytes | None:
    """Stacked areas: how many pseudo labels each cluster held after each epoch's update."""
    rows = [r["cluster_sizes"] for r in history if isinstance(r.get("cluster_sizes"), list)]
    if len(rows) < 2 or len({len(r) for r in rows}) != 1:
        return None
    epochs = [r["epoch"] for r in history if isinstance(r.get("cluster_sizes"), list)]
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    k = len(rows[0])
    labels = [str(c) for c in range(k)] if k <= 20 else None
    ax.stackplot(epochs, np.asarray(rows, dtype=float).T, colors=colors[:k], labels=labels)
    if labels:  # listed top-down, as stacked
        handles, names = ax.get_legend_handles_labels()
        ax.legend(
            handles[::-1],
            names[::-1],
            title="cluster",
            fontsize=7,
            title_fontsize=8,
            frameon=False,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            ncols=1 if k <= 10 else 2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("images")
    ax.set_xlim(epochs[0], epochs[-1])
    ax.set_title("pseudo-label cluster sizes during training", loc="left", fontsize=11)
    _tidy(ax, integer_x=True)
    return _png(fig)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _tidy(ax: Any, integer_x: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, **_GRID)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()
