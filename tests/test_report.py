"""The HTML report: every file it references exists, its images are real PNGs, it opens offline."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image
from typer.testing import CliRunner

from imgcluster import rundir


class Links(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


def references(page: Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.refs


def check_page(page: Path) -> list[str]:
    """Assert that every reference is relative and exists; return the files referenced."""
    files = []
    for ref in references(page):
        if ref.startswith("#"):
            continue
        url = urlparse(ref)
        assert not url.scheme and not url.netloc and not ref.startswith("/"), ref  # offline
        target = page.parent / unquote(url.path)
        assert target.is_file() or target.is_dir(), ref  # a folder: assign --export-folders
        files.append(target.name)
    return files


def test_fit_writes_a_report_whose_links_all_exist(tiny_run: Path):
    page = tiny_run / "report" / "index.html"
    files = check_page(page)
    for name in ("tsne.png", "sizes.png", "training.png", "labels.png", "assignments.csv"):
        assert name in files
    sizes = [0] * 4
    for c in rundir.read_assignments(tiny_run / "assignments.csv")[1]:
        sizes[c] += 1
    for c, n in enumerate(sizes):
        assert (f"cluster_{c:02d}_top.png" in files) == (n > 0)
        assert f"id='cluster-{c}'" in page.read_text(encoding="utf-8")
    for name in files:
        if name.endswith(".png"):
            with Image.open(page.parent / name) as im:
                im.verify()


def test_report_command_redraws(tiny_run: Path, tmp_path: Path):
    from imgcluster.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "report")
    result = CliRunner().invoke(app, ["report", "--run", str(run)])
    assert result.exit_code == 0, result.output
    check_page(run / "report" / "index.html")


def test_report_without_the_images_still_opens(tiny_run: Path, tmp_path: Path):
    """The source folder moved away: no t-SNE, grey tiles, a note, and no broken link."""
    from imgcluster.reporting.page import report

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    config = rundir.read_json(run / rundir.CONFIG)
    config["data"]["source"] = str(tmp_path / "moved-away")
    (run / rundir.CONFIG).write_text(json.dumps(config))
    result = report(run)
    files = check_page(result.path)
    assert "tsne.png" not in files and any(f.endswith("_top.png") for f in files)
    assert result.notes and "t-SNE" in result.notes[0]


def test_a_labelled_run_shows_its_scores_per_epoch(tiny_run: Path, tmp_path: Path):
    """History lines with the diagnostics add the agreement plot; a run without has none."""
    from imgcluster.reporting.page import report

    assert "scores.png" not in check_page(tiny_run / "report" / "index.html")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    history = rundir.read_history(run / rundir.HISTORY)
    for i, record in enumerate(history):
        record.update(acc=0.3 + 0.1 * i, memory_acc=0.3, kmeans_acc=0.4, knn_agreement=0.6)
    rundir.write_history(run / rundir.HISTORY, history)
    page = report(run).path
    assert "scores.png" in check_page(page)
    assert "nearest neighbours" in page.read_text(encoding="utf-8")
    with Image.open(run / "report" / "scores.png") as im:
        assert im.size[0] > 400


def test_a_run_with_labels_shows_scores_majorities_and_where_to_look(
    tiny_run: Path, tmp_path: Path
):
    """labels.csv in the run: ACC/NMI/ARI, each cluster's majority class, the confusion matrix,
    and the 'look here first' list; the same as `eval` computes."""
    from imgcluster.reporting.page import report
    from imgcluster.scoring.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    paths = rundir.read_assignments(run / rundir.ASSIGNMENTS)[0]
    rundir.write_labels(run / rundir.LABELS, paths, [p.split("/")[0] for p in paths])
    page = report(run).path
    text = page.read_text(encoding="utf-8")
    scores = evaluate(run=run).scores
    assert f"ACC {scores.acc:.3f}" in text and "confusion.png" in check_page(page)
    assert "Look here first" in text and "least confident" in text and "most mixed" in text
    assert text.count(" · mostly ") >= 2
    # Every tile of a contact sheet names its file and links to it (relative, existing).
    assert text.count("class='tile'") >= len(paths) // 2
    titles = re.findall(r"title='([^']+) · confidence", text)
    assert titles and set(titles) <= set(paths)


def test_a_degenerate_run_is_flagged_at_the_top(tiny_run: Path, tmp_path: Path):
    from imgcluster.reporting.page import report

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report"))
    paths = rundir.read_assignments(run / rundir.ASSIGNMENTS)[0]
    rundir.write_assignments(run / rundir.ASSIGNMENTS, paths, [0] * len(paths),
                             [0.25] * len(paths))  # fmt: skip
    text = report(run).path.read_text(encoding="utf-8")
    assert "near chance" in text and "holds 100% of the images" in text
    assert text.index("Warning:") < text.index("id='cluster-0'")


def test_sorting_the_runs_images_links_each_cluster_to_its_folder(tiny_run: Path, tmp_path: Path):
    from imgcluster.api import assign

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = assign(run=run, export_folders_to=tmp_path / "sorted out", workers=1)
    assert result.report == run / "report" / "index.html"
    assert rundir.read_json(run / "exported.json") == {"folders": str(tmp_path / "sorted out")}
    refs = references(result.report)
    used = sorted({int(c) for c in result.clusters})
    for c in used:
        assert f"../../sorted%20out/cluster_{c:02d}" in refs
    assert "../../sorted%20out" in refs
    check_page(result.report)
    # Another folder's images, or --no-report, leave the run's report alone.
    before = result.report.read_text(encoding="utf-8")
    other = assign(tmp_path / "sorted out", run=run, export_folders_to=tmp_path / "b", workers=1)
    assert other.report is None and result.report.read_text(encoding="utf-8") == before
