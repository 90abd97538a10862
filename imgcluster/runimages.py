"""A finished run's training images, decoded, for the export check and the report.

``fit`` hands its cache over directly; a later ``export`` or ``report`` finds the same cache
again (rescan of the source, or the benchmark set reloaded), which costs no decoding while the
images are unchanged, and decodes them once more otherwise. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgcluster import rundir as rd
from imgcluster.cache import ImageCache, build_cache, cache_dir_default
from imgcluster.config import RunConfig
from imgcluster.scan import scan_folder


def training_images(run: Path, config: RunConfig, paths: Sequence[str]) -> np.ndarray:
    """uint8 ``N×3×S×S``: row ``i`` is image ``paths[i]`` (assignments.csv order).

    Raises :class:`imgcluster.rundir.RunError` when some of them can no longer be read.
    """
    cache = _benchmark_cache(run, config) if config.data.benchmark else _folder_cache(run, config)
    row = {p: i for i, p in enumerate(cache.paths)}
    missing = [p for p in paths if p not in row]
    if missing:
        raise rd.RunError(
            f"{len(missing)} training image(s) of {run} are no longer in "
            f"{config.data.source or config.data.benchmark} (e.g. {missing[0]})"
        )
    rows = np.fromiter((row[p] for p in paths), dtype=np.int64, count=len(paths))
    if np.array_equal(rows, np.arange(len(cache.paths))):
        return cache.images  # the memory map itself, no copy
    return cache.images[rows]


def _cache_dir(config: RunConfig) -> Path | None:
    return Path(config.data.cache_dir) if config.data.cache_dir else None


def _folder_cache(run: Path, config: RunConfig) -> ImageCache:
    root = Path(config.data.source)
    try:
        scan = scan_folder(root, exclude=[run], follow_links=config.data.follow_links)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise rd.RunError(f"cannot read the training images: {e}") from e
    size = int(config.data.image_size or 0)
    return build_cache(
        root, scan.paths, size, _cache_dir(config), workers=config.data.workers, stamps=scan.stamps
    )


def _benchmark_cache(run: Path, config: RunConfig) -> ImageCache:
    from imgcluster import datasets

    root = Path(config.data.data_root or datasets.DEFAULT_ROOT)
    bench = datasets.load(
        config.data.benchmark or "",
        root,
        config.data.image_size,
        _cache_dir(config) or cache_dir_default(),
        workers=config.data.workers,
        download=False,
        exclude=(run,),
    )
    return bench.cache
