"""The decode cache's folder: where it is, which of its files are the cache's, clearing it.

Never imports torch or numpy: ``imgcluster cache`` only lists and deletes files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from imgcluster.atomic import process_alive


def cache_dir_default() -> Path:
    """The cache folder: ``$IMGCLUSTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgcluster``, else
    ``~/.cache/imgcluster``."""
    explicit = os.environ.get("IMGCLUSTER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return Path(xdg) / "imgcluster"
    return Path.home() / ".cache" / "imgcluster"


# The files of one cached array: <key>.npy, its manifest <key>.json, and temporaries
# <key>.npy.tmp-<pid> of builds in progress (or killed); key = 24 hex digits (cache_key).
_CACHE_FILE = re.compile(r"[0-9a-f]{24}\.(npy|json|npy\.tmp-\d+.*)")


def cache_files(folder: Path) -> list[Path]:
    """The files imgcluster's decode cache holds in ``folder`` (nothing else that is there)."""
    try:
        return sorted(p for p in Path(folder).iterdir() if _CACHE_FILE.fullmatch(p.name))
    except OSError:
        return []


def clear_cache(folder: Path) -> tuple[int, int]:
    """Delete the cache's files in ``folder`` (see :func:`cache_files`), leaving any other file
    alone; returns (files, bytes) removed. A build in progress by a live process is kept."""
    removed = size = 0
    for path in cache_files(folder):
        pid = path.name.rpartition(".tmp-")[2].split("-")[0] if ".tmp-" in path.name else ""
        if pid.isdigit() and process_alive(int(pid)):
            continue
        try:
            nbytes = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed, size = removed + 1, size + nbytes
    return removed, size
