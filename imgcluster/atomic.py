"""Writing files so that a kill at any moment leaves the old file or the new one, never a mix.

A temporary file in the same folder, fsync, rename; temporaries of killed writers are removed
by the next write. Used by the run directory, the decode cache and the cluster folders.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from imgcluster.errors import RunError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`replace_atomically`, a failure reported as a one-line :class:`RunError`."""
    try:
        replace_atomically(path, data)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from e


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never a mix.

    The data reach the disk (fsync) before the rename. The temporary file of an earlier write
    to ``path`` whose process was killed (SIGKILL leaves no time to clean up; a checkpoint's
    may be large) is removed first. Raises ``OSError`` (a full disk, say), leaving no
    temporary behind.
    """
    path = Path(path)
    remove_dead_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_dead_temporaries(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>``, the temporaries of atomic writes to ``path`` by processes
    that no longer exist. A live writer's temporary (another command at work) is left alone."""
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) :]
        if pid.isdigit() and not process_alive(int(pid)):
            # Gone already, or not ours to remove: the write goes on regardless.
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()


def process_alive(pid: int) -> bool:
    """True unless process ``pid`` surely no longer exists (unknown on non-POSIX systems, where
    ``os.kill`` would end the process)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def fsync_dir(folder: Path) -> None:
    """Make the renames into ``folder`` durable; not possible (nor needed) on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
