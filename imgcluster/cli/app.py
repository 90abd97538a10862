"""The typer app, its consoles, and the one way a command reports an error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from imgcluster import __version__


def _switches_show_no_type() -> None:
    """Show switches as switches: typer's rich help prints a type beside every option, flags
    included (``--help <bool>``, ``--compile/--no-compile <bool>``), though a flag takes no
    value. A flag's type column is left empty instead (typers without this hook need nothing)."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "switches_show_no_type", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.switches_show_no_type = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_switches_show_no_type()
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
