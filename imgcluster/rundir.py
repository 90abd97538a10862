"""The run directory: what ``fit`` leaves behind and every later command reads.

Layout (DESIGN.md): config.json, checkpoint.pt, history.jsonl, assignments.csv, skipped.csv.
Every file is written atomically (temporary file in the same folder, fsync, rename), so a run
killed at any moment leaves the old file or the new one, never a torn one. Checkpoints load with
``torch.load(weights_only=True)``: a checkpoint whose pickle would run code is refused.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
ASSIGNMENTS = "assignments.csv"
SKIPPED = "skipped.csv"
LABELS = "labels.csv"  # benchmark runs: the true class of every image, for ``eval``
REPORT = "report"
MODEL = "model.onnx"  # written by ``export`` (and at the end of ``fit``), read by ``assign``


class RunError(Exception):
    """A problem the user can fix; its message is one line for the command line."""


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


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from e


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every complete line of history.jsonl (a torn last line is ignored)."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def write_history(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite the whole history (one JSON object per line) atomically."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # quotes commas, quotes and newlines in names
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_assignments(
    path: Path, paths: Sequence[str], clusters: np.ndarray, confidence: np.ndarray
) -> None:
    """assignments.csv: path, cluster, confidence (six decimals), one row per image."""
    rows = [(p, int(c), f"{float(s):.6f}") for p, c, s in zip(paths, clusters, confidence)]
    atomic_write_text(path, _csv_text(("path", "cluster", "confidence"), rows))


def read_assignments(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, clusters, confidence) from an assignments.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    clusters = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
    confidence = np.array([float(r["confidence"]) for r in rows], dtype=np.float64)
    return paths, clusters, confidence


def write_labels(path: Path, paths: Sequence[str], labels: Sequence[str]) -> None:
    """labels.csv: path, label (the format ``imgcluster eval --labels`` reads)."""
    atomic_write_text(path, _csv_text(("path", "label"), list(zip(paths, labels))))


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """skipped.csv: path, reason for every file that looked like an image but was not used."""
    atomic_write_text(path, _csv_text(("path", "reason"), skipped))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save into memory, then an atomic write: a kill never leaves a torn checkpoint."""
    import torch  # here, not at the top: eval and assign read run directories without torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``; anything that would run code is refused."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RunError(
            f"refusing to load {path}: it is not a plain imgcluster checkpoint "
            "(its pickle asks to run code)"
        ) from e
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise RunError(f"cannot read checkpoint {path}: {e}") from e


def numbered_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``… if that exists already."""
    candidate, n = base / name, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{name}-{n}"
    return candidate


def is_run_dir(path: Path) -> bool:
    """A folder that a previous ``fit`` wrote into."""
    return (path / CONFIG).exists() or (path / CHECKPOINT).exists()


def latest_run(base: Path = Path("runs"), needs: str = ASSIGNMENTS) -> Path:
    """The run directory under ``base`` whose file ``needs`` was written last.

    Raises :class:`RunError` when no run under ``base`` has that file.
    """
    candidates = [p / needs for p in _subfolders(Path(base)) if (p / needs).is_file()]
    if not candidates:
        raise RunError(f"no run with {needs} under {base}/: give the run directory with --run")
    return max(candidates, key=lambda f: f.stat().st_mtime_ns).parent


def _subfolders(base: Path) -> list[Path]:
    try:
        return [p for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []
