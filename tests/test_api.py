"""The library's fit on real images: reproducibility, time budget, ablations, baseline, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_cifar_subset

from imgcluster.api import fit, resume
from imgcluster.config import PRESETS, RunConfig
from imgcluster.errors import RunError
from imgcluster.rundir import CHECKPOINT, HISTORY, read_assignments

PER_CLASS = 10


@pytest.fixture(scope="module")
def tiny(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 real CIFAR-10 images of each class."""
    return copy_cifar_subset(data_root, tmp_path_factory.mktemp("tiny"), PER_CLASS)


def config(source: Path, **optim) -> RunConfig:
    return RunConfig().replace(
        data={"source": str(source), "workers": 1},
        model={"backbone": "small"},
        scl={"k": 4},
        optim={"epochs": 2, "batch_size": 25, "device": "cpu", **optim},
    )


@pytest.mark.slow
def test_same_seed_same_clusters(tiny: Path, tmp_path: Path):
    a = fit(config(tiny, seed=3), tmp_path / "a")
    b = fit(config(tiny, seed=3), tmp_path / "b")
    assert a.paths == b.paths
    assert np.array_equal(a.clusters, b.clusters)
    assert np.allclose(a.confidence, b.confidence)
    assert read_assignments(tmp_path / "a" / "assignments.csv")[0] == a.paths


@pytest.mark.slow
def test_time_budget_sets_the_epoch_count(tiny: Path, tmp_path: Path):
    result = fit(config(tiny, epochs=500, time_budget_minutes=0.2), tmp_path / "r")
    history = [json.loads(x) for x in (tmp_path / "r" / HISTORY).read_text().splitlines()]
    assert 1 <= result.epochs < 500
    assert history[-1]["epochs_total"] == result.epochs == len(history)


@pytest.mark.slow
def test_time_budget_keeps_time_for_export_and_report(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A budget that the work after training would use up leaves room for the first epoch only
    (a budget never undoes an epoch); without the report that work is shorter."""
    import imgcluster.api as pipeline

    monkeypatch.setattr(pipeline, "REPORT_SECONDS", 3600.0)
    cfg = config(tiny, epochs=3, time_budget_minutes=30)
    assert fit(cfg, tmp_path / "r").epochs == 1
    monkeypatch.setattr(pipeline, "EXPORT_SECONDS", 0.0)
    assert fit(cfg, tmp_path / "s", report=False).epochs == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "switch", [{"cross_cluster": False}, {"online_cd": False}, {"hard_mining": False}]
)
def test_ablation_switches_train(tiny: Path, tmp_path: Path, switch: dict):
    cfg = config(tiny).replace(scl=switch)
    result = fit(cfg, tmp_path / "r")
    assert len(result.clusters) == 10 * PER_CLASS


@pytest.mark.slow
def test_moco_kmeans_baseline_uses_every_cluster(tiny: Path, tmp_path: Path):
    cfg = config(tiny).replace(scl={"method": "moco-kmeans"})
    result = fit(cfg, tmp_path / "r")
    assert set(result.clusters.tolist()) == set(range(4))
    assert ((result.confidence > 0) & (result.confidence <= 1)).all()


@pytest.mark.slow
def test_resume_without_checkpoint_starts_over(tiny: Path, tmp_path: Path):
    run = tmp_path / "r"
    fit(config(tiny, epochs=1), run)
    (run / CHECKPOINT).unlink()  # as if killed before the first checkpoint
    messages = []
    result = resume(run, {"optim": {"epochs": 1}}, callback=messages.append)
    assert result.epochs == 1
    assert any(m.stage == "message" and "starting" in m.info["text"] for m in messages)


@pytest.mark.slow
def test_a_time_budget_given_to_resume_is_kept(tiny: Path, tmp_path: Path):
    """--time-budget on --resume bounds the resumed command (it used to be dropped): a budget
    smaller than the export leaves room for one more epoch only."""
    run = tmp_path / "r"
    fit(config(tiny, epochs=1), run)
    result = resume(run, {"optim": {"epochs": 50, "time_budget_minutes": 0.01}}, report=False)
    assert result.epochs == 2
    # Without a budget of its own, a resumed run keeps its plan (here the new epoch count).
    assert resume(run, {"optim": {"epochs": 3}}, report=False).epochs == 3


def test_a_run_that_never_starts_leaves_no_folder(tiny: Path, tmp_path: Path):
    """Too large a k is refused after the scan with the largest usable k, and the run folder
    that fit made for it is gone again (the next run is not numbered -2)."""
    with pytest.raises(RunError, match="the largest usable k is 50"):
        fit(config(tiny).replace(scl={"k": 60}), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "mine"
    kept.mkdir()  # a folder the user made is left alone
    with pytest.raises(RunError):
        fit(config(tiny).replace(scl={"k": 60}), kept)
    assert kept.is_dir()


@pytest.mark.slow
def test_resume_refuses_a_changed_folder(tiny: Path, tmp_path: Path):
    source = tmp_path / "src"
    shutil.copytree(tiny, source)
    fit(config(source, epochs=1), tmp_path / "r")
    shutil.copy(source / "cat" / "0000.jpg", source / "cat" / "extra.jpg")
    with pytest.raises(RunError, match="changed"):
        resume(tmp_path / "r", {"optim": {"epochs": 2}})


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_and_never_runs(tiny: Path, tmp_path: Path):
    run = tmp_path / "r"
    fit(config(tiny, epochs=1), run)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    (run / CHECKPOINT).write_bytes(pickle.dumps({"epoch": Payload()}))
    with pytest.raises(RunError, match="refusing"):
        resume(run, {"optim": {"epochs": 2}})
    assert not marker.exists()


def write_class_labels(folder: Path) -> Path:
    """labels.csv of a ``<class>/<image>`` folder, each image's class its folder's name."""
    rows = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    file = folder.parent / f"{folder.name}-labels.csv"
    file.write_text("path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rows))
    return file


@pytest.mark.slow
def test_labels_score_every_epoch_and_never_change_the_run(tiny: Path, tmp_path: Path):
    """--labels adds the diagnostics to every history line and leaves training as it was."""
    labels = write_class_labels(tiny)
    scored = fit(config(tiny, seed=1).replace(data={"labels": str(labels)}), tmp_path / "a")
    plain = fit(config(tiny, seed=1), tmp_path / "b")
    assert np.array_equal(scored.clusters, plain.clusters)
    for record in scored.history:
        for key in ("acc", "nmi", "memory_acc", "kmeans_acc", "knn_agreement",
                    "pseudo_label_acc", "feature_spread", "largest_cluster_ratio"):  # fmt: skip
            assert 0.0 <= record[key] <= 10.0, key
    assert "acc" not in plain.history[-1] and "feature_spread" in plain.history[-1]
    kept = (tmp_path / "a" / "labels.csv").read_text().splitlines()
    assert kept[0] == "path,label" and len(kept) == 1 + 10 * PER_CLASS
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["data"]["augment"] == "colour" and saved["optim"]["batch_size"] == 25


def test_labels_must_cover_every_image(tiny: Path, tmp_path: Path):
    labels = write_class_labels(tiny)
    labels.write_text("\n".join(labels.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(RunError, match="no label for 3 of the 100 images"):
        fit(config(tiny).replace(data={"labels": str(labels)}), tmp_path / "r")


@pytest.mark.slow
def test_chosen_settings_are_recorded(tiny: Path, tmp_path: Path):
    """No batch size given: chosen from the 100 images (32); the colour images get the colour
    views; both written into config.json."""
    cfg = config(tiny).replace(optim={"batch_size": None})
    fit(cfg, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["data"]["augment"], saved["optim"]["batch_size"]) == ("colour", 32)


@pytest.mark.slow
def test_warmup_keeps_the_drawn_labels_then_starts_from_kmeans(tiny: Path, tmp_path: Path):
    """--warmup 0.5 of 4 epochs: epoch 1 leaves the labels as drawn; epoch 2 ends with k-means
    labels (every cluster used); epochs 3-4 update them as usual; a resume knows it started."""
    import torch

    cfg = config(tiny).replace(scl={"warmup": 0.5}, optim={"epochs": 4})
    result = fit(cfg, tmp_path / "r")
    flips = [record.get("label_flips") for record in result.history]
    assert flips[0] is None and all(f is not None for f in flips[1:])
    assert min(result.history[1]["cluster_sizes"]) > 0
    state = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=False)
    assert state["clusters_started"] is True


@pytest.mark.slow
def test_a_frozen_start_starts_its_clusters_twice(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The packaged network, frozen, 10 epochs of 100 images: the clusters start at the warm-up's
    end (2 epochs, 0.16·sqrt(100)) and again half-way from there to the end (epoch 6); from
    scratch the same, with the warm-up given; without a warm-up only the restart (epoch 5);
    ``--no-restart`` and the paper's settings never start them again."""
    from imgcluster.train.trainer import Trainer

    started: list[int] = []
    original = Trainer.start_clusters

    def recording(self: Trainer, seed: int):
        started.append(self.epoch + 1)
        return original(self, seed)

    monkeypatch.setattr(Trainer, "start_clusters", recording)
    packaged = {"backbone": "auto", "init": "imagenet"}
    cfg = config(tiny).replace(model=packaged, data={"image_size": 32, "views": 1},
                               optim={"epochs": 10})  # fmt: skip
    fit(cfg, tmp_path / "frozen")
    assert started == [2, 6]
    started.clear()
    for name, scl, expected in [
        ("warm", {"warmup": 0.2}, [2, 6]),
        ("plain", {}, [5]),
        ("once", {"warmup": 0.2, "restart": False}, [2]),
        ("paper", PRESETS["paper"]["scl"], []),
    ]:
        started.clear()
        fit(config(tiny).replace(scl=scl, optim={"epochs": 10}), tmp_path / name)
        assert started == expected, name


def test_k_auto_on_a_frozen_start_scores_the_frozen_features_at_once(tiny: Path, tmp_path: Path):
    """A frozen backbone's features do not train: --k auto scores them before any epoch and
    leaves the whole run to SCL (10 epochs planned, 10 in config.json), where a from-scratch
    run gives 40 % of its epochs to the features first."""
    packaged = {"backbone": "auto", "init": "imagenet"}
    cfg = config(tiny).replace(model=packaged, data={"image_size": 32, "views": 1},
                               scl={"k": None, "k_auto": True, "k_max": 5},
                               optim={"epochs": 10})  # fmt: skip
    fit(cfg, tmp_path / "frozen")
    saved = json.loads((tmp_path / "frozen" / "config.json").read_text())
    assert saved["optim"]["epochs"] == 10 and 2 <= saved["scl"]["k"] <= 5
    assert saved["k_choice"]["k"] == saved["scl"]["k"]
    assert saved["k_choice"]["criterion"] == "modularity"
    history = (tmp_path / "frozen" / HISTORY).read_text().splitlines()
    assert len(history) == 10


class FakeClock:
    """``time.perf_counter`` for a whole run: 1 ms a call, plus the seconds a test adds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-3
        return self.now


def test_labels_never_change_the_epochs_a_budget_plans(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """On a clock where every epoch trains for 10 s and scoring it against labels takes 30 s,
    a 0.8-minute budget (43 s after the 5 s export) plans 4 epochs with labels as without: the
    diagnostics are left out of the planner's time."""
    import time

    import imgcluster.train.trainer as trainer_module

    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    train, scores = trainer_module.run_epoch, trainer_module.epoch_diagnostics

    def slow_epoch(*args, **kwargs):
        stats = train(*args, **kwargs)
        clock.now += 10.0
        return {**stats, "train_seconds": stats["train_seconds"] + 10.0}

    def slow_scores(features, head, memory, classes, *args, **kwargs):
        if classes is not None:  # k-means and kNN of every image
            clock.now += 30.0
        return scores(features, head, memory, classes, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "run_epoch", slow_epoch)
    monkeypatch.setattr(trainer_module, "epoch_diagnostics", slow_scores)
    cfg = config(tiny, epochs=50, time_budget_minutes=0.8)
    plain = fit(cfg, tmp_path / "plain", report=False)
    labels = write_class_labels(tiny)
    scored = fit(cfg.replace(data={"labels": str(labels)}), tmp_path / "scored", report=False)
    assert plain.epochs == scored.epochs == 4
    assert [r["epochs_total"] for r in scored.history] == [r["epochs_total"] for r in plain.history]
    assert all(r["diagnostic_seconds"] >= 30.0 for r in scored.history)
    assert all(r["diagnostic_seconds"] < 1.0 for r in plain.history)
    assert all(r["seconds"] < 11.0 for r in scored.history)  # training and label update only
    assert scored.history[-1]["elapsed_seconds"] > 4 * 40.0  # the wall clock does count them


def test_a_budget_that_ends_inside_the_warmup_still_starts_the_clusters(tiny: Path, tmp_path: Path):
    """--warmup 0.5 of 4 epochs, but a budget spent by the first epoch: the run stops inside the
    warm-up. The clusters then start from k-means on the warmed-up features, and say so: the
    output is their nearest-mean head, saved for the export, not a head that never trained."""
    import torch

    cfg = config(tiny, epochs=4, time_budget_minutes=0.01).replace(scl={"warmup": 0.5})
    messages = []
    result = fit(cfg, tmp_path / "r", callback=messages.append, report=False)
    assert result.epochs == 1 and "label_flips" not in result.history[0]  # still warming
    said = [m.info["text"] for m in messages if m.stage == "message"]
    assert any("inside its warm-up" in text for text in said), said
    state = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=False)
    assert state["clusters_started"] is True
    labels = state["model"]["tasks.clustering.labels"].numpy()
    assert len(set(labels.tolist())) == 4  # k-means: every cluster used
    head = state["model"]["tasks.clustering.head.fc.weight"]
    assert torch.allclose(head.norm(dim=1), torch.full((4,), 1 / 0.1))  # unit means over τ
    assert np.mean(result.clusters == labels) > 0.5  # the output follows the started clusters


def test_the_k_auto_start_must_fit_the_encoder_exactly():
    """--k auto hands the whole trained encoder to SCL: a tensor it lacks or one the encoder
    does not have stops the run by name, where a non-strict load would drop it silently. A
    pretrained start holds the backbone alone: the projector may start at random."""
    from imgcluster.method.model import Encoder
    from imgcluster.train.trainer import load_encoder_start

    trained = Encoder("small", 16).state_dict()
    load_encoder_start(Encoder("small", 16), trained)
    backbone = {k: v for k, v in trained.items() if k.startswith("backbone.")}
    load_encoder_start(Encoder("small", 16), backbone)
    extra = {**trained, "projector.9.weight": trained["projector.0.weight"]}
    with pytest.raises(RunError, match="holds tensors the encoder lacks: projector.9.weight"):
        load_encoder_start(Encoder("small", 16), extra)
    lacking = {k: v for k, v in trained.items() if not k.startswith("projector.0")}
    with pytest.raises(RunError, match="lacks tensors of the encoder: projector.0"):
        load_encoder_start(Encoder("small", 16), lacking)
