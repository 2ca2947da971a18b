"""ICAC evaluation figures (Bortsova et al. 2017, Table 1 and Fig. 2), hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbundles.metrics.icac_evaluation import (
    dice_counts,
    dice_score,
    icc_absolute_agreement,
    pearson,
    pooled_dice,
    quarter_means,
    save_volume_scatter,
    summarize,
)


def test_dice():
    a = np.array([1, 1, 1, 0, 0])
    b = np.array([0, 1, 1, 1, 0])
    assert dice_counts(a, b) == (2, 3, 3)
    assert dice_score(a, b) == pytest.approx(4 / 6)
    assert dice_score(np.zeros(3), np.zeros(3)) == 1.0
    assert dice_score(np.zeros(3), np.zeros(3), empty=0.0) == 0.0
    with pytest.raises(ValueError):
        dice_counts(np.zeros(3), np.zeros(4))


def test_pooled_dice_differs_from_mean_dice():
    # image 1: 1 voxel, no overlap (Dice 0); image 2: 99 + 99 voxels, 98 shared (Dice 98/99)
    counts = [(0, 1, 1), (98, 99, 99)]
    assert pooled_dice(counts) == pytest.approx(2 * 98 / 200)
    assert math.isnan(pooled_dice([(0, 0, 0)]))


def test_quarters_follow_reference_volume():
    dice = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    volumes = [80, 70, 60, 50, 40, 30, 20, 10]  # reversed order
    assert quarter_means(dice, volumes) == pytest.approx([0.75, 0.55, 0.35, 0.15])
    # 6 images: groups of 2, 2, 1, 1 (numpy.array_split)
    assert quarter_means([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]) == pytest.approx([1.5, 3.5, 5, 6])


def test_icc_hand_computed():
    # subjects (x, y): (1, 2), (2, 3), (3, 4): y = x + 1
    # grand 2.5; row means 1.5, 2.5, 3.5 -> SSR = 2 * 2 = 4, MSR = 2
    # column means 2, 3 -> SSC = 3 * 0.5 = 1.5, MSC = 1.5; SST = 5.5 -> SSE = 0, MSE = 0
    # ICC(A,1) = 2 / (2 + 0 + 2 * 1.5 / 3) = 2 / 3
    assert icc_absolute_agreement([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 3)
    assert icc_absolute_agreement([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)  # Pearson ignores the offset
    assert pearson([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert math.isnan(pearson([1, 1], [1, 2]))


def test_summarize_and_scatter(tmp_path):
    cases = [
        {"dice": 0.5, "intersection": 1, "n_pred": 2, "n_ref": 2, "pred_volume_mm3": 2.0, "ref_volume_mm3": 2.0},
        {"dice": 1.0, "intersection": 4, "n_pred": 4, "n_ref": 4, "pred_volume_mm3": 4.0, "ref_volume_mm3": 4.0},
        {"dice": 0.0, "intersection": 0, "n_pred": 0, "n_ref": 3, "pred_volume_mm3": 0.0, "ref_volume_mm3": 3.0},
        {"dice": 0.8, "intersection": 4, "n_pred": 5, "n_ref": 5, "pred_volume_mm3": 5.0, "ref_volume_mm3": 5.0},
    ]
    s = summarize(cases)
    assert s["n_cases"] == 4
    assert s["dice_mean"] == pytest.approx(0.575)
    assert s["dice_sd"] == pytest.approx(np.std([0.5, 1.0, 0.0, 0.8], ddof=1))
    assert s["absolute_dice"] == pytest.approx(2 * 9 / (11 + 14))
    assert s["dice_per_quarter"] == pytest.approx([0.5, 0.0, 1.0, 0.8])  # by volume 2, 3, 4, 5
    assert s["volume_pearson"] == pytest.approx(pearson([2, 4, 0, 5], [2, 4, 3, 5]))
    assert 0 < s["volume_icc"] < 1
    png = save_volume_scatter([2, 4, 0, 5], [2, 4, 3, 5], tmp_path / "fig" / "scatter.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["scatter.png"]
    with pytest.raises(ValueError):
        summarize([])
