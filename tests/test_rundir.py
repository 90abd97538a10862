"""rundir: atomic writes, and the temporaries a killed write leaves behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import dead_pid

from imgcluster import rundir as rd
from imgcluster.atomic import atomic_write_text, process_alive
from imgcluster.errors import RunError
from imgcluster.train.checkpoint import load_checkpoint, save_checkpoint


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "history.jsonl"
    target.write_text("old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_write_removes_the_temporaries_of_killed_writes_only(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getppid()
    killed = tmp_path / f".checkpoint.pt.tmp-{dead}"  # a SIGKILL during a checkpoint write
    running = tmp_path / f".checkpoint.pt.tmp-{alive}"  # another command writing right now
    other = tmp_path / f".config.json.tmp-{dead}"  # another file's: swept by its own next write
    user = tmp_path / ".checkpoint.pt.tmp-notes"  # not a name this tool gives
    for p in (killed, running, other, user):
        p.write_bytes(b"x" * 1000)
    save_checkpoint(tmp_path / rd.CHECKPOINT, {"epoch": 3})
    assert not killed.exists()
    assert running.exists() and other.exists() and user.exists()
    assert load_checkpoint(tmp_path / rd.CHECKPOINT) == {"epoch": 3}
    rd.write_json(tmp_path / rd.CONFIG, {"k": 2})
    assert not other.exists()


def test_process_alive() -> None:
    assert process_alive(os.getpid()) and process_alive(os.getppid())
    if os.name == "posix":
        assert not process_alive(dead_pid())


def test_failed_write_is_one_clear_error_and_no_temporary(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    with pytest.raises(RunError, match="cannot write"):
        atomic_write_text(folder / "x.json", "{}")
    assert not folder.exists()
