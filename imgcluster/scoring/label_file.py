"""Reading a labels file: the true class of each image, for ``imgcluster eval``.

Accepted: a header row naming a path column (``path``, ``filepath``, ``file``, ``filename`` or
``image``, any letter case) and a ``label`` column, in any order among other columns; UTF-8 with
or without a byte-order mark; comma- or tab-separated (told apart by the header row). Blank lines
are ignored. Anything else is a :class:`imgcluster.RunError` with a one-line message that
names the file and, for a bad row, its line number. How the paths are matched to images is
:mod:`imgcluster.scoring.evaluate`'s business.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from imgcluster.errors import RunError

PATH_COLUMNS: tuple[str, ...] = ("path", "filepath", "file", "filename", "image")
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class LabelsFile:
    """The rows of one labels file: ``(path as written, label)``, in file order."""

    file: Path
    rows: list[tuple[str, str]]


def read_labels(file: Path) -> LabelsFile:
    """Parse ``file``; raise :class:`RunError` for an unreadable or malformed file."""
    file = Path(file)
    text = _read_text(file)
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise RunError(f"{file} is empty: it needs a header row such as 'path,label'")
    delimiter = "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[str, str]] = []
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip().lower() for f in fields]
            path_col, label_col = _columns(file, header)
            continue
        rows.append(_row(file, reader.line_num, fields, len(header), path_col, label_col))
    if not rows:
        raise RunError(f"{file} has a header but no rows")
    return LabelsFile(file, rows)


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except IsADirectoryError:
        raise RunError(f"cannot read labels {file}: it is a folder") from None
    except OSError as e:
        raise RunError(f"cannot read labels {file}: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")  # strips a byte-order mark if there is one
    except UnicodeDecodeError as e:
        raise RunError(f"cannot read labels {file}: not UTF-8 text (byte {e.start})") from e


def _columns(file: Path, header: list[str]) -> tuple[int, int]:
    """Indices of the path and label columns, or a RunError naming what is missing."""
    found = ", ".join(h for h in header if h) or "nothing"
    path_col = next((header.index(name) for name in PATH_COLUMNS if name in header), None)
    if path_col is None:
        raise RunError(
            f"{file} has no path column: its header needs one of {', '.join(PATH_COLUMNS)} "
            f"(found: {found})"
        )
    if LABEL_COLUMN not in header:
        raise RunError(f"{file} has no label column: its header needs 'label' (found: {found})")
    return path_col, header.index(LABEL_COLUMN)


def _row(
    file: Path, line: int, fields: list[str], width: int, path_col: int, label_col: int
) -> tuple[str, str]:
    """One ``(path, label)``; a short row or an empty path or label is an error."""
    if len(fields) <= max(path_col, label_col):
        raise RunError(f"{file}, line {line}: {len(fields)} field(s), the header has {width}")
    path, label = fields[path_col].strip(), fields[label_col].strip()
    if not path:
        raise RunError(f"{file}, line {line}: empty path")
    if not label:
        raise RunError(f"{file}, line {line}: empty label for {path}")
    return path, label
