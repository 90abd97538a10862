"""Readers for the benchmark sets' official files, and their class lists.

Scope: the CIFAR-10/100 python pickles, STL-10's binaries, an ImageNet training folder with
``<wnid>/`` class folders, Tiny-ImageNet's ``train/<wnid>/images/``; the standard class names;
CIFAR-100's 100 → 20 super-class mapping; fetching files with torchvision. Each reader returns a
:class:`imgcluster.data.benchmarks.Located`, or None when the files are absent, and raises
:class:`imgcluster.RunError` when they are present but incomplete or unreadable.

The CIFAR pickles are read with an unpickler that only builds numpy arrays, lists and dicts, so
a file that would run code is refused (torchvision's plain ``pickle.load`` would run it).
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.data.scan import scan_folder
from imgcluster.errors import RunError


@dataclass
class Located:
    """Where a set's images are: ``paths`` (relative to ``root``) and their labels.

    ``images`` holds the pixels of an array-backed set (``N x 3 x H x W`` uint8) and
    ``data_files`` its files (relative to ``root``); for a file-backed set ``images`` is None
    and ``paths`` are image files under ``root``.
    """

    root: Path
    layout: str
    paths: list[str]
    labels: list[str]
    images: np.ndarray | None = None
    data_files: tuple[str, ...] = ()


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")  # fmt: skip
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer",
                 "dog", "horse", "monkey", "ship", "truck")  # fmt: skip

# CIFAR-100's 20 super-classes (their order is the coarse label) and their 5 classes each.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE: dict[str, str] = {
    fine: coarse for coarse, fines in CIFAR100_SUPERCLASSES.items() for fine in fines
}

# Chang et al., "Deep Adaptive Image Clustering" (ICCV 2017): ImageNet-10 and ImageNet-Dogs.
IMAGENET_SUBSETS: dict[str, dict[str, str]] = {
    "imagenet10": {
        "n02056570": "king_penguin", "n02085936": "Maltese_dog", "n02128757": "snow_leopard",
        "n02690373": "airliner", "n02692877": "airship", "n03095699": "container_ship",
        "n04254680": "soccer_ball", "n04285008": "sports_car", "n04467665": "trailer_truck",
        "n07747607": "orange",
    },
    "imagenet-dogs": {
        "n02085936": "Maltese_dog", "n02086646": "Blenheim_spaniel", "n02088238": "basset",
        "n02091467": "Norwegian_elkhound", "n02097130": "giant_schnauzer",
        "n02099601": "golden_retriever", "n02101388": "Brittany_spaniel", "n02101556": "clumber",
        "n02102177": "Welsh_springer_spaniel", "n02105056": "groenendael", "n02105412": "kelpie",
        "n02105855": "Shetland_sheepdog", "n02107142": "Doberman", "n02110958": "pug",
        "n02112137": "chow",
    },
}  # fmt: skip

OFFICIAL_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100-20": "cifar-100-python",
                 "stl10": "stl10_binary"}  # fmt: skip
_MARKERS = {"cifar10": "data_batch_1", "cifar100-20": "train", "stl10": "train_X.bin"}
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def official_dir(name: str, root: Path) -> Path | None:
    """The folder holding an array-backed set's files: ``root/<official name>`` or ``root``."""
    for folder in (root / OFFICIAL_DIRS[name], root):
        if (folder / _MARKERS[name]).is_file():
            return folder
    return None


def synthetic_paths(split: str, n: int) -> list[str]:
    """Names for the rows of an array-backed split: ``train/00000.png`` ..."""
    width = max(5, len(str(n - 1)))
    return [f"{split}/{i:0{width}d}.png" for i in range(n)]


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; refuses any other global (no code runs)."""

    _SAFE = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return self._SAFE[(module, name)]
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def read_pickle(file: Path) -> dict[str, Any]:
    """One CIFAR python pickle as a dict with str keys; RunError if missing or not one."""
    try:
        with open(file, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise RunError(f"missing {file}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise RunError(f"cannot read {file}: {e}") from e
    if not isinstance(data, dict):
        raise RunError(f"cannot read {file}: not a CIFAR pickle")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_split(file: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N x 3 x 32 x 32 uint8, N labels)`` from one pickle (rows are R, G, B planes)."""
    d = read_pickle(file)
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, ValueError) as e:
        raise RunError(f"cannot read {file}: no CIFAR {label_key} data ({e})") from e
    if len(x) != len(y):
        raise RunError(f"cannot read {file}: {len(x)} images but {len(y)} labels")
    return x, y


def _meta_names(file: Path, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if not file.is_file():
        return default
    names = read_pickle(file).get(key)
    return tuple(str(n) for n in names) if names and len(names) == len(default) else default


def _split_arrays(
    root: Path,
    layout: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    names: Sequence[str],
    data_files: Sequence[str],
) -> Located:
    """Join the splits (in order: train, test) into one Located with synthetic paths."""
    images = np.concatenate([x for x, _ in splits.values()])
    ys = np.concatenate([y for _, y in splits.values()])
    if ys.size and (ys.min() < 0 or ys.max() >= len(names)):
        raise RunError(f"{root}: labels outside 0..{len(names) - 1}")
    paths = [p for split, (x, _) in splits.items() for p in synthetic_paths(split, len(x))]
    labels = [names[y] for y in ys]
    return Located(root, layout, paths, labels, images, tuple(data_files))


def read_cifar10(root: Path) -> Located | None:
    """CIFAR-10: the five training batches then the test batch, 60,000 images."""
    folder = official_dir("cifar10", root)
    if folder is None:
        return None
    batches = [_cifar_split(folder / f, "labels") for f in _CIFAR10_FILES]
    train = tuple(np.concatenate(parts) for parts in zip(*batches[:5]))
    names = _meta_names(folder / "batches.meta", "label_names", CIFAR10_CLASSES)
    splits = {"train": train, "test": batches[5]}
    return _split_arrays(folder, "CIFAR-10 python files", splits, names, _CIFAR10_FILES)


def read_cifar100_coarse(root: Path) -> Located | None:
    """CIFAR-100 on its 20 super-classes (the files' coarse labels), train then test."""
    folder = official_dir("cifar100-20", root)
    if folder is None:
        return None
    splits = {s: _cifar_split(folder / s, "coarse_labels") for s in ("train", "test")}
    names = _meta_names(folder / "meta", "coarse_label_names", tuple(CIFAR100_SUPERCLASSES))
    return _split_arrays(folder, "CIFAR-100 python files", splits, names, ("train", "test"))


def cifar100_coarse_of(fine_labels: list[str], root: Path) -> list[str]:
    """Super-class of each CIFAR-100 class name; RunError naming a folder that is not one."""
    unknown = sorted(set(fine_labels) - set(CIFAR100_COARSE))
    if unknown:
        raise RunError(
            f"{root} has 100 class folders but {', '.join(unknown[:5])} is not a CIFAR-100 class: "
            "name the folders after the classes or the 20 super-classes"
        )
    return [CIFAR100_COARSE[f] for f in fine_labels]


def _stl_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 binaries: column-major 96 x 96 planes, labels 1..10."""
    x_file, y_file = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    try:
        x = np.fromfile(x_file, dtype=np.uint8)
        y = np.fromfile(y_file, dtype=np.uint8).astype(np.int64) - 1
    except OSError as e:
        raise RunError(f"cannot read {e.filename}: {e.strerror or e}") from e
    if x.size % (3 * 96 * 96) or x.size // (3 * 96 * 96) != len(y):
        raise RunError(f"cannot read {x_file}: its size does not fit {len(y)} images of 96 px")
    return np.ascontiguousarray(x.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)), y


def read_stl10(root: Path) -> Located | None:
    """STL-10's 5,000 training and 8,000 test images (the unlabelled split is left out)."""
    folder = official_dir("stl10", root)
    if folder is None:
        return None
    splits = {s: _stl_split(folder, s) for s in ("train", "test")}
    names = STL10_CLASSES
    if (folder / "class_names.txt").is_file():
        listed = tuple((folder / "class_names.txt").read_text().split())
        names = listed if len(listed) == len(names) else names
    data = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    return _split_arrays(folder, "STL-10 binary files", splits, names, data)


def imagenet_subset(root: Path, classes: dict[str, str]) -> Located | None:
    """The images of ``classes`` (wnid → name) in an ImageNet train folder, or None."""
    for folder in (root / "train", root):
        present = [w for w in classes if (folder / w).is_dir()]
        if present:
            break
    else:
        return None
    missing = [w for w in classes if w not in present]
    if missing:
        raise RunError(f"{folder} lacks the class folder(s) {', '.join(missing)}")
    paths, labels = [], []
    for wnid, name in classes.items():
        found = scan_folder(folder / wnid).paths
        paths += [f"{wnid}/{p}" for p in found]
        labels += [name] * len(found)
    return Located(folder, "ImageNet train folder", paths, labels)


def tiny_imagenet_train(root: Path) -> Located | None:
    """Tiny-ImageNet's 100,000 training images, labelled by their ``<wnid>`` folder."""
    for folder in (root / "tiny-imagenet-200", root):
        if (folder / "wnids.txt").is_file() and (folder / "train").is_dir():
            break
    else:
        return None
    train = folder / "train"
    paths = [p for p in scan_folder(train).paths if "/" in p]
    labels = [p.split("/", 1)[0] for p in paths]
    return Located(train, "Tiny-ImageNet files", paths, labels)


def download(name: str, root: Path) -> None:
    """Fetch and unpack the official archive with torchvision (checksum-verified)."""
    from torchvision import datasets as tv
    from torchvision.datasets.utils import download_and_extract_archive

    cls = {"cifar10": tv.CIFAR10, "cifar100-20": tv.CIFAR100, "stl10": tv.STL10}[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except (OSError, RuntimeError, ValueError) as e:
        raise RunError(f"download of {name} failed: {e}") from e
