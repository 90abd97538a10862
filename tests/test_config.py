"""Configs round-trip through JSON and reject impossible settings by name."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import copy_cifar_subset
from typer.testing import CliRunner

from imgcluster.config import (
    BUDGET_MAX_EPOCHS,
    DEFAULT_EPOCHS,
    FROZEN_EPOCHS,
    PRETRAINED_WARMUP,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SCLConfig,
    auto_batch_size,
    pretrained_warmup_epochs,
    resolve,
    resolve_start,
    under_clustering_k,
    with_preset,
)


def test_round_trip_through_json():
    cfg = RunConfig().replace(scl={"k": 7, "cross_cluster": False}, optim={"epochs": 3})
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_unknown_keys_are_ignored():
    d = RunConfig().to_dict()
    d["scl"]["from_the_future"] = 1
    assert RunConfig.from_dict(d) == RunConfig()


# The paper's value of every method setting (docs/method.md, "--preset paper"), written out
# here rather than read from PRESETS, so that the preset is checked against the paper.
PAPER = {
    "model": {
        "backbone": "resnet34", "init": "none", "freeze_encoder": False, "feature_dim": 128,
        "projector_bn": False,
    },
    "scl": {
        "method": "scl", "momentum": 0.9, "temperature": 0.1, "alpha": 1.0, "beta": 1.0,
        "min_cluster_size": 20, "cross_cluster": True, "online_cd": True, "hard_mining": True,
        "balance": 0, "warmup": 0.0, "restart": False, "mask_own_keys": False, "align_ids": False,
    },
    "optim": {
        "epochs": 200, "batch_size": 256, "lr": 0.03, "head_lr_scale": 1.0,
        "weight_decay": 5e-4, "sgd_momentum": 0.9,
    },
    "data": {"augment": "colour"},
}  # fmt: skip


def test_paper_preset_gives_the_papers_settings():
    cfg = with_preset(RunConfig(), "paper")
    for section, values in PAPER.items():
        for name, value in values.items():
            assert getattr(getattr(cfg, section), name) == value, f"{section}.{name}"
    with pytest.raises(ValueError, match="preset"):
        with_preset(RunConfig(), "fast")


@pytest.mark.parametrize(
    ("source", "memory"), [("cifar10", 4096), ("stl10", 4096), ("tiny-imagenet", 8192)]
)
def test_paper_preset_takes_the_memory_size_the_paper_gives_the_set(tmp_path, source, memory):
    """K = 4096, 8192 for large sets such as Tiny-ImageNet (200 banks of 8192/199 = 41 keys)."""
    given = RunConfig().replace(data={"source": source, "data_root": str(tmp_path)})
    assert resolve(with_preset(given, "paper")).scl.memory_size == memory
    assert resolve(given).scl.memory_size == 4096  # the default is 4096 everywhere
    folder = RunConfig().replace(data={"source": str(tmp_path)})
    assert resolve(with_preset(folder, "paper")).scl.memory_size == 4096


def test_defaults_differ_from_the_paper_where_measured_better():
    cfg = RunConfig()
    assert cfg.scl.momentum == 0.99
    assert cfg.optim.batch_size is None and cfg.data.augment == "auto"


@pytest.mark.parametrize(
    ("images", "batch"), [(100, 32), (200, 32), (1797, 56), (8192, 256), (60000, 256)]
)
def test_auto_batch_size_keeps_32_steps_an_epoch_between_32_and_256(images, batch):
    assert auto_batch_size(images) == batch


@pytest.mark.parametrize(
    ("section", "field", "value", "word"),
    [
        ("scl", "k", 1, "k"),
        ("scl", "momentum", 1.0, "momentum"),
        ("optim", "batch_size", 1, "batch size"),
        ("model", "backbone", "vgg", "backbone"),
        ("data", "image_size", 4, "image size"),
        ("optim", "time_budget_minutes", 0, "time budget"),
    ],
)
def test_validate_names_the_bad_setting(section, field, value, word):
    with pytest.raises(ValueError, match=word):
        RunConfig().replace(**{section: {field: value}}).validate()


def test_under_clustering_k():
    assert [under_clustering_k(k) for k in (2, 3, 10, 15, 200)] == [2, 2, 5, 8, 100]


def test_epochs_default_to_the_papers_unless_a_budget_or_the_start_decides(tmp_path) -> None:
    folder = RunConfig().replace(data={"source": str(tmp_path)})
    scratch = folder.replace(model={"init": "none"})
    assert resolve(scratch).optim.epochs == DEFAULT_EPOCHS == 200
    budgeted = scratch.replace(optim={"time_budget_minutes": 5})
    assert resolve(budgeted).optim.epochs == BUDGET_MAX_EPOCHS
    given = budgeted.replace(optim={"epochs": 30})
    assert resolve(given).optim.epochs == 30
    assert resolve(folder).optim.epochs is None  # the start, chosen from the images, decides
    packaged = folder.replace(model={"init": "imagenet"})
    for start in (packaged, packaged.replace(optim={"time_budget_minutes": 5})):
        assert resolve(start).optim.epochs == FROZEN_EPOCHS
    fine_tuned = packaged.replace(model={"freeze_encoder": False})
    assert resolve(fine_tuned).optim.epochs == DEFAULT_EPOCHS


def test_a_start_resolves_its_backbone_freezing_warmup_and_encoder_lr(tmp_path) -> None:
    folder = RunConfig().replace(data={"source": str(tmp_path)})
    undecided = resolve(folder)
    assert undecided.model.init == "auto" and undecided.model.backbone == "auto"
    assert undecided.data.image_size is None  # chosen later, from the images
    with pytest.raises(ValueError, match="chosen from the images"):
        resolve_start(undecided)
    plain = resolve_start(undecided.replace(model={"init": "none"}))
    assert (plain.model.backbone, plain.model.stem, plain.model.freeze_encoder) == (
        "small", "pica", False)  # fmt: skip
    assert plain.optim.encoder_lr_scale == 1.0 and plain.scl.warmup == 0.0
    assert resolve_start(undecided.replace(model={"init": None}), "cuda").model.backbone == (
        "resnet34")  # fmt: skip
    packaged = resolve(folder.replace(model={"init": "imagenet"}))
    assert (packaged.model.backbone, packaged.model.freeze_encoder) == ("efficientnet_lite0", True)
    assert packaged.optim.encoder_lr_scale == 0.1 and packaged.scl.warmup is None  # by N
    assert [pretrained_warmup_epochs(n, 40) for n in (300, 1_000, 10_000, 100_000)] == [
        3,
        5,
        16,
        16,
    ]
    assert pretrained_warmup_epochs(10_000, 200) == 16 and pretrained_warmup_epochs(50, 40) == 2
    assert pretrained_warmup_epochs(10_000, 10) == round(PRETRAINED_WARMUP * 10)
    tuned = resolve(folder.replace(model={"init": "imagenet", "freeze_encoder": False}))
    assert tuned.scl.warmup == 0.0  # the warm-up is for a frozen backbone's views
    assert resolve(folder.replace(model={"backbone": "resnet18"})).model.init == "none"
    started = folder.replace(model={"init": "w.pth"})
    cpu, gpu = resolve(started, "cpu"), resolve(started, "cuda")
    assert (cpu.model.backbone, gpu.model.backbone) == ("resnet18", "resnet50")
    assert cpu.model.stem == "imagenet" and not cpu.model.freeze_encoder
    assert cpu.model.init == str((tmp_path.cwd() / "w.pth").resolve())
    with pytest.raises(ValueError, match="not with --init none"):
        resolve(folder.replace(model={"init": "none", "freeze_encoder": True}))
    with pytest.raises(ValueError, match="--init starts a pretrained network"):
        resolve(started.replace(model={"backbone": "small"}))
    assert resolve(undecided, "cpu") == undecided  # idempotent


SECTIONS = {"data": DataConfig, "model": ModelConfig, "scl": SCLConfig, "optim": OptimConfig}
# Settings config.json holds that are not the method's: where the run reads, writes and runs.
NOT_METHOD = {"optim": {"time_budget_minutes", "seed", "device", "compile"}}


@pytest.fixture
def written_config(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``imgcluster fit cifar10 --data-root ROOT ARGS...`` → its config.json, as a dict. The run
    stops once config.json is written, before the first epoch: the settings are the check, not
    200 epochs of a ResNet-34."""
    import imgcluster.train.trainer as trainer_module
    from imgcluster.cli import app
    from imgcluster.errors import RunError

    def stop(*args, **kwargs):
        raise RunError("stopped after config.json")

    monkeypatch.setattr(trainer_module, "train_epochs", stop)
    root = copy_cifar_subset(data_root, tmp_path / "cifar", 4)  # the set's class folders

    def run(*args: str) -> dict:
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        fit = ["fit", "cifar10", "--data-root", str(root), "--out", str(out), *args]
        result = CliRunner().invoke(app, [*fit, "--workers", "1", "--device", "cpu"])
        assert "stopped after config.json" in result.output, result.output
        return json.loads((out / "config.json").read_text())

    return run


def test_fit_preset_paper_on_a_benchmark_writes_the_papers_settings(written_config):
    """``imgcluster fit cifar10 --preset paper``: config.json holds the paper's value of every
    method setting, the ones resolved for the set included (k, K, image size, no pretrained
    start), and the test names every setting of the method's sections."""
    saved = written_config("--preset", "paper")
    resolved = {
        "scl": {"k": 10, "k_auto": False, "k_max": None, "memory_size": 4096},
        "model": {},  # the preset names every model setting, the start included
        "optim": {"encoder_lr_scale": 1.0},
        "data": {"image_size": 32, "benchmark": "cifar10"},
    }
    for section in ("model", "scl", "optim", "data"):
        want = {**PAPER.get(section, {}), **resolved.get(section, {})}
        got = {name: saved[section][name] for name in want}
        assert got == want, section
    for section, cls in (("model", ModelConfig), ("scl", SCLConfig), ("optim", OptimConfig)):
        named = set(PAPER[section]) | set(resolved[section]) | NOT_METHOD.get(section, set())
        assert {f.name for f in fields(cls)} <= named, f"{section}: a setting the test misses"


def test_options_after_the_preset_still_apply(written_config):
    """Each switch the preset turns off can be turned back on, and the defaults keep ours."""
    back = ["--projector-bn", "--own-key-mask", "--align-ids", "--head-lr-scale", "50"]
    saved = written_config("--preset", "paper", *back)
    assert saved["model"]["projector_bn"] and saved["optim"]["head_lr_scale"] == 50
    assert saved["scl"]["mask_own_keys"] and saved["scl"]["align_ids"]
    assert saved["scl"]["momentum"] == 0.9  # the rest is still the paper's
    plain = written_config("--no-own-key-mask", "--no-align-ids", "--no-projector-bn")
    assert not (plain["scl"]["mask_own_keys"] or plain["scl"]["align_ids"])
    assert not plain["model"]["projector_bn"] and plain["scl"]["momentum"] == 0.99


def test_the_preset_table_of_the_method_page_names_the_tested_settings():
    """docs/method.md lists every setting of ``--preset paper`` (setting, paper, preset,
    default, why) by its config.json name; each is a real setting, and each one this file
    checks is there. Differences that are no setting are listed below the table in words."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    rows = page.split("<!-- preset:begin -->")[1].split("<!-- preset:end -->")[0].splitlines()
    first = [row.split("|")[1] for row in rows if row.startswith("| `")]  # the setting column
    named = {name for cell in first for name in re.findall(r"`([^`]+)`", cell)}
    tested = {f"{section}.{name}" for section, values in PAPER.items() for name in values}
    assert tested | {"scl.memory_size"} <= named
    configurable = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)}
    assert named <= configurable, named - configurable
