"""The views' pixel kernels: sampling grids, greyscale and colour jitter, batched and in place.

Each colour operation follows torchvision's definition (``adjust_brightness``, ``_contrast``,
``_saturation``, ``_hue``, ``rgb_to_grayscale``) with a factor per image, as a few element-wise
passes that write into a per-thread scratch buffer (:class:`Scratch`): on a CPU every freshly
allocated page costs a fault (about 0.8 ms per MB on the VMs we measured), more than the
arithmetic. :mod:`imgcluster.method.augment` draws the random parameters and calls these.
"""

from __future__ import annotations

import functools
import math
import threading

import torch
from torch import Tensor

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def channel_const(values: tuple[float, float, float], device: torch.device) -> Tensor:
    """A ``1×3×1×1`` float32 constant: made once per device, or inline in a compiled graph
    (where it costs nothing and a cache would only be traced around)."""
    if torch.compiler.is_compiling():
        return _new_channel_const(values, device)
    return cached_channel_const(values, device)


def _new_channel_const(values: tuple[float, float, float], device: torch.device) -> Tensor:
    """Filled in place rather than copied from a Python list, since a host-to-device copy would
    synchronise."""
    const = torch.empty((1, 3, 1, 1), dtype=torch.float32, device=device)
    for i, value in enumerate(values):
        const[:, i].fill_(value)
    return const


@functools.lru_cache(maxsize=32)
def cached_channel_const(values: tuple[float, float, float], device: torch.device) -> Tensor:
    """Never an inference tensor (even if first asked for under inference_mode), which could
    not be saved for backward if a caller differentiates through normalize()."""
    with torch.inference_mode(False):
        return _new_channel_const(values, device)


# --- the random draws ------------------------------------------------------------------------


class Scratch:
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


def scratch_for(device: torch.device) -> Scratch:
    """This thread's reusable scratch on CPU (a few MB, kept for the thread's life).

    Plain allocations on other devices and inside a compiled graph, whose compiler plans the
    buffers itself.
    """
    if device.type != "cpu" or torch.compiler.is_compiling():
        return Scratch(device, reuse=False)
    ws = getattr(_THREAD_SCRATCH, "cpu", None)
    if ws is None:
        ws = _THREAD_SCRATCH.cpu = Scratch(device, reuse=True)
    return ws


def stack_grid(xs: Tensor, ys: Tensor, out: Tensor | None = None) -> Tensor:
    """Separable coordinates ``B×W`` and ``B×H`` -> ``grid_sample`` grid ``B×H×W×2``."""
    batch, height, width = xs.shape[0], ys.shape[1], xs.shape[1]
    grid_x = xs.view(batch, 1, width).expand(batch, height, width)
    grid_y = ys.view(batch, height, 1).expand(batch, height, width)
    return torch.stack((grid_x, grid_y), dim=-1, out=out)


def axis_coords(start: Tensor, length: Tensor, n: int, flip: Tensor) -> Tensor:
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


def grayscale(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Luma of float ``B×3×H×W`` -> ``B×1×H×W`` (torchvision's weights)."""
    r, g, b = x.unbind(dim=1)
    if out is None:
        out = torch.empty_like(x[:, :1])
    torch.mul(r, LUMA[0], out=out[:, 0])
    return out.squeeze(1).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def blend_(x: Tensor, coef: Tensor, ws: Scratch) -> Tensor:
    """One linear jitter step for all images, in place on float ``B×3×H×W`` in [0, 1].

    ``x <- clamp(f*x + g*gray(x) + m*mean(gray(x)), 0, 1)`` with ``coef`` ``3×B`` holding each
    image's ``(f, g, m)``. torchvision's three linear adjustments all have this shape:
    brightness ``(f, 0, 0)``, contrast ``(f, 0, 1-f)``, saturation ``(f, 1-f, 0)``, so one
    kernel sequence serves whichever of them each image has at this step; ``(1, 0, 0)`` leaves
    an image unchanged, exactly.
    """
    f, g, m = coef.view(3, -1, 1, 1, 1).unbind(0)
    (gray,) = ws.carve((x.shape[0], 1, x.shape[2], x.shape[3]))
    grayscale(x, out=gray)
    offset = gray.mean(dim=(1, 2, 3), keepdim=True).mul_(m)
    # The 1-channel term first, then one pass over x. (addcmul is only fast on CPU when its
    # first operand is a full plane; with a small broadcast one it is about 8x slower.)
    gray.mul_(g).add_(offset)
    return torch.addcmul(gray, x, f, out=x).clamp_(0.0, 1.0)


def adjust_hue_(x: Tensor, shift: Tensor, ws: Scratch) -> Tensor:
    """torchvision ``adjust_hue`` with a shift per image, overwriting float ``B×3×H×W`` ``x`` in
    [0, 1]; temporaries carved from ``ws``.

    Same HSV hexcone model as torchvision's ``_rgb2hsv``/``_hsv2rgb`` (hue from the largest
    channel, r winning ties, then g), with the closed-form way back ``rgb = min + chroma *
    pure(h)``, ``pure`` being the fully saturated colour of hue ``h`` in sixths of a turn:
    ``r = clamp(|h - 3| - 1)``, ``g = clamp(2 - |h - 2|)``, ``b = clamp(2 - |h - 4|)``.
    Equal to torchvision up to float rounding (about 1e-6).
    """
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
    pure = torch.sub(hue6.unsqueeze(1), channel_const((3.0, 2.0, 4.0), x.device), out=x)
    pure.abs_().mul_(channel_const((1.0, -1.0, -1.0), x.device))
    pure.add_(channel_const((-1.0, 2.0, 2.0), x.device)).clamp_(0.0, 1.0)
    return torch.addcmul(minc.unsqueeze(1), pure, chroma.unsqueeze(1), out=pure)


def color_jitter(x: Tensor, blend: Tensor, hue: Tensor | None, ws: Scratch) -> Tensor:
    """ColorJitter with per-image factors and order, in place: float ``B×3×H×W`` in [0, 1].

    ``blend`` ``6×3×B`` and ``hue`` ``B`` come from :func:`_jitter_schedule` (``hue=None``:
    no hue step).

    Order decision: each image gets its own uniformly random order of the four operations,
    exactly as torchvision draws one per call. That batches cheaply because brightness,
    contrast and saturation are one blend (:func:`blend_`) differing only in per-image
    coefficients, so any of them can run at any step; only hue differs. Every image's order is
    aligned so that hue sits at the middle of a 7-step schedule ``L L L H L L L``: the ops the
    image has before hue fill the last of the first three linear steps, those after it the
    first of the last three, and unused steps are exact identities. The price is three extra
    blends (about 15% of the augmentation time) instead of a fixed or per-batch order.
    """
    for step in range(6):
        if step == 3 and hue is not None:
            x = adjust_hue_(x, hue, ws)
        x = blend_(x, blend[step], ws)
    return x
