"""Checkpoints: the whole training state in one file, written atomically, loaded safely.

``torch.save`` into memory, then an atomic write: a run killed at any moment keeps its last
checkpoint. Loading uses ``torch.load(weights_only=True)``: a checkpoint whose pickle would run
code is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from imgcluster.atomic import atomic_write_bytes
from imgcluster.config import RunConfig
from imgcluster.errors import RunError


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


# Settings a checkpoint cannot survive a change of (they fix the shapes of its state).
STRUCTURAL = (
    ("data", "source"),
    ("data", "benchmark"),
    ("data", "image_size"),
    ("model", "backbone"),
    ("model", "feature_dim"),
    ("model", "projector_bn"),
    ("model", "init"),
    ("model", "freeze_encoder"),
    ("scl", "k"),
    ("scl", "method"),
    ("scl", "memory_size"),
)


def check_resumable(saved: RunConfig, current: RunConfig) -> None:
    """Refuse a resume whose settings would not fit the checkpoint, naming the setting."""
    for section, name in STRUCTURAL:
        old = getattr(getattr(saved, section), name)
        new = getattr(getattr(current, section), name)
        if new not in (None, "", "auto") and old != new:
            raise RunError(
                f"cannot resume: {name.replace('_', '-')} was {old!r} in the checkpoint, "
                f"now {new!r} (start a new run with another --out instead)"
            )
