"""Worker processes that share a list of items, chunk by chunk, with this process.

Scope: how many decoders to use, the worker processes' start method and server, their set-up
(each exits with its owner), and :func:`share_chunks`, the schedule both the decode cache and
``assign`` run on. A first chunk (a probe) is always done here and timed; a pool starts only
when the rest would take longer here than a pool takes to start. Then this process and
``n - 1`` workers take chunks as they free up, and chunks shrink towards the end so that all
finish together. If the pool cannot start or breaks, what is left is done here. This module
must not import torch: workers only load what their tasks need.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import math
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from imgcluster.atomic import process_alive

MAX_CHUNK = 256  # items per task
MIN_CHUNK = 16
PROBE = 32  # items timed here before deciding on a pool
# A pool takes ~0.5-1.5 s to start (forkserver, imports): only worth it beyond that.
POOL_MIN_SECONDS = 1.0
# What the forkserver imports once, so that each worker is a fork with numpy, Pillow and the
# decoder already loaded (onnxruntime is not among them: importing it starts a thread, and a
# process with threads must not be forked).
PRELOAD = ["imgcluster.data.cache", "imgcluster.assigning.inference"]

_log = logging.getLogger(__name__)

R = TypeVar("R")
Task = tuple[Callable[..., Any], tuple[Any, ...]]  # a picklable function and its arguments


def usable_cpus() -> int:
    """CPUs this process may run on (less than ``os.cpu_count()`` under an affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decoder_count(workers: int | None) -> int:
    """Decoders for ``--workers``: the number given, by default one per usable CPU; at least 1.

    This process counts as one of them: ``n`` decoders are this process and ``n - 1`` workers.
    """
    return max(1, workers if workers is not None else usable_cpus())


def worker_context() -> multiprocessing.context.BaseContext:
    """Workers' start method: 'forkserver' (preloaded, see :data:`PRELOAD`), else 'spawn'.

    Plain 'fork' is avoided: the parent usually has torch or onnxruntime (and their thread pools)
    loaded, and forking a multi-threaded process can deadlock the child.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_worker_server() -> None:
    """Start the forkserver now, without waiting for it (a no-op where workers are spawned).

    Where processes cannot be started, nothing happens here: the work then runs in this process
    (see :func:`share_chunks`).
    """
    if worker_context().get_start_method() != "forkserver":
        return
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError as exc:
        _log.debug("worker server not started: %s", exc)


def worker_pool(
    processes: int, setup: Callable[..., None] | None = None, setup_args: tuple[Any, ...] = ()
) -> cf.ProcessPoolExecutor:
    """A pool of ``processes`` workers; each runs ``setup(*setup_args)`` once as it starts."""
    return cf.ProcessPoolExecutor(
        processes,
        mp_context=worker_context(),
        initializer=init_worker,
        initargs=(os.getpid(), setup, setup_args),
    )


def init_worker(
    owner: int, setup: Callable[..., None] | None = None, setup_args: tuple[Any, ...] = ()
) -> None:
    """Set up a worker of process ``owner``, then run ``setup(*setup_args)``.

    Ctrl-C is left to the owner, which shuts the pool down (no traceback per worker). And the
    worker exits once its owner is gone: an owner killed outright (SIGKILL, the OOM killer, a
    crash) cannot shut the pool down, and an idle worker would then wait on its task queue
    forever, holding the forkserver alive with it (and any pipe they inherited, such as the
    terminal's in ``imgcluster fit … | tee log``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner,), daemon=True).start()
    if setup is not None:
        setup(*setup_args)


def _exit_with(owner: int, poll_seconds: float = 0.5) -> None:
    while process_alive(owner):
        time.sleep(poll_seconds)
    os._exit(1)


def chunk_plan(begin: int, end: int, chunk: int, n_workers: int) -> dict[int, int]:
    """Chunks of items ``begin:end`` as ``{start: count}``, in order: ``chunk`` items each.

    With several workers the chunks shrink towards the end (each at most a ``4·n_workers``-th
    of what is left, and at least :data:`MIN_CHUNK`), so that the workers finish together
    rather than one waiting for a last long chunk of another. One worker has no one to wait
    for: its chunks keep their size (the last one takes what is left).
    """
    if n_workers <= 1:
        return {start: min(chunk, end - start) for start in range(begin, end, chunk)}
    chunks, start = {}, begin
    while start < end:
        count = max(MIN_CHUNK, min(chunk, math.ceil((end - start) / (4 * n_workers))))
        chunks[start] = min(count, end - start)
        start += chunks[start]
    return chunks


def in_process(task: Callable[[int, int], Task]) -> Callable[[int, int], Any]:
    """The ``here`` of :func:`share_chunks` that calls ``task``'s function in this process."""

    def here(start: int, count: int) -> Any:
        function, args = task(start, count)
        return function(*args)

    return here


def share_chunks(
    total: int,
    workers: int | None,
    here: Callable[[int, int], R],
    task: Callable[[int, int], Task],
    *,
    max_chunk: int = MAX_CHUNK,
    setup: Callable[..., None] | None = None,
    setup_args: tuple[Any, ...] = (),
    fatal: tuple[type[Exception], ...] = (),
) -> Iterator[tuple[int, R]]:
    """Do items ``0:total`` in chunks, yielding ``(start, result)`` as each chunk is done.

    ``here(start, count)`` does a chunk in this process; ``task(start, count)`` gives the
    picklable function and arguments that do it in a worker (set up by ``setup(*setup_args)``).
    Where both do the same, ``here`` is :func:`in_process` of ``task``.
    Results come out of order. A pool that cannot start or breaks leaves the rest to this
    process, with a warning, unless the error is one of ``fatal`` (doing the work here would
    fail the same way), which is raised.
    """
    n_workers = decoder_count(workers)
    chunk = max(MIN_CHUNK, min(max_chunk, math.ceil(total / (4 * n_workers))))
    if n_workers > 1 and total > chunk:
        start_worker_server()  # it loads while the probe is done here
        probe = min(chunk, PROBE)
        began = time.perf_counter()
        yield 0, here(0, probe)
        serial_rest = (time.perf_counter() - began) / probe * (total - probe)
        remaining = chunk_plan(probe, total, chunk, n_workers)
        if serial_rest > POOL_MIN_SECONDS:
            pool_args = (min(n_workers, len(remaining)), setup, setup_args)
            try:
                for start, result in _pool_chunks(remaining, here, task, *pool_args):
                    del remaining[start]
                    yield start, result
            except fatal:
                raise
            except (cf.process.BrokenProcessPool, OSError) as exc:
                _log.warning("worker processes failed (%s); going on in this process", exc)
    else:
        remaining = chunk_plan(0, total, chunk, 1)
    for start, count in list(remaining.items()):
        yield start, here(start, count)


def _pool_chunks(
    remaining: dict[int, int],
    here: Callable[[int, int], R],
    task: Callable[[int, int], Task],
    n_workers: int,
    setup: Callable[..., None] | None,
    setup_args: tuple[Any, ...],
) -> Iterator[tuple[int, R]]:
    """Chunks done by this process and ``n_workers - 1`` worker processes, at most
    ``2 · (n_workers - 1)`` of them queued for the workers (bounded RAM).

    This process takes a chunk whenever no worker result is waiting, so the workers' start
    (a second or so) costs nothing, and it would otherwise sit idle.
    """
    queue = collections.deque(remaining.items())  # (start, count)
    processes = max(1, n_workers - 1)
    pool = worker_pool(processes, setup, setup_args)
    in_flight: dict[cf.Future[R], int] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < 2 * processes:
                start, count = queue.popleft()
                function, args = task(start, count)
                in_flight[pool.submit(function, *args)] = start
            finished = [future for future in in_flight if future.done()]
            if not finished and queue:
                start, count = queue.popleft()
                yield start, here(start, count)
                continue
            if not finished:
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                yield in_flight.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
