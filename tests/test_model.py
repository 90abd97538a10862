"""Backbones, encoder, cluster head and momentum copy of :mod:`imgcluster.method.model`."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet34

from imgcluster.method.model import (
    FEATURE_DIMS,
    ClusterHead,
    Encoder,
    build_backbone,
    count_parameters,
    make_momentum_copy,
    momentum_update,
)

BACKBONES = ["small", "resnet18", "resnet34"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run these tiny batches on one thread, restoring the setting afterwards.

    With two intra-op threads on a two-core machine that other processes also load, every op
    waits for a descheduled thread: a 2-image ResNet-34 forward took 1.5 s instead of 0.1 s.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbones() -> dict[str, nn.Module]:
    """One instance per backbone: building ResNet-34 costs more than running it on 4 images."""
    torch.manual_seed(0)
    return {name: build_backbone(name) for name in BACKBONES}


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_output_shape(backbones: dict[str, nn.Module], name: str, size: int) -> None:
    net = backbones[name]
    with torch.no_grad():
        net.eval()
        assert net(torch.randn(2, 3, size, size)).shape == (2, FEATURE_DIMS[name])
        net.train()
        assert net(torch.randn(4, 3, size, size)).shape == (4, FEATURE_DIMS[name])


@pytest.mark.parametrize("size", [16, 33])
def test_odd_and_small_sizes(backbones: dict[str, nn.Module], size: int) -> None:
    for name, net in backbones.items():
        with torch.no_grad():
            out = net.eval()(torch.randn(1, 3, size, size))
        assert out.shape == (1, FEATURE_DIMS[name])


@pytest.mark.parametrize("size", [63, 64, 65])
def test_small_stem_switch(backbones: dict[str, nn.Module], size: int) -> None:
    # From 64 px the stem has stride 2 plus a max-pool: 4x fewer pixels per side after it.
    net = backbones["small"].eval()
    seen: list[int] = []
    hook = net.body.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    hook.remove()
    assert out.shape == (1, FEATURE_DIMS["small"])
    assert seen == [size if size < 64 else (size + 1) // 2 // 2]


@pytest.mark.parametrize(("name", "size"), [("small", 32), ("small", 96), ("resnet18", 32)])
def test_channels_last_matches_contiguous(
    backbones: dict[str, nn.Module], name: str, size: int
) -> None:
    net = backbones[name].eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = net(x)
        net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last))
        net.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_resnet34_is_pica_variant(backbones: dict[str, nn.Module]) -> None:
    net = backbones["resnet34"]
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert net.conv1.in_channels == 3 and net.conv1.out_channels == 64
    assert net.conv1.bias is None
    assert isinstance(net.maxpool, nn.MaxPool2d)
    assert (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding) == (2, 2, 1)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert isinstance(net.fc, nn.Identity)
    # torchvision's ResNet-34 without its classifier, with a 3x3 (not 7x7) 3->64 stem conv.
    ref = resnet34()
    expected = count_parameters(ref) - count_parameters(ref.fc) - 64 * 3 * (7 * 7 - 3 * 3)
    assert count_parameters(net) == expected
    assert abs(expected - 21.28e6) < 0.05e6


def test_resnet18_blocks(backbones: dict[str, nn.Module]) -> None:
    net = backbones["resnet18"]
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert net.conv1.kernel_size == (3, 3) and net.maxpool.kernel_size == 2


def test_small_parameter_count(backbones: dict[str, nn.Module]) -> None:
    assert 0.3e6 <= count_parameters(backbones["small"]) <= 0.7e6


def test_unknown_backbone_names_value() -> None:
    with pytest.raises(ValueError, match="resnet101"):
        build_backbone("resnet101")
    with pytest.raises(ValueError, match="ImageNet stem"):
        build_backbone("small", stem="imagenet")
    with pytest.raises(ValueError, match="auto"):
        Encoder("auto")


def test_encoder_unit_rows_and_gradient() -> None:
    torch.manual_seed(0)
    enc = Encoder("small", feature_dim=16)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    z = enc(x)
    assert z.shape == (4, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert enc.features(x).shape == (4, FEATURE_DIMS["small"])
    (z[:, 0] * torch.arange(4.0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
    first_conv = next(m for m in enc.backbone.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("projector_bn", [True, False])
def test_projector_batch_norm_is_optional(projector_bn: bool) -> None:
    enc = Encoder("small", feature_dim=16, projector_bn=projector_bn)
    norms = [m for m in enc.projector if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == int(projector_bn)
    assert enc(torch.randn(4, 3, 32, 32)).shape == (4, 16)


def test_projector_batch_norm_spreads_a_collapsed_start() -> None:
    """Nearly identical inputs: the batch-normalised hidden layer spreads their embeddings."""
    torch.manual_seed(0)
    base = torch.randn(1, 3, 32, 32)
    x = base + 0.01 * torch.randn(32, 3, 32, 32)
    cos = {}
    for bn in (False, True):
        torch.manual_seed(1)
        z = Encoder("small", feature_dim=16, projector_bn=bn)(x)
        cos[bn] = (z @ z.T).mean().item()
    assert cos[False] > 0.99 and cos[True] < 0.5


def test_cluster_head_logits() -> None:
    head = ClusterHead(feature_dim=128, num_clusters=10)
    assert head.num_clusters == 10
    assert head.fc.bias is not None
    assert head(torch.randn(5, 128)).shape == (5, 10)


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


def test_momentum_copy_is_frozen_equal_copy() -> None:
    enc = Encoder("small")
    key = make_momentum_copy(enc)
    assert all(not p.requires_grad for p in key.parameters())
    assert all(p.requires_grad for p in enc.parameters())
    for p, k in zip(enc.parameters(), key.parameters(), strict=True):
        assert torch.equal(p, k) and p.data_ptr() != k.data_ptr()


@pytest.mark.parametrize("m", [0.0, 0.3, 0.9, 0.999, 1.0])
def test_momentum_update_closed_form(m: float) -> None:
    torch.manual_seed(1)
    enc = Encoder("small")
    key = make_momentum_copy(enc)
    _randomise(enc)
    _randomise(key)
    online = [p.detach().clone() for p in enc.parameters()]
    before = [p.detach().clone() for p in key.parameters()]
    buffers = [b.clone() for b in key.buffers()]
    momentum_update(enc, key, m)
    for q, k0, k in zip(online, before, key.parameters(), strict=True):
        if m == 0.0:
            assert torch.equal(k, q)
        elif m == 1.0:
            assert torch.equal(k, k0)
        else:
            # Closed form in float64; the float32 update may differ by rounding only.
            expected = (m * k0.double() + (1 - m) * q.double()).float()
            torch.testing.assert_close(k, expected, rtol=1e-6, atol=1e-6)
        assert not k.requires_grad
    # The online encoder and the key encoder's BN statistics are untouched (MoCo).
    for q, p in zip(online, enc.parameters(), strict=True):
        assert torch.equal(q, p)
    for b0, b in zip(buffers, key.buffers(), strict=True):
        assert torch.equal(b0, b)


def test_momentum_update_rejects_mismatched_modules() -> None:
    with pytest.raises(ValueError):
        momentum_update(Encoder("small"), ClusterHead(128, 10), 0.9)
