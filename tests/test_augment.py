"""Tests of the batched per-image augmentation (imgcluster.method.augment)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as tv
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from imgcluster.method import augment as A
from imgcluster.method import pixel_ops as ops
from imgcluster.method.augment import (
    AUGMENTATIONS,
    MEAN,
    STD,
    AugmentParams,
    augment,
    choose_augmentation,
    is_greyscale,
    normalize,
    preprocess,
    to_float,
)

IDENTITY = AugmentParams(
    scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0
)


# Reference forms of the fused kernels, compared with torchvision below.
def _grid_from_boxes(boxes: Tensor, flip: Tensor, size: tuple[int, int]) -> Tensor:
    """``grid_sample`` grid ``B×H×W×2`` that resizes each box ``(top, left, height, width)``
    to ``size`` and maybe flips it, clamped to the box's outer pixel centres."""
    ys = ops.axis_coords(boxes[:, 0], boxes[:, 2], size[0], torch.zeros_like(flip))
    xs = ops.axis_coords(boxes[:, 1], boxes[:, 3], size[1], flip)
    return ops.stack_grid(xs, ys)


def _blend(x: Tensor, coef: list[Tensor]) -> Tensor:
    return ops.blend_(x.clone(), torch.stack(coef), ops.Scratch(x.device, False))


def _adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    zero = torch.zeros_like(factor)
    return _blend(x, [factor, zero, zero])


def _adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, [factor, torch.zeros_like(factor), 1.0 - factor])


def _adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, [factor, 1.0 - factor, torch.zeros_like(factor)])


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    return ops.adjust_hue_(x.clone(), shift, ops.Scratch(x.device, False))


def _images(batch: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- API, shapes, dtypes -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 96])
def test_shapes_dtype_range(size: int) -> None:
    x = _images(5, size)
    out = augment(x, _gen(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and out.is_contiguous()
    raw = A._augment01(x, _gen(0))
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    # augment() is exactly the normalised _augment01() for the same draws.
    torch.testing.assert_close(out, normalize(raw), rtol=0, atol=1e-6)
    lo = (0.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (out.amin(dim=(0, 2, 3)) >= lo - 1e-5).all()
    assert (out.amax(dim=(0, 2, 3)) <= hi + 1e-5).all()


def test_to_float_normalize_preprocess() -> None:
    x = _images(2)
    f = to_float(x)
    assert f.dtype == torch.float32 and torch.equal(f * 255, x.float())
    assert torch.equal(to_float(f), f)  # a float input is taken as [0, 1] already
    expected = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(preprocess(x), expected, rtol=0, atol=1e-6)


def test_channels_last_and_non_square_input() -> None:
    x = _images(4, 32)
    ref = augment(x, _gen(3))
    for fn in (augment, A._augment01):
        out = fn(x.to(memory_format=torch.channels_last), _gen(3))
        assert out.is_contiguous(memory_format=torch.channels_last)  # follows the input
        torch.testing.assert_close(out, fn(x, _gen(3)), rtol=0, atol=0)
    assert ref.is_contiguous()
    wide = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8)
    assert augment(wide, _gen(0)).shape == wide.shape


def test_inference_mode_then_training_mode() -> None:
    """Buffers first made under inference_mode must not break later grad-mode calls."""
    import threading

    ops.cached_channel_const.cache_clear()
    errors: list[BaseException] = []

    def run() -> None:  # a fresh thread gets a fresh scratch buffer
        try:
            x = _images(4)
            with torch.inference_mode():
                augment(x, _gen(0))
                preprocess(x)
            augment(x, _gen(0))
            f = to_float(x).requires_grad_()
            normalize(f).sum().backward()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors, errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_semantics_without_host_sync() -> None:
    x = _images(16, 32).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    augment(x, gen)  # warm-up: creates the per-device constants
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment(x.to(memory_format=torch.channels_last), gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == x.device and out.shape == x.shape and out.dtype == torch.float32
    same = augment(x, torch.Generator(device="cuda").manual_seed(1), IDENTITY)
    torch.testing.assert_close(same.cpu(), preprocess(x.cpu()), rtol=0, atol=1e-5)


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="B×3×H×W"):
        augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


# --- randomness ----------------------------------------------------------------------------------


def test_per_image_parameters() -> None:
    """64 copies of one image must come out (nearly) all different: draws are per image."""
    x = _images(1).expand(64, -1, -1, -1).contiguous()
    out = augment(x, _gen(1))
    assert len({bytes(o.numpy().tobytes()) for o in out}) >= 60


def test_seeded_reproducible() -> None:
    x = _images(16)
    assert torch.equal(augment(x, _gen(7)), augment(x, _gen(7)))
    assert not torch.equal(augment(x, _gen(7)), augment(x, _gen(8)))


def test_chunking_does_not_change_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images(20, 32)
    whole = augment(x, _gen(5))
    monkeypatch.setattr(A, "_CPU_CHUNK_ELEMS", 3 * 32 * 32 * 3)  # chunks of 3 images
    assert torch.equal(augment(x, _gen(5)), whole)


def test_crop_statistics_match_torchvision() -> None:
    """Area fraction, aspect ratio and position of the boxes follow RandomResizedCrop's."""
    n, size, p = 20000, (32, 32), AugmentParams()
    u = torch.rand(n, 4, A._CROP_TRIES, generator=_gen(0))
    ours = A._sample_boxes(u, size, p.scale, p.ratio)  # (top, left, h, w)
    torch.manual_seed(0)
    theirs = torch.tensor(
        [
            tv.RandomResizedCrop.get_params(torch.empty(3, *size), list(p.scale), list(p.ratio))
            for _ in range(4000)
        ],
        dtype=torch.float32,
    )
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        assert (h >= 1).all() and (w >= 1).all()
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= size[0]).all() and (left + w <= size[1]).all()

    def stats(b: torch.Tensor) -> tuple[float, float, float]:
        """Mean area fraction, mean log aspect ratio, mean horizontal centre."""
        top, left, h, w = b.unbind(1)
        area = (h * w / (size[0] * size[1])).mean().item()
        return area, torch.log(w / h).mean().item(), (left + w / 2).mean().item()

    (area, log_ratio, centre_x), (tv_area, tv_log_ratio, _) = stats(ours), stats(theirs)
    assert 0.5 < area < 0.62  # U[0.2, 1] is 0.6, less the rejected large non-square tries
    assert area == pytest.approx(tv_area, abs=0.015)
    assert log_ratio == pytest.approx(tv_log_ratio, abs=0.02)
    assert centre_x == pytest.approx(16.0, abs=0.2)


def test_centre_crop_fallback() -> None:
    """With no valid try (scale far above 1) every image gets torchvision's fallback box."""
    u = torch.rand(5, 4, A._CROP_TRIES, generator=_gen(0))
    for size in ((20, 40), (40, 20), (30, 30)):
        boxes = A._sample_boxes(u, size, (5.0, 6.0), (3 / 4, 4 / 3))
        theirs = tv.RandomResizedCrop.get_params(torch.empty(3, *size), [5.0, 6.0], [3 / 4, 4 / 3])
        assert boxes.tolist() == [list(map(float, theirs))] * 5


# --- geometry -----------------------------------------------------------------------------------


def test_identity_crop_is_exact() -> None:
    x = _images(6, 32)
    torch.testing.assert_close(augment(x, _gen(0), IDENTITY), preprocess(x), rtol=0, atol=1e-5)


def test_flip_with_identity_crop() -> None:
    x = _images(6, 32)
    flipped = AugmentParams(**{**IDENTITY.__dict__, "flip_p": 1.0})
    torch.testing.assert_close(
        augment(x, _gen(0), flipped), preprocess(x.flip(-1)), rtol=0, atol=1e-5
    )


def test_crop_of_known_region() -> None:
    """A box inside the white right half must give an all-white view, even at its edges."""
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    x[..., 16:] = 255
    boxes = torch.tensor([[4.0, 16.0, 10.0, 8.0], [0.0, 20.0, 32.0, 12.0]])  # top, left, h, w
    for flip in (False, True):
        grid = _grid_from_boxes(boxes, torch.tensor([flip, flip]), (32, 32))
        out = F.grid_sample(
            to_float(x), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        assert torch.equal((out * 255).round(), torch.full_like(out, 255.0))


def test_grid_is_the_affine_grid_clamped_to_the_box() -> None:
    """Our grid equals affine_grid of the box's affine, clamped to the box's pixel centres."""
    size, n = 32, 64
    gen = _gen(2)
    hw = torch.randint(1, size + 1, (n, 2), generator=gen).float()
    tl = (torch.rand(n, 2, generator=gen) * (size - hw + 1)).floor()
    boxes = torch.cat((tl, hw), dim=1)
    flip = torch.rand(n, generator=gen) < 0.5
    top, left, h, w = boxes.unbind(1)
    sx = torch.where(flip, -w, w) / size
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + w) / size - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / size, (2 * top + h) / size - 1
    ref = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    lo = torch.stack(((2 * left + 1) / size - 1, (2 * top + 1) / size - 1), -1).view(n, 1, 1, 2)
    hi = torch.stack(((2 * (left + w) - 1) / size - 1, (2 * (top + h) - 1) / size - 1), -1)
    ref = torch.maximum(torch.minimum(ref, hi.view(n, 1, 1, 2)), lo)
    torch.testing.assert_close(_grid_from_boxes(boxes, flip, (size, size)), ref, atol=1e-5, rtol=0)


# --- colour --------------------------------------------------------------------------------------


def _colour_images(n: int = 12, size: int = 16) -> torch.Tensor:
    """Random float images, including grey pixels and exact channel ties (hue edge cases)."""
    x = torch.rand(n, 3, size, size, generator=_gen(4))
    x[0] = x[0, :1]  # a grey image
    x[1, 1] = x[1, 0]  # r == g everywhere
    x[2, 2] = x[2, 0]  # r == b everywhere
    x[3, :, :4] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # saturated primaries
    x[3, :, 4:8] = torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1)
    return x


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (_adjust_brightness, TF.adjust_brightness),
        (_adjust_contrast, TF.adjust_contrast),
        (_adjust_saturation, TF.adjust_saturation),
    ],
)
def test_linear_jitter_matches_torchvision(ours, theirs) -> None:
    x = _colour_images()
    factors = torch.linspace(0.0, 2.0, x.shape[0])  # includes 0 and 1, and > 1 (clamping)
    expected = torch.stack([theirs(img, float(f)) for img, f in zip(x, factors, strict=True)])
    torch.testing.assert_close(ours(x, factors), expected, rtol=0, atol=1e-5)


def test_hue_matches_torchvision() -> None:
    x = _colour_images()
    shifts = torch.linspace(-0.5, 0.5, x.shape[0])
    expected = torch.stack([TF.adjust_hue(img, float(s)) for img, s in zip(x, shifts, strict=True)])
    got = _adjust_hue(x, shifts)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert torch.equal(x, _colour_images())  # the public helper does not modify its input


def test_jitter_order_and_factors_match_torchvision() -> None:
    """The step schedule applies each image's ops in its drawn order with its own factors."""
    n = 40
    u = torch.rand(n, 9, generator=_gen(6))
    u[:, 8] = 0.0  # jitter every image
    p = AugmentParams()
    blend, hue = A._jitter_schedule(u, p)
    x = _colour_images(n, 8)
    got = ops.color_jitter(x.clone(), blend, hue, ops.Scratch(x.device, reuse=False))
    lo = 1 - torch.tensor([p.brightness, p.contrast, p.saturation])
    factors = lo + u[:, :3] * 2 * (1 - lo)
    order = torch.argsort(u[:, 4:8], dim=1)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        img = x[i]
        for op in order[i].tolist():
            arg = float(hue[i]) if op == 3 else float(factors[i, op])
            img = fns[op](img, arg)
        torch.testing.assert_close(got[i], img, rtol=0, atol=1e-4)
    assert len({tuple(o) for o in order.tolist()}) > 10  # many different orders in one batch


def test_jitter_probability_zero_leaves_colours() -> None:
    u = torch.rand(16, 9, generator=_gen(8))
    u[:, 8] = 0.99  # above jitter_p: not jittered
    blend, hue = A._jitter_schedule(u, AugmentParams())
    x = _colour_images(16, 8)
    assert torch.equal(hue, torch.zeros(16))
    torch.testing.assert_close(
        ops.color_jitter(x.clone(), blend, hue, ops.Scratch(x.device, reuse=False)),
        x,
        rtol=0,
        atol=2e-6,
    )


def test_grayscale_p1_gives_equal_channels() -> None:
    x = _images(6, 32)
    gray = AugmentParams(grayscale_p=1.0)
    out = A._augment01(x, _gen(0), gray)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    # ... and it is torchvision's luma of the identity-cropped image.
    only_gray = AugmentParams(**{**IDENTITY.__dict__, "grayscale_p": 1.0})
    expected = TF.rgb_to_grayscale(to_float(x), num_output_channels=3)
    torch.testing.assert_close(A._augment01(x, _gen(0), only_gray), expected, rtol=0, atol=1e-5)


def test_default_probabilities() -> None:
    """Flip, jitter and grayscale happen to about p of the images."""
    n = 4000
    u = torch.rand(n, A._U_COLS, generator=_gen(9))
    plan = A._make_plan(u, (32, 32), AugmentParams())
    flipped = plan.xs[:, 0] > plan.xs[:, -1]
    assert flipped.float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert plan.gray is not None and plan.gray.mean().item() == pytest.approx(0.2, abs=0.02)
    assert plan.blend is not None and plan.hue is not None
    jittered = (plan.hue != 0).float().mean().item()
    assert jittered == pytest.approx(0.8, abs=0.02)
    assert plan.hue.abs().max().item() <= 0.1
    factors = plan.blend[:, 0][plan.blend[:, 0] != 1]
    assert factors.min().item() >= 0.6 and factors.max().item() <= 1.4
    assert math.isclose(factors.mean().item(), 1.0, abs_tol=0.01)


def test_the_augmentation_is_chosen_from_the_images():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, size=(20, 1, 8, 8), dtype=np.uint8), 3, axis=1)
    colour = grey.copy()
    colour[7, 0, 3, 3] ^= 1  # one colour pixel in one image of the sample
    assert is_greyscale(grey) and not is_greyscale(colour)
    assert choose_augmentation("auto", grey) == "greyscale"
    assert choose_augmentation("auto", colour) == "colour"
    assert choose_augmentation("colour", grey) == "colour"  # the user's choice stands
    with pytest.raises(ValueError, match="unknown augmentation 'sepia'"):
        choose_augmentation("sepia", grey)


def test_greyscale_views_are_never_mirrored():
    """With the greyscale views' crop and no jitter, a left-bright image stays left-bright."""
    image = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    image[..., :5] = 255  # a bright band on the left edge
    params = replace(AUGMENTATIONS["greyscale"], jitter_p=0.0)
    views = augment(image, torch.Generator().manual_seed(0), params)
    left, right = views[..., :8].mean(dim=(1, 2, 3)), views[..., 8:].mean(dim=(1, 2, 3))
    assert (left > right).all()
    mirrored = augment(image, torch.Generator().manual_seed(0), replace(params, flip_p=1.0))
    assert (mirrored[..., :8].mean(dim=(1, 2, 3)) < mirrored[..., 8:].mean(dim=(1, 2, 3))).all()
