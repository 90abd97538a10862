"""Progress: the one event type the library reports through, and its callback signature.

The library never prints. Every long job takes a ``callback`` and calls it with
:class:`Progress` events; the command line draws them (one adapter for every command). Stages:

- ``decode``: images decoded into the cache (done of total images);
- ``views``: images whose views a frozen backbone has computed (done of total images);
- ``train``: steps of the current epoch, ``info["loss"]``;
- ``labels``: the label update after an epoch has begun;
- ``epoch``: an epoch ended, ``info`` is its history.jsonl record;
- ``assign``: images run through the exported model;
- ``export``: images written into the cluster folders;
- ``run_dir``: the run directory was chosen, ``info["path"]``;
- ``message``: a line for the user, ``info["text"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    """One report: a stage, how far it is (``done`` of ``total``) and stage-specific facts."""

    stage: str
    done: int = 0
    total: int = 0
    info: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[Progress], None]


def silent(_: Progress) -> None:
    """The callback of a caller that wants no progress."""


def message(callback: Callback, text: str, detail: bool = False) -> None:
    """Tell the user one line through ``callback``; ``detail``: an internal check that the
    command line shows only with ``--verbose``."""
    callback(Progress("message", info={"text": text, "detail": detail}))
