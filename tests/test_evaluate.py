"""``imgcluster eval``: every accepted labels file, every malformed one, and what is reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgcluster import rundir
from imgcluster.cli import app
from imgcluster.errors import RunError
from imgcluster.scoring.evaluate import evaluate, plot_confusion

PATHS = ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg", "bird/0.jpg", "bird/1.jpg"]
CLUSTERS = [2, 2, 0, 0, 1, 0]  # one bird in the dogs' cluster: ACC 5/6
ACC = 5 / 6


def make_run(run: Path, source: Path, paths=PATHS, clusters=CLUSTERS) -> Path:
    """A run directory as fit leaves it, without training: config.json and assignments.csv."""
    source.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True)
    rundir.write_json(run / rundir.CONFIG, {"data": {"source": str(source)}})
    confidence = np.full(len(paths), 0.5)
    rundir.write_assignments(run / rundir.ASSIGNMENTS, paths, np.array(clusters), confidence)
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "runs" / "photos", tmp_path / "photos")


def label_rows(prefix: str = "") -> list[tuple[str, str]]:
    return [(prefix + p, p.split("/")[0]) for p in PATHS]


def write_csv(file: Path, rows, header=("path", "label"), sep=",", newline="\n") -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    file.write_text(newline.join(lines) + newline, encoding="utf-8")
    return file


def cli(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def eval_json(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# --- accepted forms -------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["path", "filepath", "file", "filename", "image", "Path"])
def test_each_path_column_name(run: Path, tmp_path: Path, column: str):
    labels = write_csv(tmp_path / "photos" / "labels.csv", label_rows(), header=(column, "label"))
    out = eval_json("--run", str(run), "--labels", str(labels))
    assert out["acc"] == pytest.approx(ACC) and out["n"] == 6


def test_bom_tab_crlf_and_extra_columns(run: Path, tmp_path: Path):
    rows = [("x", label, p, "y") for p, label in label_rows()]
    labels = write_csv(
        tmp_path / "photos" / "labels.tsv",
        rows,
        header=("id", "label", "filename", "note"),
        sep="\t",
        newline="\r\n",
    )
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes() + b"\r\n\r\n")  # BOM, blank lines
    out = eval_json("--run", str(run), "--labels", str(labels))
    assert out["acc"] == pytest.approx(ACC) and out["n"] == 6


def test_paths_relative_to_the_labels_file(run: Path, tmp_path: Path):
    labels = write_csv(tmp_path / "labels.csv", label_rows("photos/"))
    assert eval_json("--run", str(run), "--labels", str(labels))["n"] == 6


def test_paths_relative_to_the_runs_source(run: Path, tmp_path: Path):
    labels = write_csv(tmp_path / "elsewhere" / "labels.csv", label_rows())
    assert eval_json("--run", str(run), "--labels", str(labels))["n"] == 6


def test_absolute_paths(run: Path, tmp_path: Path):
    labels = write_csv(tmp_path / "elsewhere" / "l.csv", label_rows(f"{tmp_path}/photos/"))
    assert eval_json("--run", str(run), "--labels", str(labels))["n"] == 6


def test_absolute_paths_through_a_symlink(run: Path, tmp_path: Path):
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    labels = write_csv(tmp_path / "l.csv", label_rows(f"{tmp_path}/link/"))
    assert eval_json("--run", str(run), "--labels", str(labels))["n"] == 6


def test_quoted_paths_with_commas(tmp_path: Path):
    paths = ["a,b/1.jpg", "a,b/2.jpg", "c/3.jpg", 'c/"4".jpg']
    run = make_run(tmp_path / "r", tmp_path / "src", paths, [0, 0, 1, 1])
    labels = tmp_path / "src" / "labels.csv"
    labels.write_text('path,label\n"a,b/1.jpg",x\n"a,b/2.jpg",x\nc/3.jpg,y\n"c/""4"".jpg",y\n')
    assert eval_json("--run", str(run), "--labels", str(labels))["acc"] == 1.0


# --- malformed forms: one line, exit code 2 -------------------------------------------------

MALFORMED = {
    "empty": (b"", "is empty"),
    "blank": (b"\n\n", "is empty"),
    "header only": (b"path,label\n", "has a header but no rows"),
    "no path column": (b"picture,label\ncat/0.jpg,cat\n", "no path column"),
    "no label column": (b"path,class\ncat/0.jpg,cat\n", "no label column"),
    "short row": (b"path,label\ncat/0.jpg,cat\ncat/1.jpg\n", "line 3: 1 field(s)"),
    "empty label": (b"path,label\ncat/0.jpg, \n", "line 2: empty label"),
    "empty path": (b"path,label\n,cat\n", "line 2: empty path"),
    "not utf-8": (b"path,label\ncat/0.jpg,chat\xe9\n", "not UTF-8"),
    "two labels": (b"path,label\ncat/0.jpg,cat\ncat/0.jpg,dog\n", "two labels"),
    "no overlap": (b"path,label\nfish/0.jpg,fish\n", "no image is in both"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_labels_give_one_line_and_exit_2(run: Path, tmp_path: Path, case: str):
    content, message = MALFORMED[case]
    labels = tmp_path / "photos" / "labels.csv"
    labels.write_bytes(content)
    result = cli("--run", str(run), "--labels", str(labels))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["missing.csv", "."])
def test_unreadable_labels_file(run: Path, tmp_path: Path, where: str):
    result = cli("--run", str(run), "--labels", str(tmp_path / where))
    assert result.exit_code == 2 and "cannot read labels" in result.stderr


def test_bad_run_choices_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    labels = write_csv(tmp_path / "labels.csv", label_rows())
    for args, message in (
        ((), "no run with assignments.csv under runs/"),
        (("--run", "nowhere"), "not a run directory"),
        (("--assignments", "none.csv"), "assignments file not found"),
    ):
        result = cli("--labels", str(labels), *args)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("path,cluster\ncat/0.jpg,x\n")
    result = cli("--labels", str(labels), "--assignments", str(bad))
    assert result.exit_code == 2 and "cannot read assignments" in result.stderr


def test_without_labels_a_folder_run_asks_for_them(run: Path):
    result = cli("--run", str(run))
    assert result.exit_code == 2 and "--labels" in result.stderr


# --- what is reported -----------------------------------------------------------------------


def test_images_in_only_one_file_are_counted_and_left_out(run: Path, tmp_path: Path):
    rows = label_rows()[:4] + [("fish/0.jpg", "fish")]
    labels = write_csv(tmp_path / "photos" / "labels.csv", rows)
    out = eval_json("--run", str(run), "--labels", str(labels))
    assert (out["n"], out["only_in_assignments"], out["only_in_labels"]) == (4, 2, 1)
    assert out["acc"] == 1.0 and out["n_classes"] == 2
    table = cli("--run", str(run), "--labels", str(labels))
    assert "2 assigned image(s) have no label" in table.stdout
    assert "1 labelled image(s) are not in the assignments (left out): fish/0.jpg" in table.stdout


def test_json_has_scores_and_per_cluster_majority_and_purity(run: Path, tmp_path: Path):
    labels = write_csv(tmp_path / "photos" / "labels.csv", label_rows())
    out = eval_json("--run", str(run), "--labels", str(labels))
    assert {"acc", "nmi", "ari", "n", "per_cluster"} <= set(out)
    by_cluster = {c["cluster"]: c for c in out["per_cluster"]}
    assert by_cluster[0] == {"cluster": 0, "size": 3, "majority": "dog", "purity": 0.666667,
                             "matched": "dog"}  # fmt: skip
    assert by_cluster[1]["majority"] == "bird" and by_cluster[1]["purity"] == 1.0
    assert (out["n_clusters"], out["n_classes"]) == (3, 3)


def test_table_output_and_plots(run: Path, tmp_path: Path):
    labels = write_csv(tmp_path / "photos" / "labels.csv", label_rows())
    plot = tmp_path / "plots" / "confusion.svg"
    result = cli("--run", str(run), "--labels", str(labels), "--plot", str(plot))
    assert result.exit_code == 0, result.stderr
    assert "0.833" in result.stdout and "majority class" in result.stdout
    assert plot.read_text().lstrip().startswith("<?xml")
    assert (run / "report" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_more_clusters_than_classes(tmp_path: Path):
    run = make_run(tmp_path / "r", tmp_path / "photos", clusters=[0, 3, 1, 1, 2, 2])
    labels = write_csv(tmp_path / "photos" / "labels.csv", label_rows())
    out = eval_json("--run", str(run), "--labels", str(labels))
    assert (out["n_clusters"], out["n_classes"]) == (4, 3)
    assert out["acc"] == pytest.approx(5 / 6)
    assert out["per_cluster"][-1]["matched"] is None  # the cluster left over by the matching


def test_latest_run_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    old = make_run(Path("runs/old"), tmp_path / "photos", clusters=[0, 1, 2, 0, 1, 2])
    new = make_run(Path("runs/new"), tmp_path / "photos")
    os.utime(old / "assignments.csv", (1, 1))
    labels = write_csv(tmp_path / "photos" / "labels.csv", label_rows())
    out = eval_json("--labels", str(labels))
    assert out["assignments"] == str(new / "assignments.csv") and out["acc"] == pytest.approx(ACC)


def test_loose_assignments_file(tmp_path: Path):
    folder = tmp_path / "loose"
    folder.mkdir()
    confidence = np.ones(len(PATHS))
    rundir.write_assignments(folder / "a.csv", PATHS, np.array(CLUSTERS), confidence)
    labels = write_csv(folder / "labels.csv", label_rows())
    out = eval_json("--assignments", str(folder / "a.csv"), "--labels", str(labels))
    assert out["acc"] == pytest.approx(ACC) and out["plots"] == []


def test_a_benchmark_run_keeps_its_labels(run: Path):
    rundir.write_labels(run / rundir.LABELS, PATHS, [p.split("/")[0] for p in PATHS])
    out = eval_json("--run", str(run))
    assert out["acc"] == pytest.approx(ACC) and out["labels"] == str(run / "labels.csv")


def test_library_api_matches_the_metrics(run: Path, tmp_path: Path):
    labels = write_csv(tmp_path / "photos" / "labels.csv", label_rows())
    result = evaluate(labels, run=run)
    assert result.scores.acc == pytest.approx(ACC)
    assert [c.cluster for c in result.per_cluster] == [1, 2, 0]  # bird, cat, dog
    assert result.plots == [run / "report" / "confusion.png"]


def test_plot_confusion_rejects_an_unknown_format(tmp_path: Path):
    with pytest.raises(RunError, match="cannot write plot"):
        plot_confusion(np.array([0, 1]), np.array(["a", "b"]), tmp_path / "c.xyz")


def test_package_evaluate_is_the_function_whatever_was_imported_first() -> None:
    import imgcluster
    import imgcluster.scoring.evaluate  # noqa: F401  (a submodule import must not shadow the API)

    assert (
        callable(imgcluster.evaluate)
        and imgcluster.evaluate is imgcluster.scoring.evaluate.evaluate
    )


def test_eval_updates_the_runs_report_and_says_so(tiny_run: Path, tmp_path: Path) -> None:
    """Labels given to `eval` for a run without its own: kept in the run, and the report is
    redrawn with the scores; --no-report leaves it alone."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    paths = rundir.read_assignments(run / rundir.ASSIGNMENTS)[0]
    labels = tmp_path / "mine.csv"
    rundir.write_labels(labels, paths, [p.split("/")[0] for p in paths])
    before = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert "agreement with the labels" not in before
    skipped = CliRunner().invoke(app, ["eval", "--run", str(run), "--labels", str(labels),
                                       "--no-report"])  # fmt: skip
    assert skipped.exit_code == 0 and not (run / rundir.LABELS).exists()
    result = CliRunner().invoke(app, ["eval", "--run", str(run), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "report updated" in result.output
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    scores = evaluate(labels, run=run).scores
    assert f"ACC {scores.acc:.3f}" in page and (run / rundir.LABELS).is_file()
