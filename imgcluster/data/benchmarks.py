"""The paper's benchmark sets as ``fit`` sources, read from files already on this machine.

The paper's evaluation protocol (docs/method.md): train and test splits together; CIFAR-100
scored on its 20 super-classes; STL-10's 13,000 labelled images without the unlabelled split;
ImageNet-10 and ImageNet-Dogs as class subsets of the ImageNet training set (the lists of Chang
et al., "Deep Adaptive Image Clustering", ICCV 2017); Tiny-ImageNet's 100,000 training images in
200 classes.

Each set is looked for under ``root`` in these layouts, first match wins:

- the official files, as torchvision's dataset classes keep them (``cifar-10-batches-py/``,
  ``cifar-100-python/``, ``stl10_binary/``; Tiny-ImageNet's ``tiny-imagenet-200/``), or an
  ImageNet training folder with one ``<wnid>/`` folder per class (also under ``train/``);
- class folders: ``root/<class>/<image>``, also nested (``root/train/<class>/<image>``). An
  image's label is the name of the folder that holds it, and the number of classes must be the
  set's (CIFAR-100: its 20 super-classes, or its 100 classes, which are mapped to those).

Array-backed sets (the CIFAR pickles, STL-10's binaries) never become image files: their
``uint8`` arrays go straight into the decode cache
(:func:`imgcluster.data.cache.cache_arrays`) under
names such as ``train/00042.png`` and ``test/00007.png``: the split and the row in the official
files (torchvision's dataset index), so assignments.csv stays meaningful. Nothing is downloaded
unless asked (``download=True``, via torchvision, for CIFAR-10, CIFAR-100 and STL-10).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgcluster.config import MEMORY_SIZE
from imgcluster.data import benchmark_files as files
from imgcluster.data.benchmark_files import Located
from imgcluster.data.cache import ImageCache, build_cache, cache_arrays, cache_key
from imgcluster.data.scan import scan_folder
from imgcluster.errors import RunError
from imgcluster.events import Callback

DEFAULT_ROOT = Path("data")  # where sets are looked for (and downloaded to) without --data-root


@dataclass(frozen=True)
class Benchmark:
    """One benchmark set: its class count, training image size and official files."""

    name: str
    classes: int
    image_size: int  # the paper's input size (Tiny-ImageNet: its native 64 px, ours)
    expected: str  # the official layout, for "not found" messages
    download: bool  # torchvision can fetch it
    memory_size: int = MEMORY_SIZE  # the paper's K for the set (fit --preset paper)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("cifar10", 10, 32, "cifar-10-batches-py/ (data_batch_1..5, test_batch)", True),
        Benchmark("cifar100-20", 20, 32, "cifar-100-python/ (train, test)", True),
        Benchmark("stl10", 10, 96, "stl10_binary/ (train_X.bin, train_y.bin, test_*)", True),
        Benchmark("imagenet10", 10, 96, "an ImageNet train folder with <wnid>/ folders", False),
        Benchmark("imagenet-dogs", 15, 96, "an ImageNet train folder with <wnid>/ folders", False),
        Benchmark("tiny-imagenet", 200, 64, "tiny-imagenet-200/train/<wnid>/images/", False, 8192),
    )
}


@dataclass
class BenchmarkImages:
    """A loaded set: the decode cache of its images, their labels and where they came from."""

    benchmark: Benchmark
    data_root: Path
    root: Path  # the folder the images (or data files) were found in, under data_root
    layout: str
    cache: ImageCache
    labels: list[str]  # labels[i] is the class of cache.paths[i]


def get(name: str) -> Benchmark:
    """The set called ``name``, or a RunError listing the known ones."""
    if name not in BENCHMARKS:
        raise RunError(f"unknown benchmark {name!r}: one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def locate(name: str, root: Path, *, exclude: tuple[Path, ...] = ()) -> Located:
    """Find set ``name`` under ``root`` (module docstring); RunError naming what was expected."""
    bench, root = get(name), Path(root)
    found: Located | str | None = " (no such folder)"
    if root.is_dir():
        found = _official(bench, root) or _class_folders(bench, root, exclude)
    if isinstance(found, Located):
        return found
    hint = " (or pass --download)" if bench.download else ""
    raise RunError(
        f"{name} not found in {root}{found or ''}: expected {bench.expected}{hint}, or class "
        f"folders <class>/<image> with {bench.classes} classes (give the folder with --data-root)"
    )


def _official(bench: Benchmark, root: Path) -> Located | None:
    """The set in its official (torchvision) files, or None when they are not there."""
    if bench.name == "cifar10":
        return files.read_cifar10(root)
    if bench.name == "cifar100-20":
        return files.read_cifar100_coarse(root)
    if bench.name == "stl10":
        return files.read_stl10(root)
    if bench.name == "tiny-imagenet":
        return files.tiny_imagenet_train(root)
    return files.imagenet_subset(root, files.IMAGENET_SUBSETS[bench.name])


def _class_folders(bench: Benchmark, root: Path, exclude: tuple[Path, ...]) -> Located | str:
    """``root/.../<class>/<image>``, or what was found instead (for the error message)."""
    scan = scan_folder(root, exclude=exclude)
    paths = [p for p in scan.paths if "/" in p]
    if not paths:
        return ""
    labels = [p.rsplit("/", 2)[-2] for p in paths]
    classes = sorted(set(labels))
    if bench.name == "cifar100-20" and len(classes) == 100:
        labels = files.cifar100_coarse_of(labels, root)
        classes = sorted(set(labels))
    if len(classes) != bench.classes:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        return f" (it has {len(classes)} class folders: {shown})"
    return Located(root, "class folders", paths, labels)


def load(
    name: str,
    root: Path,
    size: int | None = None,
    cache_dir: Path | None = None,
    *,
    workers: int | None = None,
    download: bool = False,
    exclude: tuple[Path, ...] = (),
    progress: Callback | None = None,
) -> BenchmarkImages:
    """Locate set ``name`` under ``root`` (downloading it first if asked and absent) and put
    its images into the decode cache at ``size`` (default: the set's own size)."""
    bench, root = get(name), Path(root).resolve()
    if download:
        fetch(name, root)
    found = locate(name, root, exclude=exclude)
    size = size or bench.image_size
    if found.images is not None:
        key = cache_key(found.root, list(found.data_files), size)
        cache = cache_arrays(found.images, found.paths, key, size, cache_dir, progress=progress)
        labels = found.labels
    else:
        cache = build_cache(
            found.root, found.paths, size, cache_dir, workers=workers, progress=progress
        )
        label_of = dict(zip(found.paths, found.labels))
        labels = [label_of[p] for p in cache.paths]
    return BenchmarkImages(bench, root, found.root, found.layout, cache, labels)


def fetch(name: str, root: Path) -> None:
    """Download set ``name`` into ``root`` with torchvision unless its files are there."""
    bench = get(name)
    if not bench.download:
        raise RunError(f"{name} cannot be downloaded: put {bench.expected} under the data root")
    if files.official_dir(name, root) is None:
        files.download(name, root)
