"""Views of a frozen backbone, computed once: how a pretrained start trains fast on a CPU.

With a frozen backbone (``--freeze-encoder``, the default of the packaged ImageNet start) every
training view would run the same fixed network on a fresh augmentation of an image, and that
pass is nearly all of a step's cost. Instead, each image's pooled backbone features are computed
once for ``V`` augmented views (the run's own views: crops, flips, colour jitter, grey) and for
its plain view, and kept on the device as float16 ``N x (V+1) x D``. A step then draws, per
image, one of its V views for the query and one for the key (independently: the same view for
both with probability 1/V), and only what follows the backbone trains: the projection MLP, the
heads and the memories, with the momentum copy of the MLP. Measured on 10,000 CIFAR-10 images
at 96 px with EfficientNet-Lite0 on 2 cores: ~4 s per epoch instead of ~2 min when the last
stage of the backbone is fine-tuned too, and more views give better clusters (docs/benchmarks.md,
"Pretrained start").

The object stands in for :class:`imgcluster.train.device.DeviceImages` in the epoch and in the
prediction: ``batch`` gives the rows the step draws its views from (:meth:`draw`), and
``sequential`` the plain views' features, which :class:`imgcluster.method.model.Encoder` takes
in place of images.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from imgcluster.atomic import replace_atomically
from imgcluster.events import Callback, Progress
from imgcluster.method.augment import AugmentParams, augment, preprocess
from imgcluster.train.device import DeviceImages, autocast
from imgcluster.train.distributed import World, all_gather_rows

PLAIN = 0  # index of the un-augmented view in the second dimension
FORMAT_VERSION = 1  # bump when what a stored views file holds changes
VIEWS_SEED_OFFSET = 3  # the views' generator: seed + 3 (the order and the steps use + 1, + 2)


class FeatureViews:
    """Pooled features of every image's plain view and of ``V`` augmented views.

    ``features``: float16 ``N x (V+1) x D`` on the training device, view 0 the plain one.
    """

    def __init__(self, features: Tensor) -> None:
        if features.ndim != 3 or features.shape[1] < 2:
            raise ValueError(f"need N x (V+1) x D features, V ≥ 1, got {tuple(features.shape)}")
        self.features = features
        self.device = features.device

    @property
    def views(self) -> int:
        """V, the augmented views per image."""
        return self.features.shape[1] - 1

    def __len__(self) -> int:
        return self.features.shape[0]

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        backbone: nn.Module,
        images: DeviceImages,
        views: int,
        params: AugmentParams,
        generator: torch.Generator,
        batch_size: int,
        callback: Callback | None = None,
        world: World = World(),
    ) -> FeatureViews:
        """Run ``backbone`` (eval mode) once over the plain view and ``views`` augmented views
        of every image, in batches of ``batch_size`` images; 'views' progress events. Under
        DDP each rank computes a contiguous share and every rank gets all N rows."""
        was_training = backbone.training
        backbone.eval()
        share = torch.arange(len(images)).tensor_split(world.world_size)
        mine = share[world.rank]
        blocks = []
        for start in range(0, len(mine), batch_size):
            batch = images.batch(mine[start : start + batch_size])
            batch = batch.contiguous(memory_format=torch.channels_last)
            rows = [_pooled(backbone, preprocess(batch))]
            rows += [_pooled(backbone, augment(batch, generator, params)) for _ in range(views)]
            blocks.append(torch.stack(rows, dim=1).to(torch.float16))  # n × (V+1) × D
            if callback is not None:
                callback(Progress("views", start + len(blocks[-1]), len(mine)))
        backbone.train(was_training)
        features = torch.cat(blocks)
        if world.distributed:  # gathered in float32, which every backend carries
            sizes = [len(s) for s in share]
            features = all_gather_rows(features.float(), sizes).to(torch.float16)
        return cls(features)

    def batch(self, idx: Tensor) -> Tensor:
        """The augmented views of images ``idx`` (n, long, on the CPU) → float16 n×V×D."""
        return self.features[idx.to(self.device, non_blocking=True), 1:]

    def sequential(
        self, batch_size: int, indices: Tensor | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(indices, plain views' features n×D float32) over all N in order (or ``indices``)."""
        if indices is None:
            indices = torch.arange(len(self))
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield idx, self.features[idx.to(self.device), PLAIN].float()

    @staticmethod
    def draw(rows: Tensor, generator: torch.Generator) -> Tensor:
        """One view per row, drawn uniformly: float16 n×V×D → float32 n×D (the step's
        "augmentation" when the views are cached)."""
        n, v = rows.shape[:2]
        pick = torch.randint(v, (n,), generator=generator, device=rows.device)
        return rows[torch.arange(n, device=rows.device), pick].float()


def cached_views(
    backbone: nn.Module,
    images: DeviceImages,
    cache_file: Path,
    views: int,
    params: AugmentParams,
    seed: int,
    batch_size: int,
    callback: Callback | None = None,
    world: World = World(),
) -> FeatureViews:
    """:meth:`FeatureViews.compute`, kept beside the decode cache (``cache_file``, the images'
    array) so that a resumed run, the second phase of ``--k auto`` and a new run on the same
    images with the same network, views and seed read them back instead. The file's name is
    a digest of all of these and of the backbone's weights; it is written atomically. Under
    torchrun the views are computed by every rank's share, as a cache folder need not be shared.
    """
    generator = torch.Generator(device=images.device).manual_seed(seed + VIEWS_SEED_OFFSET)
    if world.distributed:
        return FeatureViews.compute(backbone, images, views, params, generator, batch_size,
                                    callback, world)  # fmt: skip
    path = cache_file.parent / f"{views_key(cache_file, backbone, views, params, seed)}.npy"
    stored = _read(path, (len(images), views + 1))
    if stored is not None:
        return FeatureViews(torch.from_numpy(stored).to(images.device))
    found = FeatureViews.compute(backbone, images, views, params, generator, batch_size, callback)
    try:
        with io.BytesIO() as buffer:
            np.save(buffer, found.features.cpu().numpy())
            replace_atomically(path, buffer.getvalue())
    except OSError:  # a full or read-only cache folder: the run goes on without keeping them
        pass
    return found


def views_key(
    cache_file: Path, backbone: nn.Module, views: int, params: AugmentParams, seed: int
) -> str:
    """24 hex digits over the images' cache key, the views' settings and the weights."""
    digest = hashlib.sha256(
        f"imgcluster-views-v{FORMAT_VERSION}\0{cache_file.stem}\0{views}\0{params}\0{seed}".encode()
    )
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _read(path: Path, rows: tuple[int, int]) -> np.ndarray | None:
    """A stored N×(V+1)×D float16 array of the expected size, or None (absent, torn, other)."""
    try:
        stored = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    if stored.dtype != np.float16 or stored.ndim != 3 or stored.shape[:2] != rows:
        return None
    return stored


def _pooled(backbone: nn.Module, x: Tensor) -> Tensor:
    with autocast(x.device):
        return backbone(x.contiguous(memory_format=torch.channels_last)).float()


def views_per_image(
    seconds_per_view: float, num_images: int, budget_s: float | None, most: int
) -> int:
    """V for a run: ``most``, or with a time budget as many as fit into
    :data:`VIEWS_BUDGET_SHARE` of it (the rest trains), at least :data:`FEWEST_VIEWS`.

    ``seconds_per_view``: one image's backbone pass, measured on the first batch.
    """
    if budget_s is None:
        return most
    affordable = int(VIEWS_BUDGET_SHARE * budget_s / max(seconds_per_view * num_images, 1e-9))
    return int(np.clip(affordable - 1, FEWEST_VIEWS, most))  # the plain view costs one more


DEFAULT_VIEWS = 8  # augmented views per image without a time budget (docs/benchmarks.md)
# With a time budget, the views may take this share of it: the cached views are the run's
# augmentations, while the epochs on them cost little: a frozen start's 40 epochs of 10,000
# images took 140-190 s of MNIST's 12 minutes (docs/benchmarks.md). MNIST at 128 px scored
# 0.842 with the 4 views 0.5 of the budget then allowed, 0.889 with 8.
VIEWS_BUDGET_SHARE = 0.6
FEWEST_VIEWS = 2
TIMED_BATCHES = 3


def time_one_view(backbone: nn.Module, images: DeviceImages, batch_size: int) -> float:
    """Seconds of one image's backbone pass (eval mode, no gradient): the fastest of
    :data:`TIMED_BATCHES` passes over a batch (the first ones still allocate and choose kernels:
    on 2,000 MNIST images at 128 px 8.6, 6.4 and 4.6 ms an image, then 4.3 ms in the views)."""
    idx = torch.arange(min(batch_size, len(images)))
    x = preprocess(images.batch(idx))
    fastest = float("inf")
    with torch.no_grad():
        _pooled(backbone.eval(), x[:2])  # first call: allocation and kernel choice
        for _ in range(TIMED_BATCHES):
            start = time.perf_counter()
            _pooled(backbone, x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            fastest = min(fastest, time.perf_counter() - start)
    return fastest / len(idx)
