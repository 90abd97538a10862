"""assign through the command line on real CIFAR-10 images: folders, ranks, safety, reruns."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgcluster import rundir
from imgcluster.assigning.assignment import confidence_ranks
from imgcluster.assigning.folders import MANIFEST


def source_of(run: Path) -> Path:
    return Path(rundir.read_json(run / rundir.CONFIG)["data"]["source"])


def invoke(*args: str) -> dict:
    """``imgcluster assign ... --json`` in this process; the parsed JSON summary."""
    from imgcluster.cli import app

    result = CliRunner().invoke(app, ["assign", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (links not followed): content hash and mtime."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() or path.is_symlink():
            data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            st = path.lstat()
            out[path.relative_to(folder).as_posix()] = (
                hashlib.sha256(data).hexdigest(),
                st.st_mtime_ns,
            )
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sorted_once(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One export of the run's own images, source hashes taken before and compared after."""
    out = tmp_path_factory.mktemp("sorted") / "out"
    before = snapshot(source_of(tiny_run))
    summary = invoke("--run", str(tiny_run), "--export-folders", str(out))
    assert snapshot(source_of(tiny_run)) == before  # sources only read: bytes and mtimes
    return out, summary


def test_every_image_lands_in_exactly_one_cluster_folder(tiny_run: Path, sorted_once):
    out, summary = sorted_once
    source = source_of(tiny_run)
    rows = read_csv(out / "assignments.csv")
    sources = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.jpg"))
    assert sorted(r["path"] for r in rows) == sources  # each image once
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("cluster_*/*"))
    assert sorted(r["file"] for r in rows) == files  # each file is one image, none extra
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "assignments.csv",
        "cluster_00",
        "cluster_01",
        "cluster_02",
        "cluster_03",
    ]
    for r in rows:
        assert r["file"].startswith(f"cluster_{int(r['cluster']):02d}/")
        assert (out / r["file"]).read_bytes() == (source / r["path"]).read_bytes()
    # duplicate base names (every class folder has 0000.jpg) all survive
    assert sum(r["file"].endswith("_0000.jpg") for r in rows) == 10
    assert summary["cluster_sizes"] == [len(list(out.glob(f"cluster_0{c}/*"))) for c in range(4)]


def test_ranks_follow_confidence(sorted_once):
    out, _ = sorted_once
    rows = read_csv(out / "assignments.csv")
    for c in {r["cluster"] for r in rows}:
        members = sorted((r for r in rows if r["cluster"] == c), key=lambda r: int(r["rank"]))
        assert [int(r["rank"]) for r in members] == list(range(1, len(members) + 1))
        conf = [float(r["confidence"]) for r in members]
        assert conf == sorted(conf, reverse=True)
        assert all(Path(r["file"]).name.startswith(f"{int(r['rank']):04d}_") for r in members)


def test_training_images_agree_with_fit(tiny_run: Path, sorted_once):
    out, summary = sorted_once
    assert summary["agreement_with_fit"] == 1.0
    fit_rows = {r["path"]: r["cluster"] for r in read_csv(tiny_run / "assignments.csv")}
    assert {r["path"]: r["cluster"] for r in read_csv(out / "assignments.csv")} == fit_rows


@pytest.mark.slow
def test_second_run_changes_nothing(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    invoke("--run", str(tiny_run), "--export-folders", str(out))
    before = snapshot(out)
    summary = invoke("--run", str(tiny_run), "--export-folders", str(out))
    assert snapshot(out) == before
    assert summary["export_folders"]["written"] == 0 and summary["export_folders"]["removed"] == 0


@pytest.mark.slow
def test_foreign_files_in_out_survive(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = invoke("--run", str(tiny_run), "--export-folders", str(out))
    taken = read_csv(out / "assignments.csv")[0]["file"]  # a name the tool will want again
    (out / taken).unlink()
    (out / taken).write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("mine")
    (out / "cluster_00" / "keep.jpg").write_bytes(b"also mine")
    second = invoke("--run", str(tiny_run), "--export-folders", str(out))
    assert (out / taken).read_bytes() == b"the user's own file"
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "cluster_00" / "keep.jpg").read_bytes() == b"also mine"
    renamed = second["export_folders"]["renamed"]
    assert renamed == [[taken, taken.replace(".jpg", "~2.jpg")]]
    assert first["images"] == second["images"] == len(read_csv(out / "assignments.csv"))


@pytest.mark.slow
def test_unsure_folder_and_moving_back(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    threshold = float(np.median(rundir.read_assignments(tiny_run / "assignments.csv")[2]))
    summary = invoke("--run", str(tiny_run), "--export-folders", str(out),
                     "--unsure-below", str(threshold))  # fmt: skip
    unsure = list((out / "unsure").iterdir())
    assert len(unsure) == summary["unsure"] > 0
    assert len(unsure) + len(list(out.glob("cluster_*/*"))) == summary["images"]
    invoke("--run", str(tiny_run), "--export-folders", str(out))
    assert not (out / "unsure").exists()  # emptied, and it was the tool's own folder
    assert len(list(out.glob("cluster_*/*"))) == summary["images"]


@pytest.mark.slow
def test_link_modes(tiny_run: Path, tmp_path: Path):
    out, source = tmp_path / "out", source_of(tiny_run)
    invoke("--run", str(tiny_run), "--export-folders", str(out), "--mode", "symlink")
    rows = read_csv(out / "assignments.csv")
    assert all(os.path.realpath(out / r["file"]) == str(source / r["path"]) for r in rows)
    invoke("--run", str(tiny_run), "--export-folders", str(out), "--mode", "hardlink")
    assert all(os.path.samefile(out / r["file"], source / r["path"]) for r in rows)
    assert not any((out / r["file"]).is_symlink() for r in rows)
    assert len(list(out.glob("cluster_*/*"))) == len(rows)


@pytest.mark.slow
def test_manifest_cannot_reach_outside_out(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    invoke("--run", str(tiny_run), "--export-folders", str(out))
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    manifest = json.loads((out / MANIFEST).read_text())
    st = victim.lstat()
    for rel in ("../victim.txt", str(victim), "cluster_00/../../victim.txt"):
        manifest["files"][rel] = {"id": [st.st_ino, st.st_size, st.st_mtime_ns]}
    (out / MANIFEST).write_text(json.dumps(manifest))
    invoke("--run", str(tiny_run), "--export-folders", str(out))
    assert victim.read_text() == "outside"


def test_new_folder_with_model_file_and_csv(tiny_run: Path, tmp_path: Path):
    new = tmp_path / "new"
    shutil.copytree(source_of(tiny_run) / "cat", new / "cats")
    shutil.copy(source_of(tiny_run) / "dog" / "0001.jpg", new / "dog.jpg")
    (new / "broken.jpg").write_bytes(b"not a jpeg")
    table = tmp_path / "where.csv"
    summary = invoke(str(new), "--model", str(tiny_run / "model.onnx"), "--csv", str(table))
    rows = read_csv(table)
    assert len(rows) == summary["images"] == 11 and summary["agreement_with_fit"] is None
    assert [s["path"] for s in summary["skipped"]] == ["broken.jpg"]
    ranks = confidence_ranks(
        np.array([int(r["cluster"]) for r in rows]),
        np.array([float(r["confidence"]) for r in rows]),
        [r["path"] for r in rows],
    )
    assert ranks.tolist() == [int(r["rank"]) for r in rows]


@pytest.mark.slow
def test_assign_never_imports_torch(tiny_run: Path, tmp_path: Path):
    """A machine with only onnxruntime can assign: torch is made unimportable here."""
    # An import hook, as if torch were not installed (a None in sys.modules would trip
    # libraries that look torch up there, such as scipy's array-API checks).
    code = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, NoTorch()); sys.argv[0] = 'imgcluster'\n"
        "from imgcluster.cli import main\n"
        "main()\n"
    )
    args = ["assign", "--run", str(tiny_run), "--export-folders", str(tmp_path / "out"), "--json"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 100


def _workers_of(pid: int) -> int:
    """How many processes the worker server (forkserver) started by ``pid`` has running."""
    parent, command = {}, {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        parent[int(entry.name)], command[int(entry.name)] = ppid, cmdline
    servers = {p for p, pp in parent.items() if pp == pid and b"forkserver" in command[p]}
    return sum(pp in servers for pp in parent.values())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes via /proc")
def test_a_big_folder_through_the_console_script_with_workers(
    tiny_run: Path, data_root: Path, tmp_path: Path
):
    """The whole CIFAR-10 test split (10,000 files, seconds of work) through the installed
    ``imgcluster`` script with two decoders: a worker starts (it runs the script again before
    its first task, and loads its own onnxruntime session), and the assignments equal those of
    one process."""
    script = Path(sys.executable).with_name("imgcluster")
    if not script.is_file():
        pytest.skip("the imgcluster console script is not installed beside this Python")
    source = data_root / "cifar10-test"
    rows, pool, seconds = {}, {}, {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.csv"
        args = [str(source), "--model", str(tiny_run / "model.onnx"), "--csv", str(out)]
        cmd = [str(script), "assign", *args, "--workers", str(workers), "--json"]
        log, err = tmp_path / f"w{workers}.json", tmp_path / f"w{workers}.err"
        with open(log, "wb") as stdout, open(err, "wb") as stderr:  # files: pipes could fill
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
            seen = 0
            while proc.poll() is None:
                seen = max(seen, _workers_of(proc.pid))
                time.sleep(0.05)
        assert proc.returncode == 0, err.read_text()
        rows[workers], pool[workers] = out.read_text(), seen
        seconds[workers] = json.loads(log.read_text())["seconds"]
    assert rows[2] == rows[1] and rows[1].count("\n") == 10_001
    assert pool[1] == 0
    # A pool starts when the work would take over a second in one process: a machine fast
    # enough to do it all in less is let off.
    assert pool[2] == 1 or seconds[1] < 2.0, (pool, seconds)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/folder"], "source folder not found"),
        (["--model", "/nonexistent/model.onnx"], "model file not found"),
        (["--mode", "move", "--export-folders", "OUT"], "unknown mode"),
        (["--unsure-below", "0.5"], "--export-folders"),
        (["--unsure-below", "2", "--export-folders", "OUT"], "probability"),
    ],
)
def test_bad_input_is_one_line(tiny_run: Path, tmp_path: Path, args: list[str], message: str):
    from imgcluster.cli import app

    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    if "--model" not in args:
        args += ["--run", str(tiny_run)]
    result = CliRunner().invoke(app, ["assign", *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_confidence_ranks_break_ties_by_path():
    clusters = np.array([1, 0, 1, 1, 0])
    confidence = np.array([0.5, 0.9, 0.7, 0.5, 0.9])
    paths = ["d", "b", "c", "a", "a2"]
    assert confidence_ranks(clusters, confidence, paths).tolist() == [3, 2, 1, 2, 1]
