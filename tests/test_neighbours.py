"""Near-duplicates and outliers (imgcluster.scoring.neighbours), on images made here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from imgcluster import rundir
from imgcluster.scoring.neighbours import near_duplicates, outliers


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_candidates_must_also_look_alike_pixel_by_pixel() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, 32, 32), dtype=np.uint8) for _ in range(6)]
    images.append(images[0].copy())  # 6: a copy of 0
    brighter = np.clip(images[1].astype(int) + 20, 0, 255).astype(np.uint8)
    images.append(brighter)  # 7: 1, a little brighter (re-encoded, say)
    emb = rng.standard_normal((8, 16))
    emb[6] = emb[0] + 0.01 * rng.standard_normal(16)
    emb[7] = emb[1] + 0.1 * rng.standard_normal(16)
    emb[3] = emb[2] + 0.01 * rng.standard_normal(16)  # alike to the model, not in pixels
    confidence = np.linspace(0.9, 0.2, 8)
    groups = near_duplicates(_unit(emb), lambda i: images[i], confidence)
    assert groups == [[0, 6], [1, 7]]  # most confident first; 2 and 3 are not duplicates
    assert near_duplicates(_unit(emb), lambda i: None) == []  # unreadable images join nothing


def test_outliers_are_the_least_typical_of_each_cluster() -> None:
    emb = np.array([[1, 0.0], [1, 0.05], [1, -0.05], [0.2, 1], [0, 1], [0.05, 1]])
    found = outliers(_unit(emb), np.array([0, 0, 0, 1, 1, 1]), 2, per_cluster=1)
    assert [(i, c) for i, c, _ in found] == [(1, 0), (3, 1)]  # 1 and 2 tie: the first
    assert all(-1 <= s <= 1 for *_, s in found)


def test_assign_skips_planted_duplicates(tiny_run: Path, tmp_path: Path):
    """Copies, a resized and a re-encoded copy are found; an odd image is not a duplicate."""
    from imgcluster.cli import app

    source = Path(rundir.read_json(tiny_run / rundir.CONFIG)["data"]["source"])
    folder = tmp_path / "photos"
    folder.mkdir()
    originals = sorted(source.rglob("*.jpg"))[:12]
    for i, f in enumerate(originals):
        shutil.copy(f, folder / f"{i:02d}.jpg")
    shutil.copy(originals[0], folder / "copy_of_00.jpg")
    with Image.open(originals[1]) as im:
        im.resize((64, 64)).save(folder / "bigger_01.png")
    with Image.open(originals[2]) as im:
        im.save(folder / "reencoded_02.jpg", quality=60)
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "odd.png")
    out = tmp_path / "sorted"
    args = ["assign", str(folder), "--run", str(tiny_run), "--export-folders", str(out)]
    result = CliRunner().invoke(app, [*args, "--skip-duplicates", "--json"])
    assert result.exit_code == 0, result.output
    groups = [sorted(g) for g in json.loads(result.stdout)["duplicates"]]
    for pair in (["00.jpg", "copy_of_00.jpg"], ["01.jpg", "bigger_01.png"],
                 ["02.jpg", "reencoded_02.jpg"]):  # fmt: skip
        assert pair in groups
    assert not any("odd.png" in g for g in groups)
    placed = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png")]
    assert len(placed) == 16 - sum(len(g) - 1 for g in groups)


def test_fit_lists_duplicates_and_outliers(tiny_run: Path):
    outliers_rows = rundir.read_rows(tiny_run / rundir.OUTLIERS)
    assert outliers_rows and set(outliers_rows[0]) == {"cluster", "path", "similarity"}
    assert (tiny_run / rundir.DUPLICATES).read_text().startswith("group,path")
