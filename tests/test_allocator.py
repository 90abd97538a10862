"""The training process keeps the memory it frees: measured as page faults in a real child.

That the Trainer tunes its process, and that the label update's batch changes nothing, is in
test_device.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from imgcluster.train import allocator

# A child that allocates, touches and frees a 64 MiB block 20 times (the size of one batch-256
# activation of the small net; above any mmap threshold glibc would pick itself) and reports
# the page faults of the last 10 rounds, then how much memory releasing the free pages returns.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from imgcluster.train.allocator import release_free_memory, retain_freed_memory

    tuned = retain_freed_memory() if sys.argv[1] == "tune" else False
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(64 << 20)  # malloc'd, and every byte written (zeroed)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)


    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    kept = resident_mib()
    release_free_memory()
    drop = kept - resident_mib()
    print(json.dumps({"tuned": tuned, "faults": sum(faults[10:]) / 10, "released_mib": drop}))
    """
)
PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def run_child(mode: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(done.stdout)


def test_freed_memory_is_reused_without_page_faults() -> None:
    tuned = run_child("tune")
    if not tuned["tuned"]:
        pytest.skip("not glibc on Linux: malloc is left as it is")
    plain = run_child("plain")
    assert plain["faults"] > 0.5 * PAGES  # the default: every round faults the block in again
    assert tuned["faults"] < 0.01 * PAGES
    assert tuned["released_mib"] > 48  # the kept 64 MiB go back when training ends


def test_the_users_own_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("MALLOC_TRIM_THRESHOLD_", "0"), ("GLIBC_TUNABLES", "glibc.malloc.x=1")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert not allocator.retain_freed_memory()
    assert not allocator._user_tuned({"GLIBC_TUNABLES": "glibc.rtld.nns=2"})  # not malloc's
    child = run_child("tune", {"MALLOC_MMAP_MAX_": "65536"})
    assert not child["tuned"]


def test_nothing_is_tuned_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.retain_freed_memory()
