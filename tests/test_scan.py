"""Tests for imgcluster.data.scan: which entries of a folder tree become candidate images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from imgcluster.data.scan import IMAGE_EXTENSIONS, scan_folder


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, "PNG")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A source folder with every kind of entry the scanner must handle."""
    root = tmp_path / "src"
    for rel in [
        "a.jpg",
        "B.JPG",
        "sub/c.png",
        "sub/deep/d.webp",
        "with space, comma é.png",
        "dir.jpg/f.png",  # a folder named like an image
        ".hidden.jpg",
        ".hiddendir/e.jpg",
        "out/g.jpg",  # the run's output folder inside the source
    ]:
        _img(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    outside = _img(tmp_path / "outside" / "x.jpg").parent
    os.symlink(root, root / "sub" / "cycle")  # folder link back up: a cycle
    os.symlink(root / "missing.png", root / "broken.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")  # a link to itself
    os.symlink(root / "a.jpg", root / "inside_link.jpg")
    os.symlink(outside / "x.jpg", root / "outside_link.jpg")
    os.symlink(outside, root / "linkdir")
    return root


def test_scan_default(tree: Path) -> None:
    result = scan_folder(tree, exclude=[tree / "out"])
    assert result.root == tree
    assert result.paths == [
        "B.JPG",
        "a.jpg",
        "dir.jpg/f.png",
        "inside_link.jpg",
        "sub/c.png",
        "sub/deep/d.webp",
        "with space, comma é.png",
    ]
    assert result.skipped == [
        ("broken.jpg", "broken symlink"),
        ("empty.jpg", "empty file"),
        ("loop.jpg", "broken symlink"),
        ("outside_link.jpg", "symlink leaves the source folder"),
    ]


def test_exclude_is_optional_and_resolved(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "out/g.jpg" in scan_folder(tree).paths
    monkeypatch.chdir(tree)
    assert "out/g.jpg" not in scan_folder(Path("."), exclude=[Path("out")]).paths


def test_follow_links(tree: Path) -> None:
    result = scan_folder(tree, exclude=[tree / "out"], follow_links=True)
    # The cycle back to the root is entered zero times; the outside folder once.
    assert "linkdir/x.jpg" in result.paths and "outside_link.jpg" in result.paths
    assert not any(p.startswith("sub/cycle") for p in result.paths)
    assert ("outside_link.jpg", "symlink leaves the source folder") not in result.skipped


def test_follow_links_cycle_between_folders(tmp_path: Path) -> None:
    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "b" / "2.png")
    os.symlink(tmp_path / "b", tmp_path / "a" / "to_b")
    os.symlink(tmp_path / "a", tmp_path / "b" / "to_a")
    result = scan_folder(tmp_path, follow_links=True)
    assert sorted(result.paths) == result.paths
    assert set(result.paths) == {"a/1.png", "b/2.png"}


def test_excluded_root_is_empty(tree: Path) -> None:
    assert scan_folder(tree, exclude=[tree]).paths == []


def test_missing_and_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_folder(tmp_path / "nope")
    file = _img(tmp_path / "f.png")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        scan_folder(file)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path: Path) -> None:
    locked = _img(tmp_path / "locked.png")
    locked.chmod(0)
    try:
        result = scan_folder(tmp_path)
    finally:
        locked.chmod(0o644)
    assert result.paths == []
    assert result.skipped == [("locked.png", "unreadable (permission denied)")]


def test_extensions_are_decodable_by_pillow() -> None:
    registered = Image.registered_extensions()
    for ext in IMAGE_EXTENSIONS:
        assert ext == ext.lower() and ext.startswith(".")
        assert ext in registered


def test_real_folder(data_root: Path) -> None:
    result = scan_folder(data_root / "cifar10-test")
    assert len(result.paths) == 10_000 and result.skipped == []
    # Class folders reuse file names: they must all survive as distinct relative paths.
    assert "cat/0000.jpg" in result.paths and "dog/0000.jpg" in result.paths
    assert result.paths == sorted(result.paths)
