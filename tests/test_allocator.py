"""The training process keeps the memory it frees: measured as page faults in a real child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcluster import allocator, pipeline
from imgcluster.cache import ImageCache
from imgcluster.config import RunConfig

# A child that allocates, touches and frees a 64 MiB block 20 times (the size of one batch-256
# activation of the small net; above any mmap threshold glibc would pick itself) and reports
# the page faults of the last 10 rounds.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from imgcluster.allocator import retain_freed_memory

    tuned = retain_freed_memory() if sys.argv[1] == "tune" else False
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(64 << 20)  # malloc'd, and every byte written (zeroed)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"tuned": tuned, "faults": sum(faults[10:]) / 10}))
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


def test_the_users_own_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("MALLOC_TRIM_THRESHOLD_", "0"), ("GLIBC_TUNABLES", "glibc.malloc.x=1")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert not allocator.retain_freed_memory()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.nns=2")  # not a malloc setting
    assert not allocator._user_tuned({"GLIBC_TUNABLES": "glibc.rtld.nns=2"})
    child = run_child("tune", {"MALLOC_MMAP_MAX_": "65536"})
    assert not child["tuned"]


def test_nothing_is_tuned_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.retain_freed_memory()


def test_the_trainer_tunes_its_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(pipeline, "retain_freed_memory", lambda: calls.append(1) or True)
    images = np.zeros((8, 3, 16, 16), dtype=np.uint8)
    cache = ImageCache(images, [f"{i}.png" for i in range(8)], [], Path("unused.npy"), False)
    cfg = RunConfig().replace(
        data={"image_size": 16}, model={"backbone": "small"}, scl={"k": 2, "memory_size": 8}
    )
    pipeline.Trainer(cfg, cache, torch.device("cpu"))
    assert calls == [1]
