"""The training device, resolved once, and the image cache as seen from it.

On a GPU the whole uint8 cache is copied to device memory when it fits (CIFAR-10 at 32 px is
150 MB), so a step never waits on the host; otherwise batches are gathered on the host and sent
from pinned memory. On a CPU batches are gathered straight from the memory-mapped cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

# Share of free GPU memory the resident cache may take (the model and activations need the rest).
GPU_CACHE_SHARE = 0.3


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)


def use_fast_kernels(device: torch.device) -> None:
    """On a GPU: cuDNN's autotuner (every batch has the same shape, so its one search per
    layer pays back at once) and TF32 for the float32 matrix products left outside autocast.
    Nothing changes on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def compile_pays(device: torch.device) -> bool:
    """Whether ``--compile``'s default is on: on a CUDA GPU whose torch has Triton (measured on
    an H100: 1.2-1.9x the eager trainer, after ~25 s of compiling); never on a CPU."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU; nothing on a CPU (mixed precision only on GPU)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class DeviceImages:
    """Batches of uint8 N×3×S×S images on the training device."""

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        self.images, self.device = images, device
        self.resident: Tensor | None = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes < GPU_CACHE_SHARE * free:
                # np.array: one host copy of the read-only memmap, which torch cannot wrap
                self.resident = torch.from_numpy(np.array(images)).to(device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: Tensor) -> Tensor:
        """Images ``idx`` (n, long, on the CPU) → uint8 n×3×S×S on the device."""
        if self.resident is not None:
            return self.resident[idx.to(self.device, non_blocking=True)]
        host = torch.from_numpy(self.images[idx.numpy()])
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host

    def sequential(
        self, batch_size: int, indices: Tensor | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(indices, images) over all N in order (or over ``indices``, a rank's share), for
        prediction."""
        if indices is None:
            indices = torch.arange(len(self))
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield idx, self.batch(idx)
