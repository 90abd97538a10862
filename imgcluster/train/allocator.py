"""Keep the heap memory that a training step frees, so the next step does not fault it back in.

Why: every step allocates and frees the same hundreds of megabytes of tensors (activations,
gradients, the memories' logits). With its default settings glibc's malloc serves a large block
with a fresh memory mapping and unmaps it when it is freed, and gives the free top of its heap
back to the kernel; the next step then touches new pages, which the kernel maps and zero-fills
one 4 KiB page fault at a time. Measured on 2 cores, small net at 32 px: at batch 128, about
11,000 faults and 36 ms of kernel time per training step; at batch 256 (fit's default), about
42,000 faults and 146 ms, on a step of 0.58 s. With the settings below: none, and the
batch-256 step takes 0.50 s (docs/benchmarks.md).

The settings: no block is served by its own mapping (``M_MMAP_MAX`` 0), and the heap is never
trimmed (``M_TRIM_THRESHOLD`` −1), so freed memory stays in the process for the next step. Two
things keep the peak close to where it was (within tens of MiB): the label update predicts in
training-sized batches on a CPU (its tensors then fit the blocks the steps freed), and
:func:`release_free_memory` hands the kept pages back once training ends, before the export.
Measured over 30 epochs, the resident size stays flat after the fourth. Memory freed by a
library user's own code after training in the same process is kept until the next release or
the process's end.

Only glibc is tuned (musl, macOS and Windows are left alone), and not when the user tunes
malloc through its environment variables (``MALLOC_*_`` or ``GLIBC_TUNABLES``), which then win.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

__all__ = ["release_free_memory", "retain_freed_memory"]

# mallopt parameters, from glibc's <malloc.h>, and the values set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # no mappings; never trim
_USER_SETTINGS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)


def retain_freed_memory() -> bool:
    """Tune this process's glibc malloc as the module docstring says; True if it was done.

    Idempotent, and process-wide: it holds for every later allocation of any thread.
    """
    libc = _glibc()
    if libc is None or _user_tuned(os.environ):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Either also switches off glibc's moving mmap threshold; mallopt returns 1 on success.
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system now (glibc's ``malloc_trim``); True if
    any were.

    For the end of training: what comes after it (the ONNX export, the report) then starts
    from the memory still in use instead of adding its own to the pages kept for the steps.
    """
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    except OSError:
        return None
    # musl has a mallopt that does nothing, and no gnu_get_libc_version.
    ok = all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    return libc if ok else None


def _user_tuned(env: Mapping[str, str]) -> bool:
    """Whether the environment already sets glibc's malloc thresholds."""
    return any(name in env for name in _USER_SETTINGS) or "glibc.malloc." in env.get(
        "GLIBC_TUNABLES", ""
    )
