"""The ``imgcluster`` command line: options → config → one library call → a rich summary.

Only this package prints. One module per command; :mod:`imgcluster.cli.app` holds the app and
what every command shares, :mod:`imgcluster.cli.progress` draws the library's progress events.
Heavy libraries (torch, faiss, onnxruntime) are imported inside the commands, so ``--help``
stays instant.
"""

from __future__ import annotations

import sys

from imgcluster.cli import assign, cache, demo, evaluate, fit  # noqa: F401  (each adds its command)
from imgcluster.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    # Into a log file, results (stdout) and progress (stderr) keep their order: each line is
    # written as it comes, not when a buffer fills.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and not stream.isatty():
            reconfigure(line_buffering=True)
    app()
