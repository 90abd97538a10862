"""A run's images: the one path from a config's source (a folder or a benchmark set) to the cache.

``fit`` loads them before training; ``export`` and ``report`` load the same images again for a
finished run (:func:`training_images`), which costs no decoding while the files are unchanged
(the cache is found again) and decodes them once more otherwise. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.config import INIT_AUTO, INIT_IMAGENET, INIT_NONE, RunConfig, image_sides
from imgcluster.data.cache import SMALL_IMAGE_SIDE, ImageCache, Survey, build_cache, survey
from imgcluster.data.cache_folder import cache_dir_default
from imgcluster.data.scan import scan_folder
from imgcluster.errors import RunError
from imgcluster.events import Callback


@dataclass
class Images:
    """The decoded images of a source and what was learnt reading them."""

    cache: ImageCache  # cache.paths[i] is row i; skipped files are listed in cache.skipped
    root: Path  # the folder the images were read from
    classes: list[str] | None  # a benchmark set's class of every image, else None
    # The settings found, per config section: the image size (and a set's folders), the start.
    facts: dict[str, dict[str, Any]]
    start_reason: str | None = None  # why --init auto chose the start (None: it was given)

    def config(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the facts found filled in."""
        return cfg.replace(**self.facts)


def load(
    cfg: RunConfig,
    exclude: Sequence[Path] = (),
    progress: Callback | None = None,
    device_type: str = "cpu",
) -> Images:
    """Scan the source and decode it once into the cache (or find the cache again).

    A benchmark set (``data.benchmark``) comes from :mod:`imgcluster.data.benchmarks`, with
    its classes. ``exclude``: folders inside the source to leave out (the run directory).
    The start ("auto": :func:`choose_start`) and the image size (None: one of
    :func:`imgcluster.config.image_sides` for the start and ``device_type``) are decided from
    the images' headers before anything is decoded. Raises :class:`RunError` for an unreadable
    source or cache folder.
    """
    if cfg.data.benchmark:
        return _benchmark(cfg, exclude, progress, device_type)
    root = Path(cfg.data.source)
    try:
        scan = scan_folder(root, exclude=list(exclude), follow_links=cfg.data.follow_links)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise RunError(f"cannot read the images: {e}") from e
    if not scan.paths:
        raise RunError(f"no images found in {root}")
    found = survey(root, scan.paths)
    start, why = choose_start(cfg.model.init, found, cfg.model.freeze_encoder)
    sides = image_sides(cfg.replace(model={"init": start}), device_type)
    size = cfg.data.image_size or sides[0 if found.small else 1]
    folder = cache_folder(cfg)
    try:
        cache = build_cache(root, scan.paths, size, folder, workers=cfg.data.workers,
                            progress=progress, stamps=scan.stamps)  # fmt: skip
    except OSError as e:  # decode failures are skipped files: this is the cache folder (full?)
        where = e.filename or folder
        raise RunError(f"cannot write the decode cache {where}: {e.strerror or e}") from e
    cache.skipped = sorted(scan.skipped + cache.skipped)
    facts = {"data": {"image_size": size}, "model": {"init": start}}
    return Images(cache, root, None, facts, why if cfg.model.init == INIT_AUTO else None)


def choose_start(init: str | None, found: Survey, freeze: bool | None = None) -> tuple[str, str]:
    """``fit --init auto``: the start that measured best for images like ``found``
    (docs/benchmarks.md, "Pretrained start"), and why in words; any other ``init`` is kept.

    Images of a few pixels (a median shorter side of at most :data:`TINY_IMAGE_SIDE`) train
    from scratch: upscaled, they hold too little of what ImageNet's features describe (the 8-px
    digits, 2 minutes: 0.73 ACC from the packaged network, 0.90 from scratch). Every other
    folder starts from the packaged network, greyscale ones included (MNIST's 28-px
    handwriting: 0.89 against 0.48 from scratch; CIFAR-10's 32-px photographs: 0.64 against
    0.33). ``freeze``: ``--freeze-encoder`` asks for a pretrained network.
    """
    if init != INIT_AUTO:
        return init or INIT_NONE, "given"
    if freeze:
        return INIT_IMAGENET, "--freeze-encoder keeps a pretrained network: the packaged one"
    side = found.shorter_side
    if side is None:
        return INIT_IMAGENET, "no image's size could be read: the packaged network"
    if side <= TINY_IMAGE_SIDE:
        return INIT_NONE, f"{side:.0f}-px images, too small for ImageNet features"
    return INIT_IMAGENET, f"{side:.0f}-px images, large enough for ImageNet features"


# The largest median shorter side that trains from scratch under --init auto (choose_start).
TINY_IMAGE_SIDE = 16


def _benchmark(
    cfg: RunConfig, exclude: Sequence[Path], progress: Callback | None, device_type: str
) -> Images:
    from imgcluster.data import benchmarks

    # A benchmark set trains from scratch unless told otherwise: the paper's protocol, and
    # ImageNet-10 and ImageNet-Dogs are ImageNet's own training images.
    auto = cfg.model.init == INIT_AUTO
    start = INIT_NONE if auto else (cfg.model.init or INIT_NONE)
    size = cfg.data.image_size
    with_start = cfg.replace(model={"init": start})
    if size is None and with_start.model.pretrained:  # the paper's sizes are for scratch
        small = benchmarks.get(cfg.data.benchmark or "").image_size <= SMALL_IMAGE_SIDE
        size = image_sides(with_start, device_type)[0 if small else 1]
    bench = benchmarks.load(
        cfg.data.benchmark or "",
        Path(cfg.data.data_root or benchmarks.DEFAULT_ROOT),
        size,
        cache_folder(cfg),
        workers=cfg.data.workers,
        download=cfg.data.download,
        exclude=tuple(exclude),
        progress=progress,
    )
    size = int(bench.cache.images.shape[-1])
    facts = {"image_size": size, "source": str(bench.root), "data_root": str(bench.data_root)}
    why = "a benchmark set: trained from scratch, as in the paper" if auto else None
    return Images(bench.cache, bench.root, list(bench.labels),
                  {"data": facts, "model": {"init": start}}, why)  # fmt: skip


def cache_folder(cfg: RunConfig) -> Path:
    """The decode cache's folder: ``data.cache_dir``, else the user's cache folder."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_dir_default()


def check_enough(images: Images, k: int, name: str = "k") -> None:
    """Refuse a source with fewer than two usable images per cluster (``name``: the setting
    that asked for ``k`` clusters, k or k-max)."""
    n = len(images.cache.paths)
    if n < 2 * k:
        largest = f"the largest usable {name} is {n // 2}" if n >= 4 else "k must be at least 2"
        raise RunError(
            f"only {n} usable image(s) in {images.root}: clustering into {name}={k} needs at "
            f"least {2 * k} ({largest})"
        )


def known_classes(paths: list[str], labels: Path, root: Path) -> np.ndarray:
    """The class of every image from a labels file (``fit --labels``), read only to score each
    epoch (:mod:`imgcluster.scoring.diagnostics`); every image must have one."""
    from imgcluster.scoring.evaluate import match
    from imgcluster.scoring.label_file import read_labels

    matched = match((paths, np.zeros(len(paths), dtype=np.int64)), read_labels(labels), root)
    if matched.only_in_assignments:
        missing = matched.only_in_assignments
        raise RunError(
            f"{labels} has no label for {len(missing)} of the {len(paths)} images "
            f"(e.g. {missing[0]}): --labels must cover every image"
        )
    order = {p: i for i, p in enumerate(matched.paths)}
    return np.asarray([str(matched.classes[order[p]]) for p in paths])


def training_images(run: Path, config: RunConfig, paths: Sequence[str]) -> np.ndarray:
    """uint8 ``N×3×S×S`` of a finished run: row ``i`` is image ``paths[i]`` (assignments.csv
    order). Raises :class:`RunError` when some of them can no longer be read."""
    try:
        cache = load(config.replace(data={"download": False}), exclude=[run]).cache
    except RunError as e:
        raise RunError(f"cannot read the training images of {run}: {e}") from e
    row = {p: i for i, p in enumerate(cache.paths)}
    missing = [p for p in paths if p not in row]
    if missing:
        raise RunError(
            f"{len(missing)} training image(s) of {run} are no longer in "
            f"{config.data.source or config.data.benchmark} (e.g. {missing[0]})"
        )
    rows = np.fromiter((row[p] for p in paths), dtype=np.int64, count=len(paths))
    if np.array_equal(rows, np.arange(len(cache.paths))):
        return cache.images  # the memory map itself, no copy
    return cache.images[rows]
