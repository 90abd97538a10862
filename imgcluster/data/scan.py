"""Find the image files under a source folder.

Scope: walking the folder tree and deciding which entries are candidate images (by extension),
which are passed over silently (hidden entries, other files, excluded folders, imgcluster's own
run directories and export folders) and which are reported as unusable (broken or escaping
symlinks, unreadable or empty files). Decoding is not done here: see :mod:`imgcluster.data.decode`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgcluster.rundir import CONFIG, FOLDERS_MANIFEST, HISTORY

# Every extension Pillow decodes that people use for photos or datasets.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
    }
)

REASON_BROKEN_LINK = "broken symlink"
REASON_LEAVES_ROOT = "symlink leaves the source folder"
REASON_UNREADABLE = "unreadable (permission denied)"
REASON_UNREADABLE_DIR = "unreadable folder (permission denied)"
REASON_EMPTY = "empty file"
REASON_NOT_REGULAR = "not a regular file"

Stamp = tuple[int, int]  # a file's (byte size, mtime in ns)

# A folder holding all the files of one set is imgcluster's own output (a run directory, an
# export folder): never clustered, wherever it sits in the source.
OUTPUT_MARKERS: tuple[tuple[str, ...], ...] = ((CONFIG, HISTORY), (FOLDERS_MANIFEST,))


@dataclass(frozen=True)
class ScanResult:
    """Outcome of :func:`scan_folder`.

    ``paths`` are posix-style, relative to ``root`` and sorted; ``skipped`` holds
    ``(relative path, reason)`` for image-looking entries that cannot be used. ``stamps``
    gives each path's ``(byte size, mtime in ns)`` as the scan saw them: the decode cache's
    key is made of them, so the files need not be stat-ed a second time.
    """

    root: Path
    paths: list[str]
    skipped: list[tuple[str, str]]
    stamps: dict[str, Stamp] = field(default_factory=dict)


def is_image_name(name: str) -> bool:
    """True when ``name`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_within(path: str, folder: str) -> bool:
    """True when real path ``path`` equals or lies under real path ``folder``."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class _Walk:
    """Per-call state of one scan (kept off module level on purpose)."""

    root_real: str
    excluded: list[str]
    follow_links: bool
    paths: list[str]
    skipped: list[tuple[str, str]]
    visited: set[tuple[int, int]]
    stamps: dict[str, Stamp] = field(default_factory=dict)

    def is_excluded(self, real: str) -> bool:
        return any(_is_within(real, ex) for ex in self.excluded)


def scan_folder(
    root: Path, *, exclude: Sequence[Path] = (), follow_links: bool = False
) -> ScanResult:
    """Recursively list the candidate image files under ``root``.

    Folders in ``exclude`` (and everything below them) are left out, e.g. a run's output folder
    that sits inside the source. Symlinked folders are only entered with ``follow_links``;
    symlink cycles are detected by (device, inode) so the walk always ends.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"source folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"source is not a folder: {root}")
    walk = _Walk(
        root_real=os.path.realpath(root),
        excluded=[os.path.realpath(p) for p in exclude],
        follow_links=follow_links,
        paths=[],
        skipped=[],
        visited=set(),
    )
    if not walk.is_excluded(walk.root_real):
        st = os.stat(root)
        walk.visited.add((st.st_dev, st.st_ino))
        _walk_tree(walk, str(root))
    return ScanResult(root, sorted(walk.paths), sorted(walk.skipped), walk.stamps)


def _walk_tree(walk: _Walk, top: str) -> None:
    """Depth-first walk with an explicit stack, so deep trees cannot hit the recursion limit."""
    stack: list[tuple[str, str]] = [(top, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError:
            walk.skipped.append((prefix.rstrip("/") or ".", REASON_UNREADABLE_DIR))
            continue
        except OSError:
            # Vanished or otherwise unlistable mid-walk: nothing usable in it.
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            sub = _visit(walk, entry, rel)
            if sub is not None:
                stack.append((entry.path, rel + "/"))


def _visit(walk: _Walk, entry: os.DirEntry[str], rel: str) -> str | None:
    """Classify one entry; return its path when it is a folder to descend into."""
    try:
        if entry.is_symlink():
            return _visit_link(walk, entry, rel)
        if entry.is_dir(follow_symlinks=False):
            return _enter_dir(walk, entry.path, os.path.realpath(entry.path))
    except OSError:
        return None
    if is_image_name(entry.name):
        _add_file(walk, entry.path, rel)
    return None


def _visit_link(walk: _Walk, entry: os.DirEntry[str], rel: str) -> str | None:
    """Symlinks: follow folders only when asked; files must stay inside the root unless asked."""
    looks_like_image = is_image_name(entry.name)
    try:
        target = os.stat(entry.path)  # follows the link; fails for dangling links and loops
    except OSError:
        if looks_like_image:
            walk.skipped.append((rel, REASON_BROKEN_LINK))
        return None
    real = os.path.realpath(entry.path)
    if stat.S_ISDIR(target.st_mode):
        return _enter_dir(walk, entry.path, real) if walk.follow_links else None
    if not looks_like_image or walk.is_excluded(real):
        return None
    if not walk.follow_links and not _is_within(real, walk.root_real):
        walk.skipped.append((rel, REASON_LEAVES_ROOT))
        return None
    _add_file(walk, entry.path, rel)
    return None


def is_output_folder(path: str | Path) -> bool:
    """True when ``path`` is a run directory or export folder that imgcluster wrote."""
    return any(all(os.path.isfile(os.path.join(path, m)) for m in ms) for ms in OUTPUT_MARKERS)


def _enter_dir(walk: _Walk, path: str, real: str) -> str | None:
    """Return ``path`` when the folder should be walked: not excluded, not imgcluster's own
    output and not seen before."""
    if walk.is_excluded(real) or is_output_folder(path):
        return None
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    if key in walk.visited:
        return None
    walk.visited.add(key)
    return path


def _add_file(walk: _Walk, path: str, rel: str) -> None:
    """Accept an image-named file, or record why it cannot be used."""
    try:
        st = os.stat(path)
    except OSError:
        walk.skipped.append((rel, REASON_UNREADABLE))
        return
    if not stat.S_ISREG(st.st_mode):
        walk.skipped.append((rel, REASON_NOT_REGULAR))
    elif st.st_size == 0:
        walk.skipped.append((rel, REASON_EMPTY))
    elif not os.access(path, os.R_OK):
        walk.skipped.append((rel, REASON_UNREADABLE))
    else:
        walk.paths.append(rel)
        walk.stamps[rel] = (st.st_size, st.st_mtime_ns)
