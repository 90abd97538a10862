"""Benchmark sets as sources: each layout, built small in a temporary folder, and fit + eval."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_cifar_subset
from PIL import Image
from typer.testing import CliRunner

from imgcluster.cli import app
from imgcluster.config import RunConfig, resolve
from imgcluster.data import benchmarks as datasets
from imgcluster.data.benchmark_files import CIFAR100_COARSE, IMAGENET_SUBSETS, cifar100_coarse_of
from imgcluster.errors import RunError
from imgcluster.rundir import read_assignments
from imgcluster.train.checkpoint import check_resumable

PER_BATCH = 3  # images per synthetic CIFAR batch


def fake_cifar10(root: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's cifar-10-batches-py/ with PER_BATCH images per batch, real file format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (6 * PER_BATCH, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * PER_BATCH)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        part = slice(b * PER_BATCH, (b + 1) * PER_BATCH)
        batch = {
            "batch_label": f"batch {b}",
            "labels": labels[part].tolist(),
            "data": images[part].reshape(PER_BATCH, 3072),  # rows: 1024 R, 1024 G, 1024 B
            "filenames": [f"img_{i}.png" for i in range(PER_BATCH)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"], "num_vis": 3072}  # fmt: skip
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return images, labels


def test_cifar10_python_files(tmp_path: Path):
    images, labels = fake_cifar10(tmp_path)
    bench = datasets.load("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    n_train = 5 * PER_BATCH
    assert bench.layout == "CIFAR-10 python files"
    assert bench.root == tmp_path / "cifar-10-batches-py"
    assert bench.cache.paths[:2] == ["train/00000.png", "train/00001.png"]
    assert bench.cache.paths[n_train] == "test/00000.png" and len(bench.cache.paths) == 18
    assert np.array_equal(bench.cache.images, images)
    names = datasets.files.CIFAR10_CLASSES
    assert bench.labels == [names[y] for y in labels]
    again = datasets.load("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert again.cache.reused and again.cache.file == bench.cache.file


def test_array_sets_are_resized_like_decoded_files(tmp_path: Path):
    fake_cifar10(tmp_path)
    bench = datasets.load("cifar10", tmp_path, 16, cache_dir=tmp_path / "cache")
    assert bench.cache.images.shape == (18, 3, 16, 16)


def test_incomplete_cifar_files_are_named(tmp_path: Path):
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(RunError, match="missing .*data_batch_3"):
        datasets.locate("cifar10", tmp_path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path):
    fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(RunError, match="refusing"):
        datasets.locate("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar100_uses_the_coarse_labels(tmp_path: Path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {"data": data, "fine_labels": [0] * n, "coarse_labels": [19, 0, 3, 4, 5, 6][:n]}
        with open(folder / split, "wb") as f:
            pickle.dump(batch, f)
    located = datasets.locate("cifar100-20", tmp_path)
    assert located.labels[:2] == ["vehicles_2", "aquatic_mammals"]
    assert located.paths[-1] == "test/00001.png"


def test_cifar100_class_names_map_to_the_20_superclasses():
    assert len(CIFAR100_COARSE) == 100 and len(set(CIFAR100_COARSE.values())) == 20
    assert cifar100_coarse_of(["maple_tree", "whale"], Path(".")) == ["trees", "aquatic_mammals"]
    with pytest.raises(RunError, match="not a CIFAR-100 class"):
        cifar100_coarse_of(["maple"], Path("."))


def test_stl10_binaries_are_column_major(tmp_path: Path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected = []
    for split, n in (("train", 2), ("test", 3)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 10, 2][:n]))
        expected.append(x)
    located = datasets.locate("stl10", tmp_path)
    assert np.array_equal(located.images, np.concatenate(expected))
    assert located.labels == ["airplane", "truck", "airplane", "truck", "bird"]
    (folder / "test_y.bin").write_bytes(b"\x01")
    with pytest.raises(RunError, match="does not fit 1 images"):
        datasets.locate("stl10", tmp_path)


def tiny_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_imagenet10_is_a_class_subset_of_an_imagenet_train_folder(tmp_path: Path):
    wnids = list(IMAGENET_SUBSETS["imagenet10"])
    for w in [*wnids, "n01440764"]:  # one class that is not in the subset
        for i in range(2):
            tiny_png(tmp_path / "train" / w / f"{w}_{i}.JPEG", i)
    located = datasets.locate("imagenet10", tmp_path)
    assert located.root == tmp_path / "train" and len(located.paths) == 20
    assert located.paths[0] == "n02056570/n02056570_0.JPEG" and located.labels[0] == "king_penguin"
    shutil.rmtree(tmp_path / "train" / "n07747607")
    with pytest.raises(RunError, match="lacks the class folder.*n07747607"):
        datasets.locate("imagenet10", tmp_path)


def test_tiny_imagenet_train_split(tmp_path: Path):
    folder = tmp_path / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    (folder / "wnids.txt").parent.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        tiny_png(folder / "train" / w / "images" / f"{w}_0.JPEG")
    tiny_png(folder / "val" / "images" / "val_0.JPEG")  # not part of the protocol
    located = datasets.locate("tiny-imagenet", tmp_path)
    assert len(located.paths) == 200 and located.labels[0] == "n00000000"


def test_not_found_names_the_expected_files(tmp_path: Path):
    with pytest.raises(RunError, match="cifar-10-batches-py/.*--download.*10 classes"):
        datasets.locate("cifar10", tmp_path)
    with pytest.raises(RunError, match="no such folder"):
        datasets.locate("cifar10", tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(RunError, match="cifar10 not found in"):
        datasets.locate("cifar10", tmp_path)
    with pytest.raises(RunError, match="unknown benchmark 'cifar11'"):
        datasets.locate("cifar11", tmp_path)


# --- class folders from real CIFAR-10 images -----------------------------------------------


@pytest.fixture(scope="module")
def cifar_folders(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 real CIFAR-10 test images per class in ``<class>/<image>`` folders."""
    return copy_cifar_subset(data_root, tmp_path_factory.mktemp("cifar"), 4)


def test_class_folder_layout(cifar_folders: Path, tmp_path: Path):
    bench = datasets.load("cifar10", cifar_folders, cache_dir=tmp_path / "cache", workers=1)
    assert bench.layout == "class folders" and len(bench.cache.paths) == 40
    assert bench.cache.images.shape == (40, 3, 32, 32)
    assert all(p.split("/")[0] == label for p, label in zip(bench.cache.paths, bench.labels))


def test_split_subfolders_are_joined(cifar_folders: Path, tmp_path: Path):
    shutil.copytree(cifar_folders, tmp_path / "train")
    shutil.copytree(cifar_folders, tmp_path / "test")
    located = datasets.locate("cifar10", tmp_path)
    assert len(located.paths) == 80 and located.paths[0] == "test/airplane/0000.jpg"
    assert located.labels[0] == "airplane" and len(set(located.labels)) == 10


def test_a_wrong_number_of_class_folders_is_reported(cifar_folders: Path):
    with pytest.raises(RunError, match=r"has 10 class folders: airplane, .*with 20 classes"):
        datasets.locate("cifar100-20", cifar_folders)


def fit_cli(*args: str):
    fast = ["--epochs", "1", "--backbone", "small", "--batch-size", "20", "--device", "cpu",
            "--no-report"]  # fmt: skip
    return CliRunner().invoke(app, ["fit", *args, *fast, "--workers", "1"])


def test_fit_and_eval_a_benchmark(cifar_folders: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = fit_cli("cifar10", "--data-root", str(cifar_folders), "--out", str(out))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["scl"]["k"] == 10  # the set's class count
    assert config["data"]["benchmark"] == "cifar10"
    assert config["data"]["source"] == str(cifar_folders.resolve())
    paths, _, _ = read_assignments(out / "assignments.csv")
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0] == "path,label" and len(labels) == 41 and len(paths) == 40
    evaluated = CliRunner().invoke(app, ["eval", "--run", str(out), "--json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)
    assert scores["n"] == 40
    # The history scores each epoch; the last epoch's clusters are the run's assignments.
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for key in ("acc", "nmi", "ari"):
        assert history[-1][key] == pytest.approx(scores[key])
    assert history[-1]["elapsed_seconds"] >= history[-1]["seconds"]


def test_a_resumed_benchmark_run_refuses_another_set():
    saved = RunConfig().replace(data={"benchmark": "stl10", "data_root": "/d", "source": "/d/s"})
    with pytest.raises(RunError, match="benchmark was 'stl10'"):
        check_resumable(saved, RunConfig().replace(data={"benchmark": "cifar10"}))


def test_source_names_a_folder_unless_data_root_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)

    def resolved(source: str, **data) -> RunConfig:
        return resolve(RunConfig().replace(data={"source": source, **data}))

    bench = resolved("cifar100-20")
    assert (bench.data.benchmark, bench.data.data_root, bench.scl.k) == ("cifar100-20", None, 20)
    given = resolve(RunConfig().replace(data={"source": "stl10", "data_root": "d"}, scl={"k": 10}))
    assert (given.data.benchmark, given.data.data_root, given.scl.k) == ("stl10", "d", 10)
    assert resolve(given) == given  # idempotent
    (tmp_path / "cifar100-20").mkdir()  # a folder of that name is a folder of images
    folder = resolved("cifar100-20")
    assert (folder.data.benchmark, folder.data.source) == (None, str(tmp_path / "cifar100-20"))
    assert folder.scl.k == 10  # the default k of a folder
    with pytest.raises(RunError, match="go with a benchmark set"):
        resolved("photos", data_root="d")


def test_library_fit_of_a_benchmark_takes_its_class_count() -> None:
    """k is chosen by the library, not the command line: a benchmark's classes."""
    config = resolve(RunConfig().replace(data={"source": "stl10", "data_root": "/nowhere"}))
    assert config.scl.k == 10 and config.data.benchmark == "stl10"
    config = resolve(RunConfig().replace(data={"source": "cifar100-20", "data_root": "/x"}))
    assert config.scl.k == 20


def test_a_missing_set_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = fit_cli("cifar10", "--out", "r1")  # no ./cifar10 folder: the set, under ./data
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"cifar10 not found in {tmp_path / 'data'} (no such folder)" in result.stderr
    result = fit_cli("photos", "--data-root", "x", "--out", "r3")
    assert result.exit_code == 2 and "go with a benchmark set" in result.stderr
