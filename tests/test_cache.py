"""Tests for imgcluster.data.cache: build, reuse, invalidation, torn files and parallel decoding."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcluster.data.cache as cache_mod
from imgcluster.data import workers
from imgcluster.data.cache import (
    ImageCache,
    build_cache,
    cache_key,
    default_image_size,
)
from imgcluster.data.cache_folder import cache_dir_default
from imgcluster.data.decode import decode_image
from imgcluster.data.scan import scan_folder


@pytest.fixture
def corpus(tmp_path: Path, data_root: Path) -> tuple[Path, list[str]]:
    """Eight real CIFAR images (two with the same base name), one gray Imagenette, two bad."""
    root = tmp_path / "corpus"
    cifar = data_root / "cifar10-test"
    rels = [f"{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in range(4)]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cifar / rel, root / rel)
    gray = data_root / "imagenette-val" / "English_springer" / "n02102040_1980.JPEG"
    shutil.copy2(gray, root / "gray.JPEG")
    (root / "bad.jpg").write_text("not an image")
    (root / "cut.jpg").write_bytes((cifar / "cat/0005.jpg").read_bytes()[:300])
    paths = sorted([*rels, "gray.JPEG", "bad.jpg", "cut.jpg"])
    return root, paths


def _expected(root: Path, paths: list[str], size: int) -> np.ndarray:
    return np.stack([decode_image(root / p, size) for p in paths])


def test_build_shapes_order_and_failures(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = corpus
    calls: list[tuple[int, int]] = []
    result = build_cache(
        root,
        paths,
        32,
        tmp_path / "c",
        workers=1,
        progress=lambda e: calls.append((e.done, e.total)),
    )
    good = [p for p in paths if p not in ("bad.jpg", "cut.jpg")]
    assert isinstance(result, ImageCache) and not result.reused
    assert result.paths == good
    assert [p for p, _ in result.skipped] == ["bad.jpg", "cut.jpg"]
    assert dict(result.skipped)["bad.jpg"] == "cannot identify image file"
    assert result.images.dtype == np.uint8 and result.images.shape == (len(good), 3, 32, 32)
    assert np.array_equal(result.images, _expected(root, good, 32))
    assert calls[-1] == (len(paths), len(paths))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    # Only the finished files remain: no temporaries.
    names = sorted(f.name for f in (tmp_path / "c").iterdir())
    assert names == sorted([result.file.name, result.file.with_suffix(".json").name])
    manifest = json.loads(result.file.with_suffix(".json").read_text())
    assert manifest["paths"] == good and manifest["n"] == len(good)
    assert manifest["npy_bytes"] == result.file.stat().st_size


def test_second_build_reuses_without_decoding(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths = corpus
    first = build_cache(root, paths, 32, tmp_path / "c", workers=1)

    def _no_decode(*args, **kwargs):
        raise AssertionError("decoded on reuse")

    monkeypatch.setattr(cache_mod, "decode_image", _no_decode)
    second = build_cache(root, paths, 32, tmp_path / "c", workers=1)
    assert second.reused and second.file == first.file
    assert second.paths == first.paths and second.skipped == first.skipped
    assert np.array_equal(second.images, first.images)


def test_default_cache_dir_used(corpus: tuple[Path, list[str]]) -> None:
    root, paths = corpus
    result = build_cache(root, paths[:2], 32, workers=1)
    assert result.file.parent == cache_dir_default()
    assert result.file.parent == Path(os.environ["IMGCLUSTER_CACHE_DIR"])


def test_key_changes_with_mtime_size_and_paths(corpus: tuple[Path, list[str]]) -> None:
    root, paths = corpus
    key = cache_key(root, paths, 32)
    assert key == cache_key(root, list(paths), 32) and len(key) == 24
    assert key != cache_key(root, paths, 96)
    assert key != cache_key(root, paths[:-1], 32)
    target = root / paths[0]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_key(root, paths, 32) != key


def test_a_scans_stamps_give_the_same_key(corpus: tuple[Path, list[str]]) -> None:
    """fit and assign key the cache with the scan's stat results instead of stat-ing again."""
    root, _ = corpus
    scan = scan_folder(root)
    assert set(scan.stamps) == set(scan.paths)
    for rel in scan.paths:
        st = (root / rel).stat()
        assert scan.stamps[rel] == (st.st_size, st.st_mtime_ns)
    assert cache_key(root, scan.paths, 32, scan.stamps) == cache_key(root, scan.paths, 32)
    edited = {**scan.stamps, scan.paths[0]: (1, 2)}
    assert cache_key(root, scan.paths, 32, edited) != cache_key(root, scan.paths, 32)
    # A path the stamps do not hold is stat-ed as before.
    fewer = {rel: scan.stamps[rel] for rel in scan.paths[1:]}
    assert cache_key(root, scan.paths, 32, fewer) == cache_key(root, scan.paths, 32)


def test_touched_file_rebuilds(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, paths = corpus
    first = build_cache(root, paths, 32, tmp_path / "c", workers=1)
    st = (root / paths[0]).stat()
    os.utime(root / paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = build_cache(root, paths, 32, tmp_path / "c", workers=1)
    assert not second.reused and second.file != first.file


@pytest.mark.parametrize("damage", ["truncate_npy", "bad_json", "no_json", "wrong_n"])
def test_torn_cache_is_rebuilt(corpus: tuple[Path, list[str]], tmp_path: Path, damage: str) -> None:
    root, paths = corpus
    first = build_cache(root, paths, 32, tmp_path / "c", workers=1)
    expected = np.array(first.images)
    manifest = first.file.with_suffix(".json")
    del first
    if damage == "truncate_npy":
        with open(manifest.with_suffix(".npy"), "r+b") as fh:
            fh.truncate(manifest.with_suffix(".npy").stat().st_size // 2)
    elif damage == "bad_json":
        manifest.write_text('{"format": 1, "paths": [')
    elif damage == "no_json":
        manifest.unlink()
    else:
        meta = json.loads(manifest.read_text())
        meta["n"] += 1
        manifest.write_text(json.dumps(meta))
    again = build_cache(root, paths, 32, tmp_path / "c", workers=1)
    assert not again.reused
    assert np.array_equal(again.images, expected)
    assert build_cache(root, paths, 32, tmp_path / "c", workers=1).reused


def test_all_fail_gives_empty_cache(tmp_path: Path) -> None:
    root = tmp_path / "junk"
    root.mkdir()
    for name in ("a.jpg", "b.png"):
        (root / name).write_text("junk")
    result = build_cache(root, ["a.jpg", "b.png"], 32, tmp_path / "c", workers=2)
    assert result.images.shape == (0, 3, 32, 32) and result.paths == []
    assert [p for p, _ in result.skipped] == ["a.jpg", "b.png"]
    assert build_cache(root, ["a.jpg", "b.png"], 32, tmp_path / "c").reused


def test_empty_path_list(tmp_path: Path) -> None:
    result = build_cache(tmp_path, [], 32, tmp_path / "c")
    assert result.images.shape == (0, 3, 32, 32) and result.skipped == []


def test_workers_match_in_process_byte_for_byte(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = data_root / "cifar10-test"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths = [f"{c}/{i:04d}.jpg" for c in classes for i in range(20)]
    one = build_cache(root, paths, 32, tmp_path / "w1", workers=1)
    pools: list[int] = []
    here: list[int] = []  # chunks this process decoded while its worker ran
    real_pool_chunks = workers._pool_chunks

    def _spy(remaining, do_here, task, n_workers, setup, setup_args):
        pools.append(n_workers)

        def counted(start: int, count: int):
            here.append(start)
            return do_here(start, count)

        yield from real_pool_chunks(remaining, counted, task, n_workers, setup, setup_args)

    monkeypatch.setattr(workers, "_pool_chunks", _spy)
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)  # use the pool even for 200 images
    calls: list[tuple[int, int]] = []
    two = build_cache(
        root,
        paths,
        32,
        tmp_path / "w2",
        workers=2,
        progress=lambda e: calls.append((e.done, e.total)),
    )
    assert pools == [2]
    # Besides the first chunk, this process decoded more while its worker started.
    assert here
    assert one.file.name == two.file.name  # same key: the worker count is not part of it
    assert two.paths == one.paths == paths
    assert one.file.read_bytes() == two.file.read_bytes()
    assert len(calls) > 2 and calls[-1] == (200, 200)


def test_small_job_starts_no_pool(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths = corpus
    monkeypatch.setattr(workers, "MIN_CHUNK", 2)
    monkeypatch.setattr(workers.cf, "ProcessPoolExecutor", None)  # any use would fail loudly
    result = build_cache(root, paths, 32, tmp_path / "c", workers=4)
    assert len(result.paths) == len(paths) - 2


def test_pool_failure_falls_back_in_process(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths = corpus

    def _no_processes(*args, **kwargs):
        raise OSError("process creation not permitted")

    monkeypatch.setattr(workers.cf, "ProcessPoolExecutor", _no_processes)
    monkeypatch.setattr(workers, "MIN_CHUNK", 1)  # several chunks even for a tiny corpus
    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)
    one = build_cache(root, paths, 32, tmp_path / "one", workers=1)
    result = build_cache(root, paths, 32, tmp_path / "c", workers=2)
    assert result.paths == one.paths and result.skipped == one.skipped
    assert np.array_equal(result.images, one.images)


def test_default_image_size(data_root: Path, tmp_path: Path) -> None:
    cifar = data_root / "cifar10-test"
    assert default_image_size(cifar, ["cat/0000.jpg", "dog/0001.jpg"]) == 32
    net = data_root / "imagenette-val"
    assert default_image_size(net, ["English_springer/n02102040_1980.JPEG"]) == 96
    for i, side in enumerate([40, 48, 48, 200, 30]):
        Image.new("RGB", (side, 300)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_text("x")
    names = ["bad.png"] + [f"{i}.png" for i in range(5)]
    assert default_image_size(tmp_path, names) == 32  # median shorter side 48
    assert default_image_size(tmp_path, ["bad.png"]) == 96
    assert default_image_size(tmp_path, []) == 96


def test_cache_dir_default_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGCLUSTER_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir_default() == tmp_path / "explicit"
    monkeypatch.delenv("IMGCLUSTER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir_default() == tmp_path / "xdg" / "imgcluster"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir_default() == tmp_path / "home" / ".cache" / "imgcluster"


def test_data_path_does_not_import_torch() -> None:
    code = (
        "import sys, imgcluster.data.cache, imgcluster.data.scan; sys.exit('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
    )


def test_a_full_disk_is_one_error_and_leaves_nothing(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are written with plain writes, so a full disk is an OSError (a memory map would
    die of SIGBUS), and the half-built array is removed."""
    root, paths = corpus

    def full(fh, data):  # noqa: ANN001
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod, "_write_all", full)
    folder = tmp_path / "c"
    with pytest.raises(cache_mod.CacheWriteError, match="No space left"):
        build_cache(root, paths, 32, folder, workers=1)
    assert list(folder.iterdir()) == []


def test_a_failed_final_fsync_fails_the_build(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk can show only when pages are written back, at the array's fsync: that
    error ends the build like a failed write, no manifest vouches for the array, and the
    half-built array is removed."""
    root, paths = corpus

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod.os, "fsync", full)
    folder = tmp_path / "c"
    with pytest.raises(cache_mod.CacheWriteError, match="No space left"):
        build_cache(root, paths, 32, folder, workers=1)
    assert list(folder.iterdir()) == []


def test_a_worker_that_cannot_write_is_not_retried_here(
    data_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write error, in a worker or here, ends the build: decoding here instead would hit
    the same disk. A worker's error reaches this process pickled, and keeps its type."""
    back = pickle.loads(pickle.dumps(cache_mod.CacheWriteError(errno.ENOSPC, "full")))
    assert isinstance(back, cache_mod.CacheWriteError) and back.errno == errno.ENOSPC
    root = data_root / "cifar10-test"
    paths = [f"cat/{i:04d}.jpg" for i in range(40)]
    gone = cache_mod.ArrayFile(str(tmp_path / "removed.npy"), 128, 3 * 32 * 32)

    def task(start: int, count: int) -> workers.Task:
        batch = paths[start : start + count]
        return cache_mod.decode_chunk_into, (str(root), batch, start, 32, gone)

    monkeypatch.setattr(workers, "POOL_MIN_SECONDS", 0.0)
    # The probe (done here) succeeds; every later chunk is queued for the worker, which fails.
    chunks = workers.share_chunks(
        len(paths), 2, lambda start, count: (count, []), task, fatal=(cache_mod.CacheWriteError,)
    )
    with pytest.raises(cache_mod.CacheWriteError):
        list(chunks)
    assert "going on in this process" not in caplog.text


def test_clear_removes_only_the_caches_files(tmp_path: Path) -> None:
    from conftest import dead_pid
    from typer.testing import CliRunner

    from imgcluster.cli import app
    from imgcluster.data.cache_folder import cache_files, clear_cache

    key = "0123456789abcdef01234567"
    killed = f"{key}.npy.tmp-{dead_pid()}"  # a build whose process is gone
    ours = [tmp_path / f"{key}.npy", tmp_path / f"{key}.json", tmp_path / killed]
    theirs = [tmp_path / "notes.txt", tmp_path / "photo.npy", tmp_path / f"{key}.npy.bak"]
    for f in ours + theirs:
        f.write_bytes(b"x" * 10)
    assert cache_files(tmp_path) == sorted(ours)
    shown = CliRunner().invoke(app, ["cache", "--cache-dir", str(tmp_path)])
    assert shown.exit_code == 0 and "1 cached image set," in " ".join(shown.output.split())
    live = tmp_path / f"{key}.npy.tmp-{os.getpid()}"  # a build in progress: kept
    live.write_bytes(b"x")
    assert clear_cache(tmp_path) == (3, 30)
    assert sorted(tmp_path.iterdir()) == sorted([*theirs, live])
