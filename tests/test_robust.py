"""Robustness: a messy folder through the real CLI, kills and Ctrl-C, unwritable outputs,
interrupted exports, and a run's own output inside its source (issue "robust")."""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_cifar_subset, dead_pid
from robust_corpus import build_corpus
from typer.testing import CliRunner

from imgcluster import rundir as rd
from imgcluster.cli import app
from imgcluster.data.scan import scan_folder
from imgcluster.train.checkpoint import load_checkpoint

TINY = ["--backbone", "small", "--image-size", "16", "--batch-size", "16", "--workers", "1"]
TINY += ["--no-report", "--seed", "0"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``imgcluster ARGS`` in a fresh process (as a user runs it)."""
    cmd = [sys.executable, "-m", "imgcluster", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "IMGCLUSTER_CACHE_DIR": str(tmp / "cache"), "COLUMNS": "200"}


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): content hash, link target or folder."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _error(output: str) -> str:
    """The one error line of a command's output (progress bars may precede it)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and output.strip().endswith(lines[0]), output
    return lines[0]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def messy(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The corpus fitted and assigned by the CLI, run directory and export inside the source."""
    tmp = tmp_path_factory.mktemp("messy")
    src = tmp / "photos"
    good, bad = build_corpus(data_root, src, tmp / "outside")
    before = _tree(src)
    run, sorted_out = src / "runs" / "r", src / "sorted"
    fitted = _cli("fit", str(src), "--k", "2", "--epochs", "1", "--out", str(run), *TINY,
                  env=_env(tmp))  # fmt: skip
    assigned = _cli("assign", "--run", str(run), "--export-folders", str(sorted_out),
                    env=_env(tmp))  # fmt: skip
    return src, run, sorted_out, good, bad, before, fitted, assigned


@pytest.mark.slow
def test_messy_folder_fits_and_assigns(messy) -> None:
    src, run, sorted_out, good, bad, before, fitted, assigned = messy
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    assert assigned.returncode == 0, assigned.stderr[-2000:]
    assert f"{len(bad)} files skipped" in fitted.stdout
    # Every good image assigned, with names (newline, quotes, commas) read back identically.
    assert sorted(r["path"] for r in _csv(run / rd.ASSIGNMENTS)) == good
    exported = _csv(sorted_out / rd.ASSIGNMENTS)
    assert sorted(r["path"] for r in exported) == good
    for row in exported:
        assert (sorted_out / row["file"]).read_bytes() == (src / row["path"]).read_bytes()
    placed = [p for p in sorted_out.rglob("*") if p.is_file() and p.parent != sorted_out]
    assert len(placed) == len(good)
    # Every bad one listed with its reason.
    skipped = {r["path"]: r["reason"] for r in _csv(run / rd.SKIPPED)}
    assert set(skipped) == set(bad)
    for path, reason in bad.items():
        assert reason in skipped[path], (path, skipped[path])
    # The user's files untouched; new entries only in the run directory and the export.
    after = _tree(src)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.split("/")[0] in ("runs", "sorted") for k in set(after) - set(before))


@pytest.mark.slow
def test_outputs_inside_the_source_are_not_scanned(messy) -> None:
    src, _, _, good, *_ = messy
    paths = scan_folder(src).paths  # runs/r and sorted/ hold images: left out
    assert set(good) <= set(paths)
    assert not [p for p in paths if p.startswith(("runs/", "sorted/"))]


@pytest.mark.slow
def test_links_out_of_the_source_only_with_follow_links(messy) -> None:
    from imgcluster.assigning.assignment import assign

    src, run, *_ = messy
    plain = assign(src, run=run, workers=1)
    assert "bad/outside.jpg" not in plain.paths
    followed = assign(src, run=run, workers=1, follow_links=True)
    assert "bad/outside.jpg" in followed.paths


@pytest.mark.slow
def test_interrupted_export_rerun_leaves_one_copy_each(
    messy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgcluster.assigning import folders
    from imgcluster.assigning.assignment import assign

    src, run, _, good, *_ = messy
    out = tmp_path / "out"
    real, calls = folders._materialise, []

    def dies_midway(source: Path, tmp: Path, mode: str) -> None:
        calls.append(tmp)
        real(source, tmp, mode)
        # ">=": copies run in threads, so two may append before either reads the length.
        if len(calls) >= 7:
            raise KeyboardInterrupt  # as if killed while the temporary file exists

    monkeypatch.setattr(folders, "_materialise", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        assign(src, run=run, export_folders_to=out, workers=1)
    # What a SIGKILL would have left: a temporary file beside a target.
    leftover = calls[0].with_name(calls[0].name.rsplit("-", 1)[0] + "-999999")
    leftover.write_bytes(b"partial")
    monkeypatch.setattr(folders, "_materialise", real)
    (out / "mine.txt").write_text("a file of the user's")
    result = assign(src, run=run, export_folders_to=out, workers=1)
    images = sorted(p for p in out.rglob("*") if p.is_file() and p.parent != out)
    assert len(images) == len(good) == len(result.paths)
    assert not [p for p in out.rglob("*") if "tmp" in p.name]
    assert (out / "mine.txt").read_text() == "a file of the user's"


def test_unusable_folders_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("text")
    (bad / "b.png").write_bytes(b"")
    runner = CliRunner()
    empty = tmp_path / "none[/]"  # also: a name rich would take for markup
    (empty / "]").mkdir(parents=True)
    for folder, words in ((bad, "only 0 usable"), (empty, "no images")):
        result = runner.invoke(app, ["fit", str(folder), "--k", "2", "--out", str(tmp_path / "r")])
        assert result.exit_code == 2, result.output
        assert words in _error(result.output)


def test_unwritable_outputs_are_one_line_naming_the_path(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = copy_cifar_subset(data_root, tmp_path / "src", 2)
    a_file = tmp_path / "file"
    a_file.write_text("")
    args = ["fit", str(src), "--k", "2", "--epochs", "1", *TINY]
    runner = CliRunner()
    # Running as root, permissions cannot block writes: a file in the way does.
    for extra, where in (
        (["--out", str(a_file / "run")], a_file / "run"),
        (["--out", str(tmp_path / "r1"), "--cache-dir", str(a_file / "c")], a_file / "c"),
    ):
        result = runner.invoke(app, args + extra)
        assert result.exit_code == 2 and str(where) in _error(result.output), result.output

    real_fsync = os.fsync

    def disk_full(fd: int) -> None:  # the disk fills up when the first checkpoint is written
        if "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    monkeypatch.setattr(os, "fsync", disk_full)
    run = tmp_path / "r2"
    result = runner.invoke(app, args + ["--out", str(run)])
    assert result.exit_code == 2, result.output
    line = _error(result.output)
    assert "No space left on device" in line and str(run / rd.CHECKPOINT) in line
    assert sorted(p.name for p in run.iterdir()) == [rd.CONFIG, rd.HISTORY, rd.SKIPPED]


def test_dead_decode_leftovers_are_removed(tmp_path: Path, data_root: Path) -> None:
    from imgcluster.data.cache import build_cache, cache_key

    src = copy_cifar_subset(data_root, tmp_path / "src", 1)
    paths = scan_folder(src).paths
    stale = tmp_path / "c" / f"{cache_key(src, paths, 16)}.npy.tmp-{dead_pid()}"
    stale.parent.mkdir()
    stale.write_bytes(b"\0" * 1000)
    build_cache(src, paths, 16, tmp_path / "c", workers=1)
    assert not stale.exists()


def _wait(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """Poll until ``ready()`` or the process ends (then the test fails)."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _epoch(run: Path) -> int:
    """The epoch of the checkpoint on disk (0 without one)."""
    return int(load_checkpoint(run / rd.CHECKPOINT)["epoch"]) if _has_ckpt(run) else 0


def _has_ckpt(run: Path) -> bool:
    return (run / rd.CHECKPOINT).exists()


def _stamp(run: Path) -> int:
    """The checkpoint's mtime (0 without one): cheap to poll, unlike loading it."""
    try:
        return (run / rd.CHECKPOINT).stat().st_mtime_ns
    except OSError:
        return 0


@pytest.mark.slow
def test_sigkill_anywhere_then_resume(data_root: Path, tmp_path: Path) -> None:
    src = copy_cifar_subset(data_root, tmp_path / "src", 5)
    run, env, epochs = tmp_path / "run", _env(tmp_path), 4
    args = ["fit", str(src), "--k", "2", "--epochs", str(epochs), "--out", str(run), *TINY]
    resume = ["fit", "--resume", "--out", str(run)]

    def start(argv: list[str]) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "imgcluster", *argv]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()

    # 1. Before the first checkpoint (scanning, decoding, building the model).
    proc = start(args)
    _wait(proc, lambda: (run / rd.CONFIG).exists())
    kill(proc)
    # 2. Resumed (starting over if it never saved), killed right after a checkpoint.
    before = _stamp(run)
    proc = start(resume)
    _wait(proc, lambda: _stamp(run) != before)
    kill(proc)
    # 3. Resumed, killed in the middle of the next epoch.
    before = _stamp(run)
    proc = start(resume)
    _wait(proc, lambda: _stamp(run) != before)
    time.sleep(0.2)
    kill(proc)
    # 4. Resumed to the end: each epoch once in the history.
    done = _cli(*resume, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    history = rd.read_history(run / rd.HISTORY)
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert _epoch(run) == epochs
    assert (run / rd.MODEL).exists() and len(_csv(run / rd.ASSIGNMENTS)) == 50
    assert not [p for p in run.iterdir() if "tmp" in p.name]


@pytest.mark.slow
def test_killed_before_its_first_checkpoint_starts_over(data_root: Path, tmp_path: Path) -> None:
    src = copy_cifar_subset(data_root, tmp_path / "src", 2)
    run = tmp_path / "run"
    run.mkdir()
    rd.write_json(run / rd.CONFIG, {"data": {"source": str(src)}})  # as a kill leaves it
    result = CliRunner().invoke(
        app, ["fit", "--resume", "--out", str(run), "--k", "2", "--epochs", "1", *TINY]
    )
    assert result.exit_code == 0, result.output
    assert "starting the run over" in result.output
    assert [r["epoch"] for r in rd.read_history(run / rd.HISTORY)] == [1]


def _heed_ctrl_c() -> None:
    """In the child before it execs: SIGINT back to its default action. A test run started in
    the background by a non-interactive shell ignores SIGINT, as its children would then do
    (a program started with SIGINT ignored rightly keeps ignoring it), and the test would
    wait for an exit that never comes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(data_root: Path, tmp_path: Path) -> None:
    src = copy_cifar_subset(data_root, tmp_path / "src", 10)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "imgcluster", "fit", str(src), "--k", "2", "--epochs", "500"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(run), *TINY],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_heed_ctrl_c,
    )
    _wait(proc, lambda: _has_ckpt(run))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"--resume --out {run}" in " ".join(err.split())
    state = load_checkpoint(run / rd.CHECKPOINT)  # intact
    history = rd.read_history(run / rd.HISTORY)
    assert [r["epoch"] for r in history][: state["epoch"]] == list(range(1, state["epoch"] + 1))
