"""The views of a frozen backbone (imgcluster.train.feature_views): how many a budget affords,
the timing that plans it, the plain view equal to the backbone's own features, the draw, and the
file that keeps them for the next run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imgcluster.method.augment import AUGMENTATIONS, preprocess
from imgcluster.train import feature_views as fv
from imgcluster.train.device import DeviceImages


class Pooled(nn.Module):
    """A tiny fixed "backbone": a 1x1 convolution, then the spatial mean (B×3×S×S → B×4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def images(n: int = 10, side: int = 16) -> DeviceImages:
    pixels = np.random.default_rng(0).integers(0, 256, (n, 3, side, side), dtype=np.uint8)
    return DeviceImages(pixels, torch.device("cpu"))


def test_views_per_image_fills_its_share_of_the_budget():
    """V + 1 passes (the plain view costs one) fit into VIEWS_BUDGET_SHARE of the budget, within
    [FEWEST_VIEWS, most]; no budget: most."""
    assert fv.views_per_image(0.01, 1000, None, 8) == 8
    share = fv.VIEWS_BUDGET_SHARE
    for budget in (60.0, 90.0, 150.0, 1e4):
        v = fv.views_per_image(0.01, 1000, budget, 8)  # 10 s a view of all images
        assert fv.FEWEST_VIEWS <= v <= 8
        if fv.FEWEST_VIEWS < v < 8:
            assert (v + 1) * 10 <= share * budget < (v + 2) * 10
    assert fv.views_per_image(0.01, 1000, 1.0, 8) == fv.FEWEST_VIEWS  # never below it
    assert fv.views_per_image(0.01, 1000, 1e4, 8) == 8  # never above most


def test_time_one_view_keeps_the_fastest_batch(monkeypatch: pytest.MonkeyPatch):
    """The first passes allocate: the plan takes the fastest of TIMED_BATCHES, per image."""
    ticks = iter([0.0, 5.0, 10.0, 12.0, 20.0, 21.0])  # passes of 5, 2 and 1 s
    monkeypatch.setattr(fv.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(fv, "TIMED_BATCHES", 3)
    assert fv.time_one_view(Pooled(), images(10), batch_size=4) == pytest.approx(1.0 / 4)


def test_the_plain_view_is_the_backbone_on_the_image_and_views_differ():
    backbone = Pooled()
    data = images(6)
    generator = torch.Generator().manual_seed(0)
    found = fv.FeatureViews.compute(backbone, data, 3, AUGMENTATIONS["colour"], generator, 4)
    assert found.features.shape == (6, 4, 4) and found.features.dtype == torch.float16
    assert found.views == 3 and len(found) == 6
    with torch.no_grad():
        plain = backbone(preprocess(data.batch(torch.arange(6))))
    torch.testing.assert_close(found.features[:, fv.PLAIN].float(), plain, atol=2e-3, rtol=2e-3)
    assert not torch.equal(found.features[:, 1], found.features[:, 2])  # fresh augmentations
    idx, rows = next(found.sequential(4))
    assert idx.tolist() == [0, 1, 2, 3] and torch.equal(rows, found.features[:4, 0].float())


def test_draw_picks_one_view_per_row_uniformly():
    rows = torch.arange(4, dtype=torch.float16).reshape(1, 4, 1).repeat(2000, 1, 2)  # view v: v
    drawn = fv.FeatureViews.draw(rows, torch.Generator().manual_seed(0))
    assert drawn.shape == (2000, 2) and drawn.dtype == torch.float32
    assert torch.equal(drawn[:, 0], drawn[:, 1])  # one view's whole row
    picked = drawn[:, 0].long()  # which view each row gave
    counts = torch.bincount(picked, minlength=4)
    assert picked.min() >= 0 and picked.max() <= 3
    expected, sd = 500, math.sqrt(2000 * 0.25 * 0.75)
    assert (counts - expected).abs().max() < 5 * sd


def test_cached_views_are_read_back_not_recomputed(tmp_path: Path, monkeypatch):
    cache_file = tmp_path / "images.npy"
    cache_file.write_bytes(b"decoded")
    backbone, data, params = Pooled(), images(5), AUGMENTATIONS["colour"]
    first = fv.cached_views(backbone, data, cache_file, 2, params, seed=0, batch_size=4)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # the decode cache and the views

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(fv.FeatureViews, "compute", no_compute)
    again = fv.cached_views(backbone, data, cache_file, 2, params, seed=0, batch_size=4)
    assert torch.equal(first.features, again.features)
    with pytest.raises(AssertionError, match="recomputed"):  # another seed: other views
        fv.cached_views(backbone, data, cache_file, 2, params, seed=1, batch_size=4)
