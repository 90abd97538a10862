"""``imgcluster cache``: where the decode cache is, how big, and clearing it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from imgcluster.cli.app import app, out_console, plural


@app.command("cache")
def cache(
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="The cache folder \\[default: ~/.cache/imgcluster]."
    ),
    clear: bool = typer.Option(
        False,
        "--clear",
        help="Delete the cached images (runs and images are untouched).",
        metavar="",
    ),  # fmt: skip
) -> None:
    """Show the decode cache's folder and size; --clear empties it."""
    from imgcluster.data.cache_folder import cache_dir_default, cache_files, clear_cache

    folder = cache_dir if cache_dir is not None else cache_dir_default()
    where = escape(str(folder))
    if clear:
        files, size = clear_cache(folder)
        out_console.print(f"removed {plural(files, 'file')} ({size / 1e6:,.1f} MB) from {where}")
        return
    files = cache_files(folder)
    arrays = sum(1 for f in files if f.suffix == ".npy")
    size = sum(f.stat().st_size for f in files if f.exists())
    out_console.print(
        f"decode cache: [bold]{where}[/]: {plural(arrays, 'cached image set')}, "
        f"{size / 1e6:,.1f} MB (imgcluster cache --clear empties it; a later fit decodes again)"
    )
