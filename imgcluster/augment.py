"""Batched image augmentation for contrastive training, with independent randomness per image.

Scope: the MoCo v2 augmentation without Gaussian blur (Chen et al., "Improved Baselines with
Momentum Contrastive Learning", 2020; the view generator used by SCL, see SCL.md):
RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3)), horizontal flip (p=0.5), ColorJitter(0.4,
0.4, 0.4, 0.1) applied with p=0.8, RandomGrayscale (p=0.2), then normalisation.

Why not torchvision: a torchvision transform called on a batch tensor draws one set of random
parameters for the whole batch (every image gets the same crop), which defeats contrastive
learning, and calling it once per image is far too slow on a CPU. Here every random parameter is
drawn per image, as tensors, and applied in batched kernels: the crop, its resize and the flip
are one ``grid_sample``; each colour operation is a few element-wise passes with per-image
factors. Nothing reads tensor values on the host, so there is no device synchronisation.

The colour operations follow torchvision's definitions (``adjust_brightness``, ``_contrast``,
``_saturation``, ``_hue`` and ``rgb_to_grayscale``, whose luma weights are 0.2989/0.587/0.114
for ITU-R 601-2), with a clamp to [0, 1] after each, and, like torchvision's ``ColorJitter``, in
an order drawn per image from the 24 permutations (see :func:`_color_jitter`).

Public API: :data:`MEAN`, :data:`STD`, :class:`AugmentParams`, :func:`to_float`,
:func:`normalize`, :func:`preprocess` (the un-augmented input path, also what the ONNX exporter
puts in front of the model), :func:`augment` and :func:`compiled_augment` (the same views with
the rendering compiled, for GPUs).

Speed notes (CPU): ``where``, ``remainder``, ``aminmax`` over channels and bool tensors are
several times slower than plain float arithmetic, and every freshly allocated page costs a
fault (about 0.8 ms per MB on the VMs we measured), so the kernels below use float masks and
in-place updates into a per-thread scratch buffer that is reused across calls, and a large
batch is rendered in cache-sized chunks.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MEAN",
    "STD",
    "AugmentParams",
    "to_float",
    "normalize",
    "preprocess",
    "augment",
    "compiled_augment",
    "AUGMENTATIONS",
    "choose_augmentation",
    "is_greyscale",
]

GREYSCALE_MIN_SCALE = 0.7

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_CROP_TRIES = 10  # torchvision's RandomResizedCrop attempts before its centre-crop fallback
# Columns of the one uniform draw per batch: crop tries (area, log-ratio, top, left), flip,
# jitter (3 factors, hue, 4 sort keys for the order, apply), grayscale.
_U_CROP, _U_FLIP, _U_JITTER, _U_GRAY, _U_COLS = 0, 4 * _CROP_TRIES, 41, 50, 51

# On CPU the batch is rendered in chunks of about this many values per B×3×H×W tensor (4 MB),
# so the ~50 element-wise passes stay in cache and the scratch buffer stays small. Measured on
# 2 cores at 32 and 96 px: 2**20 was best with 2 threads (smaller chunks lose more to
# per-op thread start-up than they gain in cache), 2**18 only slightly better with 1 thread.
_CPU_CHUNK_ELEMS = 1 << 20


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation settings; the defaults are MoCo v2's (without blur)."""

    scale: tuple[float, float] = (0.2, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.5
    jitter_p: float = 0.8  # probability of applying the colour jitter to an image
    brightness: float = 0.4  # factor ~ U[max(0, 1 - b), 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift ~ U[-hue, hue], in turns of the colour wheel
    grayscale_p: float = 0.2


# The views for each kind of image (``fit --augment``; "auto" picks one from the images, see
# :func:`choose_augmentation`). On images with one channel, saturation, hue and grayscale do
# nothing, so what sets "greyscale" apart is what measured better on greyscale sets
# (docs/benchmarks.md, "Quality experiments"): no horizontal flip, which turns handwriting into
# other shapes (2/5, b/d), and milder crops, since without colour the crop is the only strong
# augmentation left and small glyphs do not survive a crop of a fifth of their area.
AUGMENTATIONS: dict[str, AugmentParams] = {
    "colour": AugmentParams(),  # MoCo v2 without blur: the paper's
    "greyscale": AugmentParams(
        scale=(GREYSCALE_MIN_SCALE, 1.0), flip_p=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0
    ),
}


def is_greyscale(images: np.ndarray, sample: int = 512) -> bool:
    """Whether the images (uint8 N×3×S×S, e.g. the decode cache) all have R = G = B, judged on
    an evenly spaced sample of them."""
    picks = np.unique(np.linspace(0, len(images) - 1, min(sample, len(images))).astype(int))
    x = np.asarray(images[picks])
    return bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())


def choose_augmentation(name: str, images: np.ndarray) -> str:
    """The augmentation a run uses: ``name``, or for "auto" "greyscale" when every sampled image
    is grey and "colour" otherwise. Raises ValueError for an unknown name."""
    if name == "auto":
        return "greyscale" if is_greyscale(images) else "colour"
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; expected auto or one of "
                         f"{', '.join(AUGMENTATIONS)}")  # fmt: skip
    return name


def to_float(x: Tensor) -> Tensor:
    """uint8 ``B×3×H×W`` (any device, any memory format) -> float32 in [0, 1], same shape.

    A floating-point input is taken to be in [0, 1] already and only cast to float32.
    """
    if x.is_floating_point():
        return x.to(torch.float32)
    return x.to(torch.float32).div_(255.0)


def normalize(x: Tensor) -> Tensor:
    """float ``B×3×H×W`` in [0, 1] -> ``(x - MEAN) / STD`` per channel, float32, same shape."""
    mean, std = _channel_const(MEAN, x.device), _channel_const(STD, x.device)
    return (x.to(torch.float32) - mean).div_(std)


def preprocess(x: Tensor) -> Tensor:
    """uint8 ``B×3×H×W`` -> normalised float32 ``B×3×H×W``, no augmentation.

    The input path for evaluation, label updates and the exported model.
    """
    return normalize(to_float(x))


def augment(
    x: Tensor,
    generator: torch.Generator | None = None,
    params: AugmentParams = AugmentParams(),
) -> Tensor:
    """One random view per image: uint8 ``B×3×H×W`` -> normalised float32 ``B×3×H×W``.

    Every image gets its own crop, flip, jitter and grayscale draw. All random numbers come from
    ``generator`` (which must live on ``x.device``; ``None`` uses torch's default generator), so
    a seeded run is reproducible. The output has the input's spatial size and memory format
    (channels_last in, channels_last out; otherwise contiguous), so a channels_last model needs
    no extra conversion pass.
    """
    return _views(x, generator, params, normalise=True)


def _augment01(
    x: Tensor, generator: torch.Generator | None = None, params: AugmentParams = AugmentParams()
) -> Tensor:
    """:func:`augment` without the normalisation: uint8 ``B×3×H×W`` -> float32 in [0, 1]."""
    return _views(x, generator, params, normalise=False)


def compiled_augment(
    params: AugmentParams = AugmentParams(),
) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """:func:`augment` with its rendering compiled by ``torch.compile`` (one graph per shape).

    The random draw stays eager (a generator cannot enter a compiled graph); everything after
    it is a pure function of the images and the uniforms, so the views are the same as
    :func:`augment`'s up to float rounding. On a GPU this fuses the ~340 small kernels of a
    view into a few; on a CPU the hand-tuned eager code is faster (docs/benchmarks.md).
    """

    def render_normalised(x: Tensor, u: Tensor) -> Tensor:
        return _render_views(x, u, params, normalise=True)

    fast = torch.compile(render_normalised, dynamic=False)

    def augment_compiled(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return fast(x, _draw(x, generator))

    return augment_compiled


def _views(
    x: Tensor, generator: torch.Generator | None, params: AugmentParams, normalise: bool
) -> Tensor:
    """Draw every image's parameters for the whole batch, then render them."""
    return _render_views(x, _draw(x, generator), params, normalise)


def _draw(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """The batch's only random draw: uniforms ``B×51`` on the images' device."""
    batch, channels = x.shape[:2]
    if channels != 3:
        raise ValueError(f"expected B×3×H×W images, got shape {tuple(x.shape)}")
    return torch.rand((batch, _U_COLS), generator=generator, device=x.device)


def _render_views(x: Tensor, u: Tensor, params: AugmentParams, normalise: bool) -> Tensor:
    """Every image's view from its uniforms ``u``, rendered chunk by chunk.

    All random numbers are in ``u``, so the result does not depend on the chunking.
    """
    batch, channels, height, width = x.shape
    plan = _make_plan(u, (height, width), params)
    chunk = batch
    if x.device.type == "cpu":  # on a GPU one launch per op for the whole batch is best
        chunk = max(1, _CPU_CHUNK_ELEMS // (channels * height * width))
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
    ws = _scratch(x.device)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        _render(x[start:stop], plan, start, stop, out[start:stop], normalise, ws)
    return out


def _channel_const(values: tuple[float, float, float], device: torch.device) -> Tensor:
    """A ``1×3×1×1`` float32 constant: made once per device, or inline in a compiled graph
    (where it costs nothing and a cache would only be traced around)."""
    if torch.compiler.is_compiling():
        return _new_channel_const(values, device)
    return _cached_channel_const(values, device)


def _new_channel_const(values: tuple[float, float, float], device: torch.device) -> Tensor:
    """Filled in place rather than copied from a Python list, since a host-to-device copy would
    synchronise."""
    const = torch.empty((1, 3, 1, 1), dtype=torch.float32, device=device)
    for i, value in enumerate(values):
        const[:, i].fill_(value)
    return const


@functools.lru_cache(maxsize=32)
def _cached_channel_const(values: tuple[float, float, float], device: torch.device) -> Tensor:
    """Never an inference tensor (even if first asked for under inference_mode), which could
    not be saved for backward if a caller differentiates through normalize()."""
    with torch.inference_mode(False):
        return _new_channel_const(values, device)


# --- the random draws ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Every random choice for a batch of ``B`` images, as tensors on the images' device.

    ``xs`` ``B×W`` and ``ys`` ``B×H``: sampling coordinates of the crop (see
    :func:`_axis_coords`); ``blend`` ``6×3×B``: coefficients of the linear jitter steps and
    ``hue`` ``B``: hue shifts (see :func:`_jitter_schedule`), ``None`` when switched off;
    ``gray`` ``B×1×1×1`` float, 1 = convert to grayscale, ``None`` when switched off.
    """

    xs: Tensor
    ys: Tensor
    blend: Tensor | None
    hue: Tensor | None
    gray: Tensor | None


def _make_plan(u: Tensor, size: tuple[int, int], params: AugmentParams) -> _Plan:
    """Turn uniforms ``B×51`` (the batch's only random draw) into a :class:`_Plan`."""
    batch = u.shape[0]
    crop_u = u[:, _U_CROP:_U_FLIP].reshape(batch, 4, _CROP_TRIES)
    boxes = _sample_boxes(crop_u, size, params.scale, params.ratio)
    flip = u[:, _U_FLIP] < params.flip_p
    ys = _axis_coords(boxes[:, 0], boxes[:, 2], size[0], torch.zeros_like(flip))
    xs = _axis_coords(boxes[:, 1], boxes[:, 3], size[1], flip)
    blend = hue = gray = None
    # Python checks on settings, never on tensor values: no host-device sync.
    if params.jitter_p > 0:
        blend, hue = _jitter_schedule(u[:, _U_JITTER:_U_GRAY], params)
        hue = hue if params.hue > 0 else None  # skip the hue pass when it cannot do anything
    if params.grayscale_p > 0:
        gray = (u[:, _U_GRAY] < params.grayscale_p).to(torch.float32).view(-1, 1, 1, 1)
    return _Plan(xs, ys, blend, hue, gray)


def _sample_boxes(
    u: Tensor, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]
) -> Tensor:
    """RandomResizedCrop boxes ``B×4``, float ``(top, left, height, width)`` in whole pixels.

    ``u`` is ``B×4×T`` uniforms (area, log-ratio, top, left for each of ``T`` tries).
    torchvision's sampling, vectorised: all tries at once, the first valid one is kept, and an
    image with none valid gets torchvision's centre-crop fallback.
    """
    height, width = size
    area = (u[:, 0] * (scale[1] - scale[0]) + scale[0]) * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(u[:, 1] * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(area * aspect).round_()  # torch.round is half-to-even like Python's round
    h = torch.sqrt(area / aspect).round_()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # randint(0, n - h + 1) as floor(u * (n - h + 1)); the clamp guards float rounding up to n.
    top = torch.minimum((u[:, 2] * (height - h + 1)).floor_(), height - h)
    left = torch.minimum((u[:, 3] * (width - w + 1)).floor_(), width - w)
    tries = torch.stack((top, left, h, w), dim=-1)  # B×T×4
    first = ok.to(torch.uint8).argmax(dim=1)  # argmax returns the first of equal maxima
    picked = tries.gather(1, first.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)
    any_ok = ok.any(dim=1)
    # Column by column with Python scalars: a tensor literal would be a host-to-device copy.
    fallback = _centre_box(size, ratio)
    return torch.stack([torch.where(any_ok, picked[:, i], float(fallback[i])) for i in range(4)], 1)


def _centre_box(size: tuple[int, int], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop fallback box ``(top, left, height, width)``."""
    height, width = size
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _jitter_schedule(u: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """ColorJitter's per-image draws, laid out as the step schedule of :func:`_color_jitter`.

    ``u`` is ``B×9`` uniforms. Returns ``blend`` ``6×3×B``, the ``(factor, gray, mean)``
    coefficients of :func:`_blend_` for each of the six linear steps, and ``hue`` ``B``.
    Images not jittered (probability ``1 - jitter_p``) get identity steps and no hue shift.
    """
    cols = []
    for i, strength in enumerate((params.brightness, params.contrast, params.saturation)):
        low = max(0.0, 1.0 - strength)
        cols.append(u[:, i] * (1.0 + strength - low) + low)  # U[max(0, 1-s), 1+s]
    factors = torch.stack(cols, dim=1)  # B×3
    hue = (u[:, 3] * 2.0 - 1.0) * params.hue
    order = torch.argsort(u[:, 4:8], dim=1)  # a uniform permutation of 0..3 per image; 3 = hue
    apply = u[:, 8] < params.jitter_p
    factors = torch.where(apply.view(-1, 1), factors, 1.0)
    hue = torch.where(apply, hue, 0.0)
    # Pad each order with "no-op" (3) on both sides and read 7 slots centred on its hue: slot
    # t runs entry t - 3 + (position of hue). Slot 3 is the hue itself, the rest are blends.
    padded = F.pad(order, (3, 3), value=3)
    hue_pos = (order == 3).to(torch.uint8).argmax(dim=1, keepdim=True)
    slots = torch.arange(6, device=u.device)
    slots += slots >= 3  # 0, 1, 2, 4, 5, 6 (no tensor literal: that would be a host copy)
    op = padded.gather(1, hue_pos + slots)  # B×6, 0/1/2 = brightness/contrast/saturation
    f = F.pad(factors, (0, 1), value=1.0).gather(1, op)  # op 3 -> factor 1, an exact no-op
    coef = torch.stack((f, (1.0 - f) * (op == 2), (1.0 - f) * (op == 1)))  # 3×B×6
    return coef.permute(2, 0, 1).contiguous(), hue


# --- rendering --------------------------------------------------------------------------------


def _render(
    x: Tensor, plan: _Plan, start: int, stop: int, out: Tensor, normalise: bool, ws: _Scratch
) -> None:
    """Images ``start:stop`` of ``plan`` applied to ``x`` (uint8 ``b×3×H×W``), into ``out``."""
    n, _, height, width = x.shape
    img, grid = ws.carve((n, 3, height, width), (n, height, width, 2))
    img.copy_(x)  # to_float() into scratch; also undoes channels_last
    if not x.is_floating_point():
        img.div_(255.0)
    _stack_grid(plan.xs[start:stop], plan.ys[start:stop], out=grid)
    view = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if plan.blend is not None:
        hue = None if plan.hue is None else plan.hue[start:stop]
        view = _color_jitter(view, plan.blend[:, :, start:stop], hue, ws)
    gray = None if plan.gray is None else plan.gray[start:stop]
    _grayscale_and_normalise(view, gray, out, normalise, ws)


def _grayscale_and_normalise(
    x: Tensor, gray: Tensor | None, out: Tensor, normalise: bool, ws: _Scratch
) -> None:
    """``out <- (x*(1-m) + luma(x)*m - MEAN) / STD``; float ``B×3×H×W``, ``m`` ``B×1×1×1``.

    Blending with a 0/1 mask is exact (equal channels where ``m`` is 1) and cheaper than
    ``where`` on CPU. ``x`` is overwritten; ``normalise=False`` skips the normalisation.
    """
    if gray is not None:
        (luma,) = ws.carve((x.shape[0], 1, x.shape[2], x.shape[3]))
        _grayscale(x, out=luma).mul_(gray)
        torch.addcmul(luma, x, 1.0 - gray, out=x)
    mean, std = _channel_const(MEAN, x.device), _channel_const(STD, x.device)
    # The same two operations as normalize(), so the identity view equals preprocess() exactly.
    if normalise and out.is_contiguous():
        torch.sub(x, mean, out=out).div_(std)
        return
    if normalise:  # a strided output makes sub() ~10x slower: normalise in place, then copy
        x.sub_(mean).div_(std)
    out.copy_(x)


class _Scratch:
    """Float32 scratch tensors carved from one buffer that is kept and reused.

    Why: on CPU every freshly allocated page costs a fault (about 0.8 ms per MB on the VMs we
    measured, more than the arithmetic), and the allocator hands big blocks back to the
    kernel between calls. Reusing one buffer per thread removes that cost from all but the
    first call. Each :meth:`carve` starts again at the buffer's beginning, so only the
    tensors of the latest carve are valid. On other devices (whose caching allocators already
    reuse memory) :meth:`carve` simply allocates.
    """

    def __init__(self, device: torch.device, reuse: bool) -> None:
        self.device, self.reuse = device, reuse
        self.buffer = torch.empty(0, dtype=torch.float32, device=device)

    def carve(self, *shapes: tuple[int, ...]) -> list[Tensor]:
        """One contiguous float32 tensor per shape, valid until the next call."""
        if not self.reuse:
            return [torch.empty(shape, dtype=torch.float32, device=self.device) for shape in shapes]
        sizes = [math.prod(shape) for shape in shapes]
        if self.buffer.numel() < sum(sizes):
            # Never an inference tensor, which could not be written outside inference_mode.
            with torch.inference_mode(False):
                self.buffer = torch.empty(sum(sizes), dtype=torch.float32, device=self.device)
        parts = self.buffer[: sum(sizes)].split(sizes)
        return [part.view(shape) for part, shape in zip(parts, shapes, strict=True)]


_THREAD_SCRATCH = threading.local()


def _scratch(device: torch.device) -> _Scratch:
    """This thread's reusable scratch on CPU (a few MB, kept for the thread's life).

    Plain allocations on other devices and inside a compiled graph, whose compiler plans the
    buffers itself.
    """
    if device.type != "cpu" or torch.compiler.is_compiling():
        return _Scratch(device, reuse=False)
    ws = getattr(_THREAD_SCRATCH, "cpu", None)
    if ws is None:
        ws = _THREAD_SCRATCH.cpu = _Scratch(device, reuse=True)
    return ws


def _grid_from_boxes(boxes: Tensor, flip: Tensor, size: tuple[int, int]) -> Tensor:
    """``grid_sample`` grid ``B×H×W×2`` that resizes each box to ``size`` and maybe flips it.

    ``boxes`` is ``B×4`` ``(top, left, height, width)`` in input pixels, ``flip`` is ``B`` bool.
    This is ``affine_grid`` of ``[[±w/W, 0, cx], [0, h/H, cy]]`` (``align_corners=False``; the
    flip negates the x scale), computed per axis, plus one step affine_grid lacks: source
    coordinates are clamped to the box's outer pixel centres. That makes it equal to
    torchvision's crop-then-resize (which never reads pixels outside the crop) instead of
    blending in up to half a pixel of the surroundings at the box edges.
    """
    ys = _axis_coords(boxes[:, 0], boxes[:, 2], size[0], torch.zeros_like(flip))
    xs = _axis_coords(boxes[:, 1], boxes[:, 3], size[1], flip)
    return _stack_grid(xs, ys)


def _stack_grid(xs: Tensor, ys: Tensor, out: Tensor | None = None) -> Tensor:
    """Separable coordinates ``B×W`` and ``B×H`` -> ``grid_sample`` grid ``B×H×W×2``."""
    batch, height, width = xs.shape[0], ys.shape[1], xs.shape[1]
    grid_x = xs.view(batch, 1, width).expand(batch, height, width)
    grid_y = ys.view(batch, height, 1).expand(batch, height, width)
    return torch.stack((grid_x, grid_y), dim=-1, out=out)


def _axis_coords(start: Tensor, length: Tensor, n: int, flip: Tensor) -> Tensor:
    """Normalised source coordinates ``B×n`` of the ``n`` output pixels along one axis.

    Output pixel ``o`` samples box pixel ``(o + 0.5) * length / n - 0.5`` (half-pixel centres,
    as ``align_corners=False`` resizing does), mirrored when ``flip``; then clamped to the box.
    """
    centres = (torch.arange(n, device=start.device, dtype=torch.float32) + 0.5) / n  # 1×n
    centres = torch.where(flip.view(-1, 1), 1.0 - centres, centres)
    src = start.view(-1, 1) + centres * length.view(-1, 1) - 0.5  # input pixel coordinates
    src = torch.minimum(torch.maximum(src, start.view(-1, 1)), (start + length - 1).view(-1, 1))
    return (2.0 * src + 1.0) / n - 1.0  # pixel -> grid_sample's [-1, 1] (align_corners=False)


# --- colour ---------------------------------------------------------------------------------


def _grayscale(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Luma of float ``B×3×H×W`` -> ``B×1×H×W`` (torchvision's weights)."""
    r, g, b = x.unbind(dim=1)
    if out is None:
        out = torch.empty_like(x[:, :1])
    torch.mul(r, _LUMA[0], out=out[:, 0])
    return out.squeeze(1).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _blend_(x: Tensor, coef: Tensor, ws: _Scratch) -> Tensor:
    """One linear jitter step for all images, in place on float ``B×3×H×W`` in [0, 1].

    ``x <- clamp(f*x + g*gray(x) + m*mean(gray(x)), 0, 1)`` with ``coef`` ``3×B`` holding each
    image's ``(f, g, m)``. torchvision's three linear adjustments all have this shape:
    brightness ``(f, 0, 0)``, contrast ``(f, 0, 1-f)``, saturation ``(f, 1-f, 0)``, so one
    kernel sequence serves whichever of them each image has at this step; ``(1, 0, 0)`` leaves
    an image unchanged, exactly.
    """
    f, g, m = coef.view(3, -1, 1, 1, 1).unbind(0)
    (gray,) = ws.carve((x.shape[0], 1, x.shape[2], x.shape[3]))
    _grayscale(x, out=gray)
    offset = gray.mean(dim=(1, 2, 3), keepdim=True).mul_(m)
    # The 1-channel term first, then one pass over x. (addcmul is only fast on CPU when its
    # first operand is a full plane; with a small broadcast one it is about 8x slower.)
    gray.mul_(g).add_(offset)
    return torch.addcmul(gray, x, f, out=x).clamp_(0.0, 1.0)


def _adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_brightness`` with a factor per image: ``B×3×H×W``, ``B``."""
    zero = torch.zeros_like(factor)
    return _blend_(x.clone(), torch.stack((factor, zero, zero)), _Scratch(x.device, False))


def _adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_contrast`` with a factor per image: ``B×3×H×W``, ``B``."""
    coef = torch.stack((factor, torch.zeros_like(factor), 1.0 - factor))
    return _blend_(x.clone(), coef, _Scratch(x.device, False))


def _adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_saturation`` with a factor per image: ``B×3×H×W``, ``B``."""
    coef = torch.stack((factor, 1.0 - factor, torch.zeros_like(factor)))
    return _blend_(x.clone(), coef, _Scratch(x.device, False))


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision ``adjust_hue`` with a shift per image: float ``B×3×H×W`` in [0, 1], ``B``.

    Same HSV hexcone model as torchvision's ``_rgb2hsv``/``_hsv2rgb`` (hue from the largest
    channel, r winning ties, then g), with the closed-form way back ``rgb = min + chroma *
    pure(h)``, ``pure`` being the fully saturated colour of hue ``h`` in sixths of a turn:
    ``r = clamp(|h - 3| - 1)``, ``g = clamp(2 - |h - 2|)``, ``b = clamp(2 - |h - 4|)``.
    Equal to torchvision up to float rounding (about 1e-6). Returns a new tensor.
    """
    return _adjust_hue_(x.clone(), shift, _Scratch(x.device, False))


def _adjust_hue_(x: Tensor, shift: Tensor, ws: _Scratch) -> Tensor:
    """:func:`_adjust_hue` overwriting ``x``, temporaries carved from ``ws``."""
    r, g, b = x.unbind(dim=1)
    maxc, minc, not_r, on_g, hue6, tmp = ws.carve(*[r.shape] * 6)
    torch.maximum(torch.maximum(r, g, out=maxc), b, out=maxc)
    torch.minimum(torch.minimum(r, g, out=minc), b, out=minc)
    # Float one-hot of the hue branch (largest channel, r winning ties, then g); comparisons
    # written straight into float tensors skip the slow bool tensors.
    on_r = torch.eq(maxc, r, out=tmp)  # lives in tmp until the first line using tmp again
    torch.ne(maxc, r, out=not_r)
    torch.eq(maxc, g, out=on_g).mul_(not_r)
    on_b = not_r.sub_(on_g)
    torch.sub(g, b, out=hue6).mul_(on_r)  # hue * chroma, branch by branch
    hue6.addcmul_(on_g, torch.sub(b, r, out=tmp)).addcmul_(on_b, torch.sub(r, g, out=tmp))
    chroma = maxc.sub_(minc)
    # Grey pixels have a zero numerator; the floor on chroma only avoids 0/0 (below it the hue
    # does not matter: the output is min + chroma * pure).
    hue6.div_(torch.clamp(chroma, min=1e-12, out=tmp)).add_(on_g, alpha=2.0)
    hue6.add_(on_b, alpha=4.0).add_(shift.view(-1, 1, 1), alpha=6.0)
    hue6.sub_(torch.mul(hue6, 1.0 / 6.0, out=tmp).floor_(), alpha=6.0)  # mod 6
    # x (r, g, b) is dead now, so its storage takes pure() and then the result.
    pure = torch.sub(hue6.unsqueeze(1), _channel_const((3.0, 2.0, 4.0), x.device), out=x)
    pure.abs_().mul_(_channel_const((1.0, -1.0, -1.0), x.device))
    pure.add_(_channel_const((-1.0, 2.0, 2.0), x.device)).clamp_(0.0, 1.0)
    return torch.addcmul(minc.unsqueeze(1), pure, chroma.unsqueeze(1), out=pure)


def _color_jitter(x: Tensor, blend: Tensor, hue: Tensor | None, ws: _Scratch) -> Tensor:
    """ColorJitter with per-image factors and order, in place: float ``B×3×H×W`` in [0, 1].

    ``blend`` ``6×3×B`` and ``hue`` ``B`` come from :func:`_jitter_schedule` (``hue=None``:
    no hue step).

    Order decision: each image gets its own uniformly random order of the four operations,
    exactly as torchvision draws one per call. That batches cheaply because brightness,
    contrast and saturation are one blend (:func:`_blend_`) differing only in per-image
    coefficients, so any of them can run at any step; only hue differs. Every image's order is
    aligned so that hue sits at the middle of a 7-step schedule ``L L L H L L L``: the ops the
    image has before hue fill the last of the first three linear steps, those after it the
    first of the last three, and unused steps are exact identities. The price is three extra
    blends (about 15% of the augmentation time) instead of a fixed or per-batch order.
    """
    for step in range(6):
        if step == 3 and hue is not None:
            x = _adjust_hue_(x, hue, ws)
        x = _blend_(x, blend[step], ws)
    return x
