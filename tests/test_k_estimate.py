"""Choosing k (fit --k auto): the criteria on well-separated groups, the modularity's closed form
and a naive reference, the eigengap against a dense reference, the errors; and the real CLI on
images made in the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcluster.method.k_estimate import (
    CRITERIA,
    KChoice,
    eigengaps,
    estimate_k,
    knn_graph,
    modularity,
)


def blobs(k: int, per: int = 60, dim: int = 24, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """``k`` tight groups of unit vectors around random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return np.repeat(centres, per, axis=0) + noise * rng.normal(size=(k * per, dim))


@pytest.mark.parametrize("k", [2, 5, 9])
def test_every_criterion_finds_well_separated_groups(k: int) -> None:
    choice = estimate_k(blobs(k), 15)
    assert choice.picks == dict.fromkeys(CRITERIA, k)
    assert choice.k == k and choice.ks == list(range(2, 16))
    assert all(len(v) == 14 for v in choice.scores.values())


def test_the_chosen_criterion_decides() -> None:
    x = blobs(4)
    for criterion in CRITERIA:
        assert estimate_k(x, 10, criterion=criterion).criterion == criterion
    with pytest.raises(ValueError, match="unknown criterion"):
        estimate_k(x, 10, criterion="elbow")


def test_k_max_must_fit_the_images() -> None:
    with pytest.raises(ValueError, match="k-max must be between 2 and 19"):
        estimate_k(blobs(2, per=10), 20)
    with pytest.raises(ValueError, match="got 1"):
        estimate_k(blobs(2, per=10), 1)


def test_modularity_of_two_cliques_has_its_closed_form() -> None:
    """Two disjoint cliques of 5: e_c / 2m = 1/2 and d_c / 2m = 1/2 each, so Q = 2·(1/2 − 1/4)
    = 1/2 for the cliques; 0 for one cluster of everything; a split across both loses."""
    from scipy.sparse import csr_matrix

    block = np.ones((5, 5)) - np.eye(5)
    graph = csr_matrix(np.block([[block, np.zeros((5, 5))], [np.zeros((5, 5)), block]]))
    cliques = np.repeat([0, 1], 5)
    assert modularity(graph, cliques) == pytest.approx(0.5)
    assert modularity(graph, np.zeros(10, dtype=int)) == pytest.approx(0.0)
    assert modularity(graph, np.tile([0, 1], 5)) < 0.0


def test_modularity_matches_a_naive_double_sum() -> None:
    x = blobs(3, per=20, noise=0.4, seed=2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    graph = knn_graph(x, 6)
    a = graph.toarray()
    assert np.array_equal(a, a.T) and not a.diagonal().any() and (a.sum(axis=1) >= 6).all()
    labels = np.random.default_rng(0).integers(0, 4, len(x))
    d = a.sum(axis=1)
    two_m = d.sum()
    pairs = [(i, j) for i in range(len(x)) for j in range(len(x)) if labels[i] == labels[j]]
    naive = sum(a[i, j] - d[i] * d[j] / two_m for i, j in pairs) / two_m
    assert modularity(graph, labels) == pytest.approx(naive, abs=1e-12)


def test_eigengaps_match_a_dense_reference() -> None:
    x = blobs(3, per=30, noise=0.3, seed=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = 10
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    w = np.zeros_like(sims)
    for i, row in enumerate(sims):
        w[i, np.argsort(-row)[:m]] = 1.0
    w = np.maximum(w, w.T)
    d = w.sum(axis=1)
    lap = np.eye(len(x)) - w / np.sqrt(np.outer(d, d))
    lam = np.linalg.eigvalsh(lap)
    expected = [lam[k] - lam[k - 1] for k in range(2, 9)]
    np.testing.assert_allclose(eigengaps(x, 8, m), expected, atol=1e-6)


def test_choice_round_trips_and_says_what_chose_it() -> None:
    choice = estimate_k(blobs(3), 6)
    again = KChoice(**json.loads(json.dumps(choice.to_dict())))
    assert again == choice
    assert again.summary().startswith("k = 3 chosen from the images by the modularity criterion")
    assert "silhouette 3" in again.summary()


def make_groups(root: Path, groups: int = 4, per: int = 24) -> Path:
    """Well-separated groups of 24 px images: a colour and a pattern each, with noise."""
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 230, 230)]
    yy, xx = np.mgrid[:24, :24]
    patterns = [(yy // 4) % 2, (xx // 4) % 2, ((yy + xx) // 4) % 2, np.ones((24, 24))]
    for g in range(groups):
        folder = root / f"g{g}"
        folder.mkdir(parents=True)
        for i in range(per):
            img = patterns[g][..., None] * np.asarray(colours[g])[None, None]
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "imgcluster", *args], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_cli_k_auto_finds_the_groups(tmp_path: Path) -> None:
    source = make_groups(tmp_path / "groups")
    out = tmp_path / "run"
    proc = run_cli("fit", str(source), "--k", "auto", "--k-max", "8", "--epochs", "5",
                   "--init", "none", "--out", str(out), "--device", "cpu", "--workers", "1",
                   "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["k"] == 4 and summary["k_choice"]["criterion"] == "modularity"
    saved = json.loads((out / "config.json").read_text())
    assert saved["scl"]["k"] == 4 and saved["scl"]["k_auto"] and saved["k_choice"]["k"] == 4
    # from scratch 40 % of the 5 epochs went to choosing k (a frozen start keeps them all:
    # tests/test_api.py)
    assert saved["optim"]["epochs"] == 3
    assert (out / "report" / "k.png").is_file()
    assert "chosen from the images" in (out / "report" / "index.html").read_text()
    resumed = run_cli("fit", "--resume", "--out", str(out), "--epochs", "6", "--no-report",
                      "--workers", "1")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((out / "config.json").read_text())
    assert again["k_choice"] == saved["k_choice"] and again["scl"]["k"] == 4


@pytest.mark.slow
def test_cli_k_auto_errors(tmp_path: Path) -> None:
    source = make_groups(tmp_path / "groups", groups=2, per=5)
    proc = run_cli("fit", str(source), "--k", "auto", "--k-max", "6", "--out",
                   str(tmp_path / "r"), "--workers", "1")  # fmt: skip
    assert proc.returncode == 2 and "k-max=6 needs at least 12" in proc.stderr
    assert "the largest usable k-max is 5" in proc.stderr and not (tmp_path / "r").exists()
    proc = run_cli("fit", str(source), "--k", "auto", "--k-max", "1")
    assert proc.returncode == 2 and "k-max must be at least 2" in proc.stderr
    proc = run_cli("fit", str(source), "--k", "many")
    assert proc.returncode == 2 and "--k must be a number of clusters or auto" in proc.stderr
    proc = run_cli("fit", str(source), "--k-max", "5")
    assert proc.returncode == 2 and "give --k auto too" in proc.stderr
