"""ISLES 2018 metrics on hand-computed masks, both empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbundles.metrics.isles_evaluation import HD_SENTINEL_MM, fold_split, isles_case_metrics, summarize_cases


def _masks():
    truth = np.zeros((10, 10, 3), bool)
    pred = np.zeros((10, 10, 3), bool)
    truth[2:6, 2:6, 1] = True  # 16 voxels
    pred[4:8, 2:6, 1] = True  # 16 voxels, 8 overlapping
    return pred, truth


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 2.0, 5.0)])
def test_overlap_metrics(spacing):
    pred, truth = _masks()
    m = isles_case_metrics(pred, truth, spacing)
    assert (m["tp"], m["fp"], m["fn"]) == (8, 8, 8)
    assert m["dice"] == pytest.approx(8 / 16)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["avd_mm3"] == 0.0 and m["avd_ml"] == 0.0
    # farthest surface voxel: truth row 2 is 2 rows from pred row 4 (and pred row 7 from truth row 5)
    assert m["hd_mm"] == pytest.approx(2 * spacing[0])
    assert m["volume_pred_ml"] == pytest.approx(16 * np.prod(spacing) / 1000)


def test_hausdorff_is_the_maximum_not_hd95():
    truth = np.zeros((20, 20, 1), bool)
    pred = np.zeros((20, 20, 1), bool)
    truth[0, 0, 0] = True
    pred[0, 0, 0] = True
    pred[3, 4, 0] = True  # one outlier voxel at distance 5 voxels
    assert isles_case_metrics(pred, truth, (1.0, 1.0, 1.0))["hd_mm"] == pytest.approx(5.0)
    assert isles_case_metrics(pred, truth, (2.0, 1.0, 3.0))["hd_mm"] == pytest.approx(math.sqrt(36 + 16))


def test_volume_difference_signed_and_absolute():
    truth = np.zeros((10, 10, 2), bool)
    pred = np.zeros((10, 10, 2), bool)
    truth[:5, :, :] = True  # 100 voxels
    pred[:2, :, :] = True  # 40 voxels
    m = isles_case_metrics(pred[None], truth[None], (1.0, 1.0, 10.0))  # channel-first accepted
    assert m["avd_mm3"] == pytest.approx(-600.0)
    assert m["avd_ml"] == pytest.approx(0.6)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    "convention, dice, pr, hd",
    [("isles2018", 0.0, 0.0, HD_SENTINEL_MM), ("isles2022", 1.0, 1.0, 0.0)],
)
def test_both_empty(convention, dice, pr, hd):
    z = np.zeros((5, 5, 2), bool)
    m = isles_case_metrics(z, z, (1, 1, 1), convention=convention)
    assert (m["dice"], m["precision"], m["recall"], m["hd_mm"]) == (dice, pr, pr, hd)
    assert m["empty"] == "both" and m["avd_ml"] == 0.0


@pytest.mark.parametrize("convention", ["isles2018", "isles2022"])
@pytest.mark.parametrize("which", ["pred", "truth"])
def test_one_empty_gives_sentinel(convention, which):
    z = np.zeros((5, 5, 2), bool)
    x = z.copy()
    x[1:3, 1:3, 0] = True
    pred, truth = (z, x) if which == "pred" else (x, z)
    m = isles_case_metrics(pred, truth, (1, 1, 2), convention=convention)
    assert m["empty"] == which
    assert m["dice"] == 0.0 and m["hd_mm"] == HD_SENTINEL_MM
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["avd_ml"] == pytest.approx(8 / 1000)
    assert isles_case_metrics(pred, truth, (1, 1, 2), hd_sentinel=-1.0)["hd_mm"] == -1.0


def test_errors():
    with pytest.raises(ValueError, match="convention"):
        isles_case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 1, 1), convention="brats")
    with pytest.raises(ValueError, match="differs"):
        isles_case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))


def test_summary_mean_sd_and_leaderboard_sentinel():
    """12 of 62 cases at the sentinel reproduce the leaderboard's HD mean and SD (paper Table 1)."""
    cases = [{"dice": 0.5, "hd_mm": HD_SENTINEL_MM, "avd_ml": 1.0, "precision": 0.0, "recall": 0.0, "empty": "pred"}] * 12
    cases += [{"dice": 0.5, "hd_mm": 30.0, "avd_ml": 3.0, "precision": 1.0, "recall": 1.0, "empty": "none"}] * 50
    s = summarize_cases(cases)
    assert s["n"] == 62 and s["n_empty"]["pred"] == 12
    assert s["hd_mm"]["mean"] == pytest.approx(19354863.9, rel=1e-6)
    assert s["hd_mm"]["sd"] == pytest.approx(39507887, rel=1e-4)  # leaderboard: 39507890
    assert s["dice"] == {"mean": 0.5, "sd": 0.0}
    assert s["avd_ml"]["mean"] == pytest.approx((12 + 150) / 62)


def test_fold_split_groups_patients():
    items = [{"image": f"p{i // 2}_{'AB'[i % 2]}", "patient": f"p{i // 2}"} for i in range(20)]
    items += [{"image": "q", "patient": "q", "fold": 3}]
    seen = {}
    for fold in range(5):
        train, val = fold_split(items, fold)
        assert len(train) + len(val) == 21
        for it in val:
            seen.setdefault(it["patient"], set()).add(fold)
    assert all(len(f) == 1 for f in seen.values())  # both slabs of a patient in one fold
    assert seen["q"] == {3}
    with pytest.raises(ValueError):
        fold_split(items, 5)


def test_isles_datalist_folder_and_json(tmp_path):
    """Items from synth_head's ISLES 2018 writer, absolute paths, loadable by LoadCTPMapsd."""
    import json

    from ctbundles.datasets.isles2018 import build_datalist, write_cohort
    from ctbundles.errors import CTInputError
    from ctbundles.metrics.isles_evaluation import isles_datalist
    from ctbundles.transforms.ctp_maps import LoadCTPMapsd

    root = tmp_path / "isles"
    write_cohort(root, 1, seed=1, shape_xy=(32, 32))
    items = isles_datalist(root)
    assert items and all(p.startswith(str(root)) for p in items[0]["image"])
    assert "fold" in items[0] and "patient" in items[0]
    img = LoadCTPMapsd()(items[0])["image"]
    assert img.shape[:3] == (4, 32, 32) and img.meta["filename_or_obj"].endswith(items[0]["case"])
    (tmp_path / "dl.json").write_text(json.dumps(build_datalist(root)))  # relative paths
    assert isles_datalist(tmp_path / "dl.json") == items
    with pytest.raises(CTInputError, match="no ISLES 2018 folder"):
        isles_datalist(tmp_path / "absent")
