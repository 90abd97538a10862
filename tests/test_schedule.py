"""The cosine schedule's end points and the time-budget epoch count."""

from __future__ import annotations

import pytest

from imgcluster.train.schedule import cosine_lr, epochs_for_budget


def test_cosine_end_points_and_midpoint():
    assert cosine_lr(0, 100, 0.03) == pytest.approx(0.03)
    assert cosine_lr(50, 100, 0.03) == pytest.approx(0.015)
    assert cosine_lr(100, 100, 0.03) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(150, 100, 0.03) == pytest.approx(0.0, abs=1e-12)
    values = [cosine_lr(s, 100, 1.0) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_budget_epoch_count():
    # 10 min budget, 60 s spent (decode + epoch 1), 30 s per epoch → 1 + 18 epochs
    assert epochs_for_budget(600, 60, 30, 1, 200) == 19
    # the budget never lengthens a run beyond --epochs
    assert epochs_for_budget(6000, 60, 30, 1, 50) == 50
    # an over-spent budget still keeps the epoch already done
    assert epochs_for_budget(10, 60, 30, 1, 200) == 1
    # the whole run then fits: elapsed + remaining epochs × epoch time ≤ budget
    n = epochs_for_budget(900, 47, 13, 1, 200)
    assert 47 + (n - 1) * 13 <= 900 < 47 + n * 13
