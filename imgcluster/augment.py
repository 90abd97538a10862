"""Batched image augmentation for contrastive training, with independent randomness per image.

Scope: the MoCo v2 augmentation without Gaussian blur (Chen et al., "Improved Baselines with
Momentum Contrastive Learning", 2020; the view generator used by SCL, see SCL.md):
RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3)), horizontal flip (p=0.5), ColorJitter(0.4,
0.4, 0.4, 0.1) applied with p=0.8, RandomGrayscale (p=0.2), then normalisation.

Why not torchvision: a torchvision transform called on a batch tensor draws one set of random
parameters for the whole batch (every image gets the same crop), which defeats contrastive
learning, and calling it once per image is far too slow on a CPU. Here every random parameter is
drawn per image, as tensors, and applied in a handful of batched kernels: the crop, its resize
and the flip are one ``grid_sample``; each colour operation is a few element-wise passes with
per-image factors. There is no host-device synchronisation, so it runs as well on a GPU.

The colour operations follow torchvision's definitions (``adjust_brightness``, ``_contrast``,
``_saturation``, ``_hue`` and ``rgb_to_grayscale``, luma weights 0.2989/0.587/0.114 as
torchvision uses for ITU-R 601-2), with a clamp to [0, 1] after each, and, like torchvision's
``ColorJitter``, in an order drawn per image from the 24 permutations (see :func:`_color_jitter`).

Public API: :data:`MEAN`, :data:`STD`, :class:`AugmentParams`, :func:`to_float`,
:func:`normalize`, :func:`preprocess` (the un-augmented input path, also what the ONNX exporter
puts in front of the model) and :func:`augment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MEAN", "STD", "AugmentParams", "to_float", "normalize", "preprocess", "augment"]

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_CROP_TRIES = 10  # torchvision's RandomResizedCrop attempts before its centre-crop fallback


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


def to_float(x: Tensor) -> Tensor:
    """uint8 ``B×3×H×W`` (any device, any memory format) -> float32 in [0, 1], same shape.

    A floating-point input is taken to be in [0, 1] already and only cast to float32.
    """
    if x.is_floating_point():
        return x.to(torch.float32)
    return x.to(torch.float32).div_(255.0)


def normalize(x: Tensor) -> Tensor:
    """float ``B×3×H×W`` in [0, 1] -> ``(x - MEAN) / STD`` per channel, float32, same shape."""
    return _normalize_(x.to(torch.float32, copy=True))


def _normalize_(x: Tensor) -> Tensor:
    """In-place :func:`normalize` of a float32 ``B×3×H×W`` tensor the caller owns."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


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
    a seeded run is reproducible. The output has the input's spatial size and is contiguous.
    """
    return _views(x, generator, params, normalise=True)


def _augment01(x: Tensor, generator: torch.Generator | None, params: AugmentParams) -> Tensor:
    """:func:`augment` before normalisation: uint8 ``B×3×H×W`` -> float32 in [0, 1]."""
    return _views(x, generator, params, normalise=False)


# On CPU the batch is processed in chunks of about this many float values per B×3×H×W tensor:
# the ~60 element-wise passes then run on cache-resident data and reuse the same small heap
# blocks, instead of streaming whole-batch temporaries through memory (and, on VMs where
# fresh pages are expensive, page-faulting on each new one). Measured best around 2**18.
_CPU_CHUNK_ELEMS = 1 << 18


def _views(
    x: Tensor, generator: torch.Generator | None, params: AugmentParams, normalise: bool
) -> Tensor:
    """Draw every image's parameters for the whole batch, then render chunk by chunk.

    All random numbers are drawn up front, so the result does not depend on the chunking.
    """
    batch, channels, height, width = x.shape
    if channels != 3:
        raise ValueError(f"expected B×3×H×W images, got shape {tuple(x.shape)}")
    plan = _draw_plan(batch, (height, width), params, _Draw(generator, x.device))
    chunk = batch
    if x.device.type == "cpu":  # on a GPU one launch per op for the whole batch is best
        chunk = max(1, _CPU_CHUNK_ELEMS // (channels * height * width))
    if chunk >= batch:
        return _render(x, plan, 0, batch, normalise)
    out = torch.empty((batch, channels, height, width), dtype=torch.float32, device=x.device)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        out[start:stop] = _render(x[start:stop], plan, start, stop, normalise)
    return out


class _Draw:
    """Uniform draws from one generator on one device (keeps call sites short)."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        self.device = device

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        """float32 tensor of ``shape`` with values ~ U[low, high)."""
        u = torch.rand(shape, generator=self.generator, device=self.device)
        return u.mul_(high - low).add_(low) if (low, high) != (0.0, 1.0) else u


@dataclass(frozen=True)
class _Plan:
    """Every random choice for a batch of ``B`` images, as tensors on the images' device.

    ``boxes`` ``B×4`` crop boxes and ``flip`` ``B`` bool (see :func:`_grid_from_boxes`);
    ``blend`` ``6×3×B`` coefficients of the linear jitter steps (see :func:`_jitter_schedule`)
    and ``hue`` ``B`` shifts, ``None`` when no jitter (or no hue jitter) is configured; ``gray`` ``B×1×1×1``
    float 0/1 (1 = convert to grayscale), ``None`` when grayscale is off.
    """

    boxes: Tensor
    flip: Tensor
    blend: Tensor | None
    hue: Tensor | None
    gray: Tensor | None


def _draw_plan(batch: int, size: tuple[int, int], params: AugmentParams, draw: _Draw) -> _Plan:
    """Draw all of a batch's augmentation parameters (order of draws fixed: reproducible)."""
    boxes = _sample_boxes(batch, size, params.scale, params.ratio, draw)
    flip = draw.uniform(batch) < params.flip_p
    blend = hue = gray = None
    # Python checks on settings, never on tensor values: no host-device sync.
    if params.jitter_p > 0:
        blend, hue = _jitter_schedule(batch, params, draw)
        hue = hue if params.hue > 0 else None  # skip the hue pass when it cannot do anything
    if params.grayscale_p > 0:
        gray = (draw.uniform(batch) < params.grayscale_p).to(torch.float32).view(-1, 1, 1, 1)
    return _Plan(boxes, flip, blend, hue, gray)


def _render(x: Tensor, plan: _Plan, start: int, stop: int, normalise: bool) -> Tensor:
    """Apply images ``start:stop`` of ``plan`` to ``x`` (uint8 ``b×3×H×W``) -> float32."""
    size = (x.shape[2], x.shape[3])
    grid = _grid_from_boxes(plan.boxes[start:stop], plan.flip[start:stop], size)
    # grid_sample's CPU kernel is fastest on NCHW; making the uint8 input contiguous is the
    # cheapest place to undo channels_last.
    img = to_float(x.contiguous())
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if plan.blend is not None:
        hue = None if plan.hue is None else plan.hue[start:stop]
        out = _color_jitter(out, plan.blend[:, :, start:stop], hue)
    if plan.gray is not None:
        m = plan.gray[start:stop]
        # x*(1-m) + gray*m is exact for m in {0, 1} and cheaper than where() on CPU.
        out = torch.addcmul(_grayscale(out).mul_(m), out, 1.0 - m)
    return _normalize_(out) if normalise else out


# --- crop, resize and flip ------------------------------------------------------------------


def _sample_boxes(
    batch: int,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    draw: _Draw,
) -> Tensor:
    """RandomResizedCrop boxes ``B×4`` as float ``(top, left, height, width)`` in pixels.

    torchvision's sampling, vectorised: all 10 tries are drawn at once and the first valid one
    is kept; an image with none valid gets torchvision's centre-crop fallback. Sizes and offsets
    are whole pixels, as in torchvision.
    """
    height, width = size
    area = draw.uniform(batch, _CROP_TRIES, low=scale[0], high=scale[1]) * (height * width)
    log_r = draw.uniform(batch, _CROP_TRIES, low=math.log(ratio[0]), high=math.log(ratio[1]))
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).round_()  # torch.round is half-to-even like Python's round
    h = torch.sqrt(area / aspect).round_()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # randint(0, n - h + 1) as floor(u * (n - h + 1)); the clamp guards float rounding up to n.
    top = torch.minimum((draw.uniform(batch, _CROP_TRIES) * (height - h + 1)).floor_(), height - h)
    left = torch.minimum((draw.uniform(batch, _CROP_TRIES) * (width - w + 1)).floor_(), width - w)
    tries = torch.stack((top, left, h, w), dim=-1)  # B×T×4
    first = ok.to(torch.uint8).argmax(dim=1)  # argmax returns the first of equal maxima
    picked = tries[torch.arange(batch, device=draw.device), first]
    fallback = torch.tensor(_centre_box(size, ratio), dtype=torch.float32, device=draw.device)
    return torch.where(ok.any(dim=1, keepdim=True), picked, fallback)


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


def _grid_from_boxes(boxes: Tensor, flip: Tensor, size: tuple[int, int]) -> Tensor:
    """``grid_sample`` grid ``B×H×W×2`` that resizes each box to ``size`` and maybe flips it.

    ``boxes`` is ``B×4`` ``(top, left, height, width)`` in input pixels, ``flip`` is ``B`` bool.
    This is ``affine_grid`` of ``[[±w/W, 0, cx], [0, h/H, cy]]`` (``align_corners=False``; the
    flip negates the x scale), computed per axis, plus one step affine_grid lacks: source
    coordinates are clamped to the box's outer pixel centres. That makes it equal to
    torchvision's crop-then-resize (which never reads pixels outside the crop) instead of
    blending in up to half a pixel of the surroundings at the box edges.
    """
    height, width = size
    ys = _axis_coords(boxes[:, 0], boxes[:, 2], height, torch.zeros_like(flip))
    xs = _axis_coords(boxes[:, 1], boxes[:, 3], width, flip)
    batch = boxes.shape[0]
    grid_x = xs.view(batch, 1, width).expand(batch, height, width)
    grid_y = ys.view(batch, height, 1).expand(batch, height, width)
    return torch.stack((grid_x, grid_y), dim=-1)


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


def _grayscale(x: Tensor) -> Tensor:
    """Luma of float ``B×3×H×W`` -> ``B×1×H×W`` (torchvision's weights)."""
    r, g, b = x.unbind(dim=1)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _blend_(x: Tensor, factor: Tensor, gray_coef: Tensor, mean_coef: Tensor) -> Tensor:
    """One linear jitter step for all images, in place on float ``B×3×H×W`` in [0, 1].

    ``x <- clamp(f*x + g*gray(x) + m*mean(gray(x)), 0, 1)`` with per-image ``B`` coefficients.
    torchvision's three linear adjustments are all this shape: brightness ``(f, 0, 0)``,
    contrast ``(f, 0, 1-f)``, saturation ``(f, 1-f, 0)``, so one kernel sequence serves
    whichever of them each image has at this step; ``(1, 0, 0)`` leaves an image unchanged,
    exactly.
    """
    gray = _grayscale(x)
    offset = gray.mean(dim=(1, 2, 3), keepdim=True).mul_(mean_coef.view(-1, 1, 1, 1))
    x.mul_(factor.view(-1, 1, 1, 1)).add_(offset)
    return x.addcmul_(gray, gray_coef.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_brightness`` with a factor per image: ``B×3×H×W``, ``B``."""
    zero = torch.zeros_like(factor)
    return _blend_(x.clone(), factor, zero, zero)


def _adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_contrast`` with a factor per image: ``B×3×H×W``, ``B``."""
    return _blend_(x.clone(), factor, torch.zeros_like(factor), 1.0 - factor)


def _adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_saturation`` with a factor per image: ``B×3×H×W``, ``B``."""
    return _blend_(x.clone(), factor, 1.0 - factor, torch.zeros_like(factor))


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision ``adjust_hue`` with a shift per image: float ``B×3×H×W`` in [0, 1], ``B``.

    Same HSV hexcone model as torchvision's ``_rgb2hsv``/``_hsv2rgb``, written with arithmetic
    masks and the closed-form way back (CPU ``where``, ``remainder`` and ``aminmax`` over the
    channel axis are several times slower than plain arithmetic):
    ``rgb = min + chroma * pure(h)`` with ``pure`` the fully saturated colour of hue ``h``,
    ``r = clamp(|6h - 3| - 1)``, ``g = clamp(2 - |6h - 2|)``, ``b = clamp(2 - |6h - 4|)``.
    Equal to torchvision up to float rounding (about 1e-6).
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    # One-hot of the hue branch (largest channel; r wins ties, then g), as float weights.
    on_r = (maxc == r).to(x.dtype)
    on_g = (maxc == g).to(x.dtype).mul_(1.0 - on_r)
    on_b = 1.0 - on_r - on_g
    diff = on_r * (g - b) + on_g * (b - r) + on_b * (r - g)
    # Grey pixels have diff 0; the floor on chroma only avoids 0/0 (and for chroma < 1e-12 the
    # hue is irrelevant since the output is min + chroma * pure).
    hue6 = diff.div_(chroma.clamp_min(1e-12)).add_(on_g, alpha=2.0).add_(on_b, alpha=4.0)
    hue6.add_(6.0 * shift.view(-1, 1, 1))
    hue6.sub_(torch.floor(hue6 * (1.0 / 6.0)), alpha=6.0)  # mod 6; pure() is continuous at 0/6
    centre = torch.tensor([3.0, 2.0, 4.0], device=x.device).view(1, 3, 1, 1)
    sign = torch.tensor([1.0, -1.0, -1.0], device=x.device).view(1, 3, 1, 1)
    offset = torch.tensor([-1.0, 2.0, 2.0], device=x.device).view(1, 3, 1, 1)
    pure = torch.addcmul(offset, (hue6.unsqueeze(1) - centre).abs_(), sign).clamp_(0.0, 1.0)
    return torch.addcmul(minc.unsqueeze(1), pure, chroma.unsqueeze(1))


def _jitter_schedule(batch: int, params: AugmentParams, draw: _Draw) -> tuple[Tensor, Tensor]:
    """ColorJitter's per-image draws, laid out as the step schedule of :func:`_color_jitter`.

    Returns ``blend`` ``6×3×B``, the ``(factor, gray, mean)`` coefficients of :func:`_blend_`
    for each of the six linear steps, and ``hue`` ``B``. Images not jittered (probability
    ``1 - jitter_p``) get identity coefficients and a zero hue shift.
    """
    cols = []
    for strength in (params.brightness, params.contrast, params.saturation):
        cols.append(draw.uniform(batch, low=max(0.0, 1.0 - strength), high=1.0 + strength))
    hue = draw.uniform(batch, low=-params.hue, high=params.hue)
    order = torch.argsort(draw.uniform(batch, 4), dim=1)  # uniform permutation of 0..3, 3 = hue
    apply = draw.uniform(batch) < params.jitter_p
    factors = torch.where(apply.view(-1, 1), torch.stack(cols, dim=1), 1.0)  # B×3
    hue = torch.where(apply, hue, 0.0)
    hue_pos = (order == 3).to(torch.uint8).argmax(dim=1)  # B, where hue sits in the order
    steps = []
    for step in (0, 1, 2, 4, 5, 6):
        idx = hue_pos + (step - 3)  # which entry of the image's order runs at this step
        op = order.gather(1, idx.clamp(0, 3).view(-1, 1)).squeeze(1)
        op = torch.where((idx >= 0) & (idx <= 3), op, 3)  # 3 here: nothing at this step
        f = factors.gather(1, op.clamp(max=2).view(-1, 1)).squeeze(1)
        f = torch.where(op == 3, 1.0, f)
        steps.append(torch.stack((f, (1.0 - f) * (op == 2), (1.0 - f) * (op == 1))))
    return torch.stack(steps), hue


def _color_jitter(x: Tensor, blend: Tensor, hue: Tensor | None) -> Tensor:
    """ColorJitter with per-image factors and order: float ``B×3×H×W`` in [0, 1], in place.

    ``blend`` ``6×3×B`` and ``hue`` ``B`` come from :func:`_jitter_schedule` (``hue=None``:
    no hue step).

    Order decision: each image gets its own uniformly random order of the four operations,
    exactly as torchvision draws one per call. That batches cheaply because brightness,
    contrast and saturation are one blend (:func:`_blend_`) differing only in per-image
    coefficients, so any of them can run at any step; only hue differs. Every image's order is
    aligned so that hue sits at the middle of a 7-step schedule ``L L L H L L L``: the ops the
    image has before hue fill the last of the first three linear steps, those after it the
    first of the last three, and unused steps are exact identities. The price is three extra
    blends (cheap next to the one hue pass) instead of a fixed or per-batch order.
    """
    for step in range(6):
        if step == 3 and hue is not None:
            x = _adjust_hue(x, hue)
        x = _blend_(x, blend[step, 0], blend[step, 1], blend[step, 2])
    return x
