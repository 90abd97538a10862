"""Pretrained starts (fit --init): weights files of torchvision ResNets with fixed random weights,
matched into the encoder so that its features equal torchvision's model; errors for foreign
files; a frozen encoder that an epoch leaves unchanged (the real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import copy_cifar_subset

from imgcluster.errors import RunError
from imgcluster.method.model import Encoder, build_backbone
from imgcluster.method.pretrained import (
    imagenet_file,
    load_start,
    match_state,
    read_state_dict,
)


def torchvision_resnet(name: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    """torchvision's own model with fixed random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def same_features(encoder: Encoder, reference: torch.nn.Module, size: int = 64) -> None:
    reference.fc = torch.nn.Identity()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.features(x), reference(x), rtol=1e-4, atol=1e-5)


def started_encoder(init: str, backbone: str = "resnet18", frozen: bool = False) -> Encoder:
    encoder = Encoder(backbone, 16, stem="imagenet", frozen=frozen)
    start, _ = load_start(encoder.backbone, init, backbone)
    encoder.backbone.load_state_dict(start, strict=False)
    return encoder


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_imagenet_start_gives_torchvisions_features(torch_home: Path, backbone: str) -> None:
    reference = torchvision_resnet(backbone)
    path = imagenet_file(backbone)
    assert path.parent == torch_home / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    same_features(started_encoder("imagenet", backbone), reference)


def test_missing_imagenet_weights_say_how_to_get_them(torch_home: Path) -> None:
    with pytest.raises(RunError, match="--download") as e:
        load_start(build_backbone("resnet34", "imagenet"), "imagenet", "resnet34")
    assert str(torch_home) in str(e.value) and "resnet34-" in str(e.value)


def test_file_with_a_prefix_and_a_classifier(tmp_path: Path) -> None:
    reference = torchvision_resnet(seed=3)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 9, "state_dict": state}, tmp_path / "w.pth")
    backbone = build_backbone("resnet18", "imagenet")
    start, report = match_state(backbone, read_state_dict(tmp_path / "w.pth"), "w.pth")
    assert report.random == [] and set(report.unused) == {"module.fc.weight", "module.fc.bias"}
    assert len(report.loaded) == len(backbone.state_dict())
    assert "none left at random" in report.summary() and "module.fc.weight" in report.summary()
    same_features(started_encoder(str(tmp_path / "w.pth")), reference)


def test_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = torchvision_resnet(seed=4)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(tmp_path / "w.safetensors"))  # fmt: skip
    same_features(started_encoder(str(tmp_path / "w.safetensors")), reference)


def test_partial_file_reports_what_stays_random(tmp_path: Path) -> None:
    state = {k: v for k, v in torchvision_resnet().state_dict().items() if k.startswith("layer1")}
    _, report = match_state(build_backbone("resnet18", "imagenet"), state, "part")
    assert report.loaded and all(k.startswith("layer1") for k in report.loaded)
    assert "conv1.weight" in report.random and "layer4.1.bn2.weight" in report.random


def test_wrong_shape_names_the_first_mismatched_key() -> None:
    small_stem = build_backbone("resnet18", "pica").state_dict()  # 3x3 conv1, not 7x7
    with pytest.raises(RunError, match=r"conv1\.weight has shape \(64, 3, 3, 3\)"):
        match_state(build_backbone("resnet18", "imagenet"), small_stem, "pica.pth")


def test_a_file_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    torch.save({"transformer.w": torch.zeros(3)}, tmp_path / "vit.pt")
    with pytest.raises(RunError, match="no tensor of vit.pt matches"):
        load_start(build_backbone("resnet18", "imagenet"), str(tmp_path / "vit.pt"), "resnet18")


def test_files_that_are_not_weights(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(RunError, match="cannot read weights"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(RunError, match="no such file"):
        read_state_dict(tmp_path / "missing.pth")
    torch.save({"lr": 0.1}, tmp_path / "nothing.pth")
    with pytest.raises(RunError, match="no state dict"):
        read_state_dict(tmp_path / "nothing.pth")


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("echo pwned",))

    torch.save({"w": Boom()}, tmp_path / "evil.pth")
    with pytest.raises(RunError, match="refusing|cannot read"):
        read_state_dict(tmp_path / "evil.pth")


def test_frozen_encoder_takes_no_gradient_and_keeps_statistics() -> None:
    encoder = Encoder("resnet18", 16, stem="imagenet", frozen=True).train()
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    out = encoder(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is None for p in encoder.backbone.parameters())
    assert encoder.projector[0].weight.grad is not None
    assert not encoder.backbone.training  # running statistics stay the loaded ones
    for k, v in encoder.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "imgcluster", *args], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision_resnet(seed=5).state_dict(), path)
    return path


@pytest.mark.slow
def test_cli_frozen_start_leaves_the_encoder_unchanged(
    data_root: Path, tmp_path: Path, weights_file: Path
) -> None:
    source = copy_cifar_subset(data_root, tmp_path / "src", 4)
    out = tmp_path / "run"
    proc = run_cli("fit", str(source), "--k", "3", "--epochs", "1", "--image-size", "32",
                   "--init", str(weights_file), "--freeze-encoder", "--no-report", "--out",
                   str(out), "--device", "cpu", "--workers", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "started from resnet18.pth: 120 tensors loaded, none left at random" in said
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    for prefix in ("encoder.backbone.", "momentum_encoder.backbone."):
        for k, v in torch.load(weights_file, weights_only=True).items():
            if not k.startswith("fc."):
                assert torch.equal(state[prefix + k], v), prefix + k
    assert (out / "model.onnx").is_file()


@pytest.mark.slow
def test_cli_init_errors_are_one_line(tmp_path: Path, weights_file: Path) -> None:
    (tmp_path / "imgs").mkdir()
    proc = run_cli("fit", str(tmp_path / "imgs"), "--init", str(tmp_path / "none.pth"))
    assert proc.returncode == 2 and "--init: no such file" in proc.stderr
    proc = run_cli("fit", str(tmp_path / "imgs"), "--init", "none", "--freeze-encoder")
    assert proc.returncode == 2 and "not with --init none" in proc.stderr
    proc = run_cli("fit", str(tmp_path / "imgs"), "--init", str(weights_file),
                   "--backbone", "resnet50", "--out", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "layer1.0.conv1.weight has shape (64, 64, 3, 3)" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing left behind
