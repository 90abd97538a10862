"""Networks for SCL: backbones, the MoCo v2 encoder, the cluster head and the momentum copy.

Scope
-----
* Backbones map an RGB batch ``B x 3 x S x S`` (any ``S >= 16``; 32 or 96 in practice) to a
  ``B x D`` feature vector after global average pooling (``D = FEATURE_DIMS[name]``):

  - ``resnet34`` / ``resnet18``: torchvision's ResNet with the small-image stem used by PICA
    (3x3 stride-1 conv, BN, ReLU, 2x2 stride-2 max-pool with padding 1) instead of ImageNet's
    7x7 stride-2 conv + 3x3 max-pool, so 32-px images are not shrunk 4x before the first stage.
    SCL uses ResNet-34 (as PICA) for every benchmark.
  - ``resnet50``: torchvision's bottleneck ResNet-50 (``D = 2048``), mainly for pretrained
    starts.
  - With ``stem="imagenet"`` (``fit --init``, :mod:`.pretrained`) the ResNets keep ImageNet's
    own stem, so that pretrained weights see the input they were trained on.
  - ``efficientnet_lite0`` / ``efficientnet_lite2`` (:mod:`.efficientnet`, ``D = 1280``): the
    network of the packaged ImageNet start, which has its own stem.
  - ``small``: a four-conv network (~0.5 M parameters) for fast runs on a CPU (ours).

* :class:`Encoder` is backbone + MoCo v2 MLP projection head (batch-normalised hidden layer,
  ours) + l2 normalisation.
* :class:`ClusterHead` is the linear classifier whose softmax gives cluster probabilities.
* :func:`make_momentum_copy` / :func:`momentum_update` maintain MoCo's key encoder.

All weights are randomly initialised (the paper trains from scratch; a pretrained start is
loaded afterwards, :mod:`.pretrained`). ``Encoder(frozen=True)`` keeps the backbone's weights and
batch-norm statistics fixed and runs it without gradients. Nothing here moves tensors
to a device, so callers decide with ``.to(device)`` and may use ``memory_format=channels_last``.

References
----------
* J. Huang, S. Gong, "Deep Clustering by Semantic Contrastive Learning", BMVC 2022.
* J. Huang, S. Gong, X. Zhu, "Deep Semantic Clustering by Partition Confidence Maximisation"
  (PICA), CVPR 2020 -- the ResNet-34 variant and its stem.
* X. Chen, H. Fan, R. Girshick, K. He, "Improved Baselines with Momentum Contrastive Learning"
  (MoCo v2), arXiv:2003.04297, 2020 -- the MLP head and the momentum encoder.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from imgcluster.method import efficientnet

FEATURE_DIMS: dict[str, int] = {
    "resnet34": 512,
    "resnet18": 512,
    "resnet50": 2048,
    "small": 256,
    "efficientnet_lite0": efficientnet.FEATURE_DIM,
    "efficientnet_lite2": efficientnet.FEATURE_DIM,
}
"""Backbone name -> length ``D`` of its pooled feature vector."""

_RESNET_LAYERS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
STEMS: tuple[str, ...] = ("pica", "imagenet")

# Output channels and strides of the small network's four 3x3 convolutions.
_SMALL_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)
_SMALL_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
# From this input side on, the small network's first conv has stride 2 and is followed by a
# max-pool, so 96-px images cost about as much as 32-px ones (see SmallNet).
_SMALL_DOWNSAMPLE_FROM: int = 64


def _resnet(name: str, stem: str) -> ResNet:
    """torchvision ResNet ``name`` without its classifier, with PICA's small-image stem or
    (``stem="imagenet"``) its own. Input ``B x 3 x S x S`` -> output ``B x FEATURE_DIMS[name]``.
    """
    block, layers = _RESNET_LAYERS[name]
    net = ResNet(block, layers)  # type: ignore[arg-type]
    net.fc = nn.Identity()
    if stem == "imagenet":
        return net
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # Same initialisation torchvision gives its own stem conv.
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1)
    return net


class SmallNet(nn.Module):
    """Four 3x3 conv-BN-ReLU layers and global average pooling, for fast CPU runs (ours).

    Input ``B x 3 x S x S`` -> output ``B x 256``. Small images (``S < 64``) keep full
    resolution through the first conv (32 px: maps of 32, 16, 8, 4 px). For ``S >= 64`` the first
    conv runs at stride 2 and a 2x2 max-pool follows it (96 px: 48 -> 24, then 12, 6, 3 px), as
    in an ImageNet ResNet stem: on 2 shared CPU cores (batch 128, two views, channels_last) a
    96-px MoCo step ran at ~60 img/s with the max-pool alone, ~190 with the stride alone and
    ~330-400 with both. Stride and pooling carry no weights, so one set of weights serves every
    input size.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch, stride in zip(_SMALL_WIDTHS, _SMALL_STRIDES, strict=True):
            layers.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                )
            )
            in_ch = out_ch
        self.stem = layers[0]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.body = nn.Sequential(*layers[1:])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation, so every backbone starts alike.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``B x 3 x S x S`` -> ``B x 256``."""
        if min(x.shape[-2:]) >= _SMALL_DOWNSAMPLE_FROM:
            conv, bn, relu = self.stem
            # The stem's own weights, sampled every other pixel: a quarter of the stride-1 cost.
            x = self.pool(relu(bn(F.conv2d(x, conv.weight, None, stride=2, padding=1))))
        else:
            x = self.stem(x)
        x = self.body(x)
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(name: str, stem: str = "pica") -> nn.Module:
    """Randomly initialised backbone ``B x 3 x S x S -> B x FEATURE_DIMS[name]``.

    Raises ``ValueError`` for a name not in :data:`FEATURE_DIMS` (``"auto"`` must be resolved
    by the caller first), or an ImageNet stem asked of the small net.
    """
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
    if name in _RESNET_LAYERS:
        return _resnet(name, stem)
    if name in efficientnet.SCALING:  # one stem, ImageNet's, whatever the start
        return efficientnet.EfficientNetLite(name, classifier=False)
    if stem == "imagenet":
        raise ValueError(f"the ImageNet stem goes with a ResNet, not {name!r}")
    if name == "small":
        return SmallNet()
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(FEATURE_DIMS)}")


class Encoder(nn.Module):
    """Backbone + MoCo v2 projection head, l2-normalised.

    ``forward``: ``B x 3 x S x S`` -> ``B x feature_dim`` with unit-norm rows.
    ``features``: ``B x 3 x S x S`` -> ``B x D`` pooled backbone features (before the head).
    """

    def __init__(
        self,
        backbone: str,
        feature_dim: int = 128,
        projector_bn: bool = True,
        stem: str = "pica",
        frozen: bool = False,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, stem)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        dim = FEATURE_DIMS[backbone]
        self.backbone_dim = dim
        self.feature_dim = feature_dim
        # MoCo v2's 2-layer MLP head: D -> D -> ReLU -> feature_dim, with batch normalisation
        # after the hidden layer unless projector_bn is False (ours; SimCLR and MoCo v3 have it).
        # Measured on the digits, 8 epochs of instance discrimination at m = 0.99: k-means ACC
        # on the features 0.41 without it, 0.58 with it.
        hidden: list[nn.Module] = [nn.Linear(dim, dim)]
        if projector_bn:
            hidden.append(nn.BatchNorm1d(dim))
        self.projector = nn.Sequential(*hidden, nn.ReLU(inplace=True), nn.Linear(dim, feature_dim))

    def train(self, mode: bool = True) -> Encoder:
        """As ``nn.Module.train``, but a frozen backbone stays in eval mode (fixed statistics)."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features, ``B x 3 x S x S`` -> ``B x D``.

        A frozen backbone's features computed beforehand (``B x D``, the cached views of
        :mod:`imgcluster.train.feature_views`) are returned as they are.
        """
        if x.ndim == 2:
            if not self.frozen:
                raise ValueError("pooled features stand in for images only with a frozen backbone")
            return x
        if self.frozen:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def project(self, h: Tensor) -> Tensor:
        """Pooled features to unit-norm embeddings, ``B x D`` -> ``B x feature_dim``."""
        return F.normalize(self.projector(h), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Unit-norm embeddings, ``B x 3 x S x S`` (or a frozen backbone's ``B x D``, see
        :meth:`features`) -> ``B x feature_dim``."""
        return self.project(self.features(x))


class ClusterHead(nn.Module):
    """Linear classifier over embeddings: ``B x feature_dim`` -> ``B x num_clusters`` logits.

    Callers apply the softmax (cluster probabilities) or log-softmax (losses) themselves.
    """

    def __init__(self, feature_dim: int, num_clusters: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_clusters = num_clusters
        self.fc = nn.Linear(feature_dim, num_clusters, bias=True)

    def forward(self, z: Tensor) -> Tensor:
        """``B x feature_dim`` -> ``B x num_clusters`` logits."""
        return self.fc(z)


def make_momentum_copy(encoder: Encoder) -> Encoder:
    """MoCo's key encoder: a deep copy of ``encoder`` that never receives gradients.

    It starts equal to the online encoder and is then only moved by :func:`momentum_update`.
    """
    key = copy.deepcopy(encoder)
    for p in key.parameters():
        p.requires_grad_(False)
    return key


@torch.no_grad()
def momentum_update(online: nn.Module, momentum_copy: nn.Module, m: float) -> None:
    """In-place ``theta_k <- m * theta_k + (1 - m) * theta_q`` over all parameters.

    Parameters only, as in MoCo: buffers (BatchNorm running mean/var) are *not* averaged --
    the key encoder keeps the running statistics its own forward passes compute. ``m = 1``
    leaves the copy unchanged; ``m = 0`` copies the online weights. The two modules must have
    the same architecture (parameters are paired in registration order); parameters the online
    module does not train are skipped.
    """
    q_params = list(online.parameters())
    k_params = list(momentum_copy.parameters())
    if len(q_params) != len(k_params):
        raise ValueError(
            f"online has {len(q_params)} parameter tensors, momentum copy {len(k_params)}"
        )
    # A frozen online parameter (Encoder(frozen=True)) is left alone: its copy already equals it.
    pairs = [(q, k) for q, k in zip(q_params, k_params, strict=True) if q.requires_grad]
    q_params, k_params = [q for q, _ in pairs], [k for _, k in pairs]
    # One fused kernel per op over all tensors instead of a Python loop of ~100 small ops.
    torch._foreach_mul_(k_params, m)
    torch._foreach_add_(k_params, q_params, alpha=1.0 - m)


def count_parameters(module: nn.Module) -> int:
    """Total number of elements in ``module``'s parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
