"""Work shared between this process and worker processes: the chunk plan, the schedule, the
fallback when processes cannot start, and workers that never outlive their owner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgcluster.data import workers


@pytest.mark.parametrize(
    ("begin", "end", "chunk", "n_workers"), [(32, 10_000, 256, 2), (0, 17, 16, 3), (5, 6, 16, 4)]
)
def test_chunks_tile_the_range_and_shrink_towards_the_end(
    begin: int, end: int, chunk: int, n_workers: int
) -> None:
    chunks = workers.chunk_plan(begin, end, chunk, n_workers)
    starts, counts = list(chunks), list(chunks.values())
    assert starts[0] == begin and starts[-1] + counts[-1] == end
    assert all(a + n == b for a, n, b in zip(starts, counts, starts[1:]))  # no gap, no overlap
    assert max(counts) <= chunk
    assert min(counts[:-1], default=workers.MIN_CHUNK) >= workers.MIN_CHUNK
    assert counts == sorted(counts, reverse=True)
    if end - begin > 8 * n_workers * chunk:
        assert counts[0] == chunk and counts[-2] == workers.MIN_CHUNK


@pytest.mark.parametrize(("begin", "end", "chunk"), [(0, 1_000, 64), (7, 71, 16), (3, 4, 16)])
def test_one_worker_keeps_its_chunks_whole(begin: int, end: int, chunk: int) -> None:
    """Shrinking only helps several workers finish together: one worker's chunks keep their
    size, and the last takes the remainder."""
    chunks = workers.chunk_plan(begin, end, chunk, 1)
    assert list(chunks) == list(range(begin, end, chunk))
    assert sum(chunks.values()) == end - begin
    assert all(count == chunk for count in list(chunks.values())[:-1])


def pid_and_squares(start: int, count: int) -> tuple[int, list[int]]:
    """A chunk's work: who did it, and the squares of its items."""
    return os.getpid(), [i * i for i in range(start, start + count)]


def square_task(start: int, count: int) -> workers.Task:
    return pid_and_squares, (start, count)


def _share(total: int, n_workers: int, **kwargs) -> tuple[dict[int, int], dict[int, int]]:  # noqa: ANN003
    """``share_chunks`` over squares: (item → value, chunk start → pid that did it)."""
    done: dict[int, int] = {}
    where: dict[int, int] = {}
    for start, (pid, values) in workers.share_chunks(
        total, n_workers, pid_and_squares, square_task, **kwargs
    ):
        assert not set(range(start, start + len(values))) & done.keys()  # each item once
        done.update(zip(range(start, start + len(values)), values))
        where[start] = pid
    return done, where


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_every_item_is_done_once_here_or_in_a_worker(
    n_workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)  # a pool even for this little work
    done, where = _share(1000, n_workers, max_chunk=40)
    assert done == {i: i * i for i in range(1000)}
    assert where[0] == os.getpid()  # the probe is always done here
    assert max(b - a for a, b in zip(sorted(where), sorted(where)[1:])) <= 40
    others = set(where.values()) - {os.getpid()}  # the workers that did chunks
    if n_workers == 1:
        assert not others
    else:
        assert 1 <= len(others) <= n_workers - 1


def test_little_work_stays_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers.cf, "ProcessPoolExecutor", None)  # any use would fail loudly
    done, where = _share(500, 4)  # far less than POOL_MIN_SECONDS of work
    assert done == {i: i * i for i in range(500)} and set(where.values()) == {os.getpid()}


def test_a_pool_that_cannot_start_leaves_the_work_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_processes(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("process creation not permitted")

    monkeypatch.setattr(workers.cf, "ProcessPoolExecutor", no_processes)
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)
    done, where = _share(300, 2, max_chunk=16)
    assert done == {i: i * i for i in range(300)} and set(where.values()) == {os.getpid()}
    assert "going on in this process" in caplog.text


def _fail(start: int, count: int) -> workers.Task:
    return int, ("not a number",)  # raises ValueError in the worker


def test_a_task_error_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)
    with pytest.raises(ValueError, match="not a number"):
        list(workers.share_chunks(200, 2, pid_and_squares, _fail, max_chunk=16))


def set_marker(value: str) -> None:
    os.environ["IMGCLUSTER_TEST_SETUP"] = value


def read_marker() -> str:
    return os.environ.get("IMGCLUSTER_TEST_SETUP", "unset")


def test_set_up_runs_in_each_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """``setup(*setup_args)`` runs once in each worker before its tasks (here: it changes
    the worker's environment, which the tasks then read)."""
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)

    def task(start: int, count: int) -> workers.Task:
        return read_marker, ()

    results = workers.share_chunks(
        200,
        2,
        lambda start, count: "here",
        task,
        max_chunk=16,
        setup=set_marker,
        setup_args=("done",),
    )
    seen = {value for _, value in results}
    assert seen == {"here", "done"}


OWNER_KILLED = """
import os, signal
from imgcluster.data import workers
if __name__ == "__main__":
    pool = workers.worker_pool(1)
    print(pool.submit(os.getpid).result(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no chance to shut the pool down
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and process probing are POSIX")
def test_workers_exit_when_their_owner_is_killed(tmp_path: Path) -> None:
    """An idle worker of a killed command must not wait on its task queue forever (holding
    the forkserver, and the terminal's pipe, with it)."""
    script, out = tmp_path / "owner.py", tmp_path / "out.txt"
    script.write_text(OWNER_KILLED)
    with open(out, "w") as fh:
        proc = subprocess.run([sys.executable, str(script)], stdout=fh, timeout=120)
    assert proc.returncode == -9
    worker = int(out.read_text())
    deadline = time.monotonic() + 20
    try:
        while workers.process_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not workers.process_alive(worker)
    finally:
        if workers.process_alive(worker):
            os.kill(worker, 9)
