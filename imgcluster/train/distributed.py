"""Data-parallel training across processes, as torchrun launches it: the process group and its
collectives.

Scope: reading torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joining and
leaving the process group (NCCL on GPUs, each rank on ``cuda:LOCAL_RANK``; gloo on CPUs), the few
collectives training needs (gather rows, broadcast tensors and small objects, average), "rank 0
first" for work with side effects, and the plan of MoCo's shuffle-BN for the momentum encoder's
keys (He et al., "Momentum Contrast", CVPR 2020, Sec. 3.3; facebookresearch/moco ``builder.py``).

With one process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) no process group is started and every
helper returns its input unchanged: the single-process path runs exactly as it always did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world(environ: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
    env = os.environ if environ is None else environ
    try:
        world = World(
            int(env.get("RANK", "0")),
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", env.get("RANK", "0"))),
        )
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK): {e}") from e
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ValueError(
            f"bad torchrun environment: RANK={world.rank} WORLD_SIZE={world.world_size}"
        )
    return world


def active() -> bool:
    """A process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_world() -> World:
    """The running process group's world, or one process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return World(rank, dist.get_world_size(), local)


def rank_device(device: torch.device, world: World) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on GPUs (one GPU per process), else ``device``."""
    if device.type != "cuda" or not world.distributed:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {world.local_rank} has no GPU: {torch.cuda.device_count()} visible, "
            "start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", world.local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """Join the process group torchrun describes; yield (world, this rank's device).

    A group the caller started already is used as it is and left running. Without torchrun's
    environment (or with ``WORLD_SIZE=1``) nothing is started and ``device`` is yielded as is.
    """
    if dist.is_available() and dist.is_initialized():
        world = current_world()
        yield world, rank_device(device, world)
        return
    world = env_world()
    if not world.distributed:
        yield world, device
        return
    device = rank_device(device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        rank=world.rank,
        world_size=world.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo works on host tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def all_gather_rows(t: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Every rank's ``t`` (r×…) stacked along dim 0, rank after rank, on ``t``'s device.

    ``sizes``: the rows of each rank when they differ (every rank must know them); by default
    every rank has ``len(t)`` rows. One process: ``t`` itself.
    """
    if not active():
        return t
    sizes = list(sizes) if sizes is not None else [len(t)] * dist.get_world_size()
    padded = t.new_zeros((max(sizes), *t.shape[1:]), device=_comm_device())
    padded[: len(t)] = t  # all_gather wants equal shapes
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(t.device)


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` in place with rank ``src``'s ``t``."""
    if active():
        buf = t.to(_comm_device())
        dist.broadcast(buf, src)
        if buf is not t:
            t.copy_(buf)
    return t


def average_(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor in place by its mean over the ranks (floating-point tensors)."""
    if not active():
        return
    for t in tensors:
        buf = t.to(_comm_device())
        dist.all_reduce(buf)
        t.copy_(buf / dist.get_world_size())


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable, small) on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable, small), in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _attempt_on_main(fn: Callable[[], T]) -> tuple[Any, BaseException | None]:
    """``fn()`` on rank 0: (its result, None) or (None, the exception it raised); others: None."""
    if dist.get_rank() != 0:
        return None, None
    try:
        return fn(), None
    except Exception as e:
        return None, e


def main_decides(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; its result, or the exception it raised, on every rank.

    For choices with side effects that every rank must share (the numbered run directory).
    """
    if not active():
        return fn()
    result, error = _attempt_on_main(fn)
    shared_result, shared_error = broadcast_object((result, error))
    if error is not None or shared_error is not None:
        raise error or shared_error  # type: ignore[misc]
    return shared_result


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first, then (once it succeeded) on every other rank.

    The decode cache is built once this way: rank 0 decodes, the others find the finished
    cache and memory-map it. An exception on rank 0 is raised on every rank.
    """
    if not active():
        return fn()
    result, error = _attempt_on_main(fn)
    shared_error = broadcast_object(error)
    if error is not None or shared_error is not None:
        raise error or shared_error  # type: ignore[misc]
    return result if dist.get_rank() == 0 else fn()


@dataclass(frozen=True)
class KeyShuffle:
    """MoCo's shuffle-BN for one global batch, planned identically on every rank.

    Batch norm in the momentum encoder must not see the same images as the encoder's batch on
    the same rank, or its statistics tell a query which key is its own. Every rank knows the
    whole global batch (one permutation of the data, from the shared seed), so no images move
    between ranks: rank r computes the queries of slice r of the batch, and the keys of slice r
    of a random permutation of it (drawn from the shared generator, so identical everywhere).
    One all_gather of the n×d keys and the inverse permutation restore batch order.
    """

    batch: Tensor  # W·n image ids, the global batch (same on every rank)
    perm: Tensor  # W·n, positions in ``batch``: slice r of it is rank r's key slice
    rank: int
    world_size: int

    @classmethod
    def plan(cls, batch: Tensor, world: World, gen: torch.Generator) -> KeyShuffle:
        if len(batch) % world.world_size:
            raise ValueError(f"global batch {len(batch)} not divisible by {world.world_size}")
        perm = torch.randperm(len(batch), generator=gen)
        return cls(batch, perm, world.rank, world.world_size)

    @property
    def own(self) -> slice:
        """This rank's rows of the global batch."""
        n = len(self.batch) // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    @property
    def query_ids(self) -> Tensor:
        """n image ids whose queries (and losses) this rank computes."""
        return self.batch[self.own]

    @property
    def key_ids(self) -> Tensor:
        """n image ids whose keys this rank's momentum encoder computes."""
        return self.batch[self.perm[self.own]]

    def gather_keys(self, k: Tensor) -> tuple[Tensor, Tensor]:
        """Keys of ``key_ids`` (n×d) → every rank's keys in batch order (W·n×d) and their ids."""
        shuffled = all_gather_rows(k)  # W·n×d, row p is the key of batch[perm[p]]
        keys = torch.empty_like(shuffled)
        keys[self.perm.to(k.device)] = shuffled
        return keys, self.batch.to(k.device)
