"""Rich progress bars for the library's :class:`imgcluster.events.Progress` events: the one
adapter every command uses."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from imgcluster.events import Progress as Event

# Bars by stage: (the bar's key, its label). Training steps and epochs have bars of their own.
_BARS = {"decode": ("decode", "decode"), "views": ("views", "views"),
         "train": ("steps", "steps"),
         "epoch": ("epochs", "epochs"), "assign": ("assign", "assign"),
         "export": ("export", "export")}  # fmt: skip


class Bars:
    """One bar per stage (decode, views, steps, epochs, assign, export) and the library's
    messages.

    Use as a context manager and pass :meth:`update` as the library's callback.
    """

    def __init__(self, con: Console, verbose: bool = False) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=con,
        )
        self.tasks: dict[str, Any] = {}
        self.run_dir: str | None = None
        self.verbose = verbose  # also the library's internal checks (detail messages)

    def __enter__(self) -> Bars:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, event: Event) -> None:
        """Draw one event."""
        if event.stage == "run_dir":
            self.run_dir = event.info["path"]
        elif event.stage == "message":
            if self.verbose or not event.info.get("detail"):
                self.bar.console.print(escape(event.info["text"]))
        elif event.stage in _BARS:
            key, label = _BARS[event.stage]
            if key not in self.tasks:
                self.tasks[key] = self.bar.add_task(label, total=event.total, info="")
            self.bar.update(self.tasks[key], completed=event.done, total=event.total,
                            info=_info(event))  # fmt: skip


def _info(event: Event) -> str:
    """The text after a bar: the loss while training, speed and flips after each epoch."""
    r = event.info
    if event.stage == "train":
        return f"loss {r['loss']:.3f}"
    if event.stage == "epoch":
        flips = r.get("label_flips", 0)
        return f"loss {r['loss']:.3f}  {r['images_per_s']:.0f} img/s  flips {flips}"
    return ""
