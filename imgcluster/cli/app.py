"""The typer app, its consoles, and the one way a command reports an error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from imgcluster import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    help="Find the natural groups in a folder of unlabelled images (Semantic Contrastive "
    "Learning).",
)
console = Console(stderr=True)  # progress and errors
out_console = Console()  # results


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr and a non-zero exit: the only way a command reports an error."""
    # Escaped: paths in messages may hold "[...]", which rich would read as (broken) markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(interrupted: str = "interrupted") -> Iterator[None]:
    """A library RunError becomes one error line; Ctrl-C exits 130 with ``interrupted``."""
    from imgcluster.errors import RunError

    try:
        yield
    except RunError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(interrupted, 130)


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def print_problems(problems: list[Any]) -> None:
    """Each sign of a poor clustering with its remedy, in yellow, on stdout with the results."""
    for p in problems:
        out_console.print(f"[bold yellow]warning:[/] {escape(p.message)}; {escape(p.remedy)}")


def exit_if_strict(problems: list[Any], strict: bool) -> None:
    """``--strict``: a clustering with problems exits with status 3 (the run itself is kept)."""
    if strict and problems:
        raise typer.Exit(3)


def start_decoders(workers: int | None) -> None:
    """Start the decode workers' server now, so that it loads while torch or onnxruntime does:
    the decode then finds it ready (it takes ~0.4 s to start, ~15 % of decoding 10,000 small
    JPEGs). A folder too small for workers, or an existing decode cache, leaves it idle."""
    from imgcluster.data.workers import decoder_count, start_worker_server

    if decoder_count(workers) > 1:
        start_worker_server()


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"imgcluster {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """imgcluster: fit → assign → eval on a folder of images."""
