"""Calcium scoring (REFERENCES.md section 1) against hand-computed expectations.

Volumes are (X, Y, Z) with axis 2 the axial slices. Unless a test says otherwise the grid is
1 x 1 mm pixels with 3 mm slice increment, so a lesion's Agatston contribution is
``n_pixels x weight`` and a voxel is 3 mm^3.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from ctbundles.transforms.calcium_scoring import (
    CalciumScoreParams,
    agatston_weight,
    cac_drs,
    chest_ct_category,
    icac_volume,
    parse_label_mapping,
    risk_category,
    score_calcium,
)

SPACING = (1.0, 1.0, 3.0)


def empty(shape=(12, 12, 4), background=40.0):
    return np.full(shape, background, dtype=np.float32), np.zeros(shape, dtype=np.uint8)


def put(hu, lab, region, value, label=1):
    hu[region] = value
    lab[region] = label


# ---------------------------------------------------------------------------- weights and edges


@pytest.mark.parametrize(
    "peak, weight",
    [(129.0, 0), (129.9, 0), (130.0, 1), (199.0, 1), (199.9, 1), (200.0, 2), (299.0, 2), (300.0, 3), (399.0, 3), (400.0, 4), (1500.0, 4)],
)
def test_agatston_weight(peak, weight):
    assert agatston_weight(peak) == weight


def test_agatston_weight_vectorised():
    np.testing.assert_array_equal(agatston_weight(np.array([100, 130, 250, 350, 450])), [0, 1, 2, 3, 4])


@pytest.mark.parametrize("peak, expected", [(129.0, 0.0), (130.0, 4.0), (199.0, 4.0), (200.0, 8.0), (399.0, 12.0), (400.0, 16.0)])
def test_2x2_lesion_weight_edges(peak, expected):
    # 2 x 2 pixels of 1 mm^2 = 4 mm^2; with 3 mm increment the factor is 1: score = 4 x weight.
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], peak)
    report = score_calcium(hu, lab, SPACING)
    assert report["agatston"] == pytest.approx(expected)
    assert report["n_lesions"] == (0 if expected == 0 else 1)
    assert report["volume_mm3"] == pytest.approx(0.0 if expected == 0 else 12.0)


def test_peak_not_mean_sets_the_weight():
    # One 199 HU pixel and three at 150: weight 1; raising one pixel to 200 doubles the score.
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 150.0)
    hu[3, 3, 1] = 199.0
    assert score_calcium(hu, lab, SPACING)["agatston"] == pytest.approx(4.0)
    hu[3, 3, 1] = 200.0
    report = score_calcium(hu, lab, SPACING)
    assert report["agatston"] == pytest.approx(8.0)
    assert report["lesions"][0]["peak_hu"] == 200.0
    assert report["lesions"][0]["mean_hu"] == pytest.approx((200 + 3 * 150) / 4)


@pytest.mark.parametrize("strict, expected_pixels", [(False, 4), (True, 2)])
def test_strict_threshold_at_130(strict, expected_pixels):
    # Two pixels at exactly 130 HU and two at 131 in a 2 x 2 lesion: >= keeps 4, > keeps the 2 at 131.
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 130.0)
    hu[3, 3:5, 1] = 131.0
    report = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(strict=strict))
    assert report["agatston"] == pytest.approx(expected_pixels * 1.0)
    assert report["volume_mm3"] == pytest.approx(expected_pixels * 3.0)
    assert report["parameters"]["threshold_rule"] == ("HU > 130 inside label" if strict else "HU >= 130 inside label")


def test_lower_threshold_option_counts_sub_130_with_weight_1():
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 110.0)
    assert score_calcium(hu, lab, SPACING)["agatston"] == 0.0
    report = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(threshold_hu=100.0))
    assert report["agatston"] == pytest.approx(4.0)
    assert report["parameters"]["threshold_hu"] == 100.0


# ---------------------------------------------------------------------------- label handling


def test_sub_130_voxels_inside_label_are_not_counted():
    # Label is a 4 x 4 square; only the central 2 x 2 is 300 HU, the ring is 100 HU.
    hu, lab = empty()
    put(hu, lab, np.s_[2:6, 2:6, 1], 100.0)
    hu[3:5, 3:5, 1] = 300.0
    report = score_calcium(hu, lab, SPACING)
    assert report["agatston"] == pytest.approx(4 * 3.0)
    assert report["volume_mm3"] == pytest.approx(4 * 3.0)
    assert report["lesions"][0]["mean_hu"] == pytest.approx(300.0)
    assert any("12 label voxels" in w for w in report["warnings"])


def test_sub_130_bridge_in_label_does_not_join_lesions():
    # Two 2 x 2 lesions joined in the label by a 100 HU column: still two lesions.
    hu, lab = empty()
    put(hu, lab, np.s_[2:4, 2:4, 1], 250.0)
    put(hu, lab, np.s_[4:5, 2:4, 1], 100.0)
    put(hu, lab, np.s_[5:7, 2:4, 1], 450.0)
    report = score_calcium(hu, lab, SPACING)
    assert report["n_lesions"] == 2
    assert report["agatston"] == pytest.approx(4 * 2 + 4 * 4)


def test_calcium_outside_label_is_ignored():
    hu, lab = empty()
    hu[3:5, 3:5, 1] = 800.0  # bone-like, no label
    put(hu, lab, np.s_[8:10, 8:10, 2], 150.0)
    assert score_calcium(hu, lab, SPACING)["agatston"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------- connectivity and size


@pytest.mark.parametrize("connectivity, n_lesions, expected", [(8, 1, 8 * 4.0), (4, 2, 4 * 1 + 4 * 4.0)])
def test_diagonal_neighbours(connectivity, n_lesions, expected):
    # A (150 HU) and B (450 HU) touch only at a corner: one lesion of 8 mm^2 with peak 450 (weight
    # 4) when 8-connected; two lesions (weights 1 and 4) when 4-connected.
    hu, lab = empty()
    put(hu, lab, np.s_[2:4, 2:4, 1], 150.0)
    put(hu, lab, np.s_[4:6, 4:6, 1], 450.0)
    report = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(connectivity=connectivity))
    assert report["n_lesions"] == n_lesions
    assert report["agatston"] == pytest.approx(expected)


THREE_PIXELS = (np.array([3, 4, 4]), np.array([3, 3, 4]), np.array([1, 1, 1]))  # an L of 3 pixels


@pytest.mark.parametrize(
    "pixel_mm, kwargs, expected",
    [
        (0.5, {}, 0.0),  # 3 x 0.25 = 0.75 mm^2 < 1 mm^2: dropped
        (0.5, {"min_pixels": 3}, 3 * 0.25 * 3),  # kept by >= 3 pixels: 0.75 mm^2 x weight 3
        (0.5, {"min_pixels": 4}, 0.0),  # dropped by >= 4 pixels
        (0.6, {}, 3 * 0.36 * 3),  # 1.08 mm^2 >= 1 mm^2: kept
        (0.6, {"min_area_mm2": 1.1}, 0.0),  # 1.08 < 1.1 mm^2
        (0.5, {"min_area_mm2": 0.75}, 3 * 0.25 * 3),  # exactly at the minimum: kept
    ],
)
def test_three_pixel_lesion(pixel_mm, kwargs, expected):
    hu, lab = empty()
    put(hu, lab, THREE_PIXELS, 350.0)
    report = score_calcium(hu, lab, (pixel_mm, pixel_mm, 3.0), params=CalciumScoreParams(**kwargs))
    assert report["agatston"] == pytest.approx(expected)
    assert report["n_lesions"] == (1 if expected else 0)


def test_four_pixels_of_half_mm_are_exactly_one_mm2():
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 150.0)
    assert score_calcium(hu, lab, (0.5, 0.5, 3.0))["agatston"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- slice increment


def test_overlapping_reconstructions_use_the_increment():
    # A 2 x 2 mm plaque of 250 HU, 6 mm long. Contiguous 3 mm slices see it in 2 slices:
    # 2 x 4 mm^2 x 2 x (3/3) = 16. Overlapping 3 mm slices every 1.5 mm see it in 4 slices:
    # 4 x 4 x 2 x (1.5/3) = 16 with the increment, 32 (double) if the 3 mm thickness were used.
    hu3, lab3 = empty((8, 8, 6))
    put(hu3, lab3, np.s_[2:4, 2:4, 2:4], 250.0)
    hu15, lab15 = empty((8, 8, 12))
    put(hu15, lab15, np.s_[2:4, 2:4, 4:8], 250.0)
    contiguous = score_calcium(hu3, lab3, (1.0, 1.0, 3.0))["agatston"]
    overlapping = score_calcium(hu15, lab15, (1.0, 1.0, 1.5), slice_increment_mm=1.5)
    thickness_misused = score_calcium(hu15, lab15, (1.0, 1.0, 1.5), slice_increment_mm=3.0)
    assert contiguous == pytest.approx(16.0)
    assert overlapping["agatston"] == pytest.approx(16.0)
    assert thickness_misused["agatston"] == pytest.approx(32.0)
    assert overlapping["volume_mm3"] == pytest.approx(16 * 1.5)  # 16 voxels of 1 x 1 x 1.5 mm
    assert overlapping["parameters"]["slice_increment_mm"] == 1.5
    assert overlapping["parameters"]["slice_factor"] == pytest.approx(0.5)


def test_spacing_third_value_is_the_default_increment():
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 150.0)
    assert score_calcium(hu, lab, (1.0, 1.0, 1.5))["agatston"] == pytest.approx(2.0)
    assert score_calcium(hu, lab, (1.0, 1.0, 1.5), slice_increment_mm=1.5)["warnings"] == []
    report = score_calcium(hu, lab, (1.0, 1.0, 1.5), slice_increment_mm=3.0)
    assert any("differs from the grid" in w for w in report["warnings"])


# ---------------------------------------------------------------------------- 2D versus 3D lesions


def test_2d_and_3d_modes_on_a_lesion_spanning_slices():
    # 2 x 2 pixels in 3 slices with slice peaks 150, 250, 450: weights 1, 2, 4 per slice.
    hu, lab = empty()
    for z, value in zip((0, 1, 2), (150.0, 250.0, 450.0)):
        put(hu, lab, np.s_[3:5, 3:5, z], value)
    r2 = score_calcium(hu, lab, SPACING)
    r3 = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(mode="3d"))
    assert r2["agatston"] == pytest.approx(4 * (1 + 2 + 4))
    assert r3["agatston"] == pytest.approx(4 * (1 + 2 + 4))
    assert r2["n_lesions"] == 3 and r3["n_lesions"] == 1
    assert r3["lesions"][0]["slices"] == [0, 1, 2]
    assert r3["lesions"][0]["volume_mm3"] == pytest.approx(12 * 3.0)
    assert r3["lesions"][0]["peak_hu"] == 450.0


def test_3d_mode_has_no_per_slice_area_minimum():
    # One 0.5 mm pixel in 3 consecutive 3 mm slices: 2D drops each 0.25 mm^2 piece; in 3D the lesion
    # is 3 x 0.75 = 2.25 mm^3 >= 1.5 mm^3 and scores 3 x 0.25 x 1 = 0.75.
    hu, lab = empty()
    put(hu, lab, np.s_[3, 3, 0:3], 180.0)
    spacing = (0.5, 0.5, 3.0)
    assert score_calcium(hu, lab, spacing)["agatston"] == 0.0
    r3 = score_calcium(hu, lab, spacing, params=CalciumScoreParams(mode="3d"))
    assert r3["agatston"] == pytest.approx(0.75)
    assert r3["volume_mm3"] == pytest.approx(2.25)


@pytest.mark.parametrize("min_volume, kept", [(1.5, False), (0.75, True)])
def test_3d_lesion_below_minimum_volume_is_dropped(min_volume, kept):
    # Two 0.5 mm pixels in one slice, 1.5 mm increment: 2 x 0.25 x 1.5 = 0.75 mm^3 < 1.5 mm^3.
    # Kept (min 0.75 mm^3) it scores 0.5 mm^2 x weight 3 x (1.5 / 3) = 0.75.
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3, 1], 300.0)
    params = CalciumScoreParams(mode="3d", min_volume_mm3=min_volume)
    report = score_calcium(hu, lab, (0.5, 0.5, 1.5), params=params)
    assert report["n_lesions"] == (1 if kept else 0)
    assert report["agatston"] == pytest.approx(2 * 0.25 * 3 * 0.5 if kept else 0.0)


@pytest.mark.parametrize("connectivity, n_lesions", [(8, 1), (4, 2)])
def test_3d_connectivity_26_versus_6(connectivity, n_lesions):
    # Two voxels touching only at a corner across slices.
    hu, lab = empty()
    put(hu, lab, (np.array([2]), np.array([2]), np.array([1])), 300.0)
    put(hu, lab, (np.array([3]), np.array([3]), np.array([2])), 300.0)
    params = CalciumScoreParams(mode="3d", connectivity=connectivity, min_pixels=1)
    report = score_calcium(hu, lab, SPACING, params=params)
    assert report["n_lesions"] == n_lesions
    assert report["agatston"] == pytest.approx(2 * 3.0)


# ---------------------------------------------------------------------------- mass and artery


def test_mass_score_with_calibration_factor():
    # 4 voxels of 1 x 1 x 3 mm (12 mm^3 = 0.012 cm^3) with mean 350 HU; c = 0.8 mg/cm^3 per HU:
    # mass = 0.8 x 0.012 x 350 = 3.36 mg.
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 0.0)
    hu[3:5, 3:5, 1] = [[200.0, 300.0], [400.0, 500.0]]
    assert score_calcium(hu, lab, SPACING)["mass_mg"] is None
    report = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(calibration_factor=0.8))
    assert report["mass_mg"] == pytest.approx(3.36)
    assert report["lesions"][0]["mass_mg"] == pytest.approx(3.36)
    assert report["per_artery"]["label_1"]["mass_mg"] == pytest.approx(3.36)


def test_per_artery_custom_mapping_and_majority_label():
    # Lesion 1: 3 voxels labelled 7 (RCA) and 1 labelled 3 (LAD), peak 250 -> RCA gets 4 x 2 = 8.
    # Lesion 2: 2 x 2 labelled 3 (LAD) at 150 HU -> 4. Lesion 3: label 9 (unmapped) at 450 -> 16.
    hu, lab = empty()
    put(hu, lab, np.s_[2:4, 2:4, 1], 250.0, label=7)
    lab[2, 2, 1] = 3
    put(hu, lab, np.s_[8:10, 8:10, 1], 150.0, label=3)
    put(hu, lab, np.s_[2:4, 8:10, 2], 450.0, label=9)
    params = CalciumScoreParams(artery_labels={"RCA": 7, "LAD": 3, "LCX": 5})
    report = score_calcium(hu, lab, SPACING, params=params)
    per = report["per_artery"]
    assert per["RCA"]["agatston"] == pytest.approx(8.0) and per["RCA"]["n_lesions"] == 1
    assert per["RCA"]["volume_mm3"] == pytest.approx(12.0)
    assert per["LAD"]["agatston"] == pytest.approx(4.0)
    assert per["LCX"]["agatston"] == 0.0 and per["LCX"]["n_lesions"] == 0
    assert per["label_9"]["agatston"] == pytest.approx(16.0)
    assert report["agatston"] == pytest.approx(28.0)
    assert report["n_vessels"] == 2  # RCA and LAD; the unmapped label is not a vessel
    assert report["cac_drs"] == "A1/N2"
    assert {les["label"] for les in report["lesions"]} == {"RCA", "LAD", "label_9"}


def test_majority_tie_goes_to_smallest_label():
    hu, lab = empty()
    put(hu, lab, np.s_[2:4, 2:4, 1], 250.0, label=2)
    lab[2, 2:4, 1] = 1
    report = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(artery_labels={"LAD": 1, "LCX": 2}))
    assert report["lesions"][0]["label"] == "LAD"


def test_orcascore_mapping_parses():
    assert parse_label_mapping("LAD=1, LCX=2,RCA=3") == {"LAD": 1, "LCX": 2, "RCA": 3}
    for bad in ("LAD", "LAD=x", "LAD=1,LCX=1", "LAD=0", "=2"):
        with pytest.raises(ValueError):
            parse_label_mapping(bad)


# ---------------------------------------------------------------------------- lesion table, output


def test_lesion_table_and_centroids():
    hu, lab = empty()
    put(hu, lab, np.s_[2:4, 6:8, 2], 250.0)  # centroid index (2.5, 6.5, 2)
    report = score_calcium(hu, lab, (0.5, 0.5, 3.0), params=CalciumScoreParams())
    les = report["lesions"][0]
    assert les["id"] == 1 and les["slices"] == [2]
    assert les["centroid_mm"] == pytest.approx([1.25, 3.25, 6.0])
    assert les["area_mm2"] == pytest.approx(1.0) and les["weight"] == 2
    assert les["agatston"] == pytest.approx(2.0)
    assert report["parameters"]["centroid_frame"] == "voxel_mm"
    affine = np.diag([-0.5, -0.5, 3.0, 1.0])
    affine[:3, 3] = [100.0, 50.0, -20.0]
    world = score_calcium(hu, lab, (0.5, 0.5, 3.0), affine=affine)
    assert world["lesions"][0]["centroid_mm"] == pytest.approx([100 - 1.25, 50 - 3.25, -20 + 6.0])
    assert world["parameters"]["centroid_frame"] == "world_ras_mm"


def test_report_is_json_and_records_every_parameter():
    hu, lab = empty()
    put(hu, lab, np.s_[3:5, 3:5, 1], 150.0)
    params = CalciumScoreParams(connectivity=4, min_pixels=2, calibration_factor=0.75, artery_labels={"LAD": 1})
    report = json.loads(json.dumps(score_calcium(hu, lab, (0.5, 0.5, 1.5), params=params)))
    p = report["parameters"]
    assert p["connectivity"] == 4 and p["min_pixels"] == 2 and p["calibration_factor"] == 0.75
    assert p["threshold_hu"] == 130.0 and p["strict"] is False and p["mode"] == "2d"
    assert p["min_area_mm2"] == 1.0 and p["min_volume_mm3"] == 1.5 and p["artery_labels"] == {"LAD": 1}
    assert p["pixel_area_mm2"] == pytest.approx(0.25) and p["slice_increment_mm"] == 1.5
    assert p["voxel_volume_mm3"] == pytest.approx(0.375)
    for key in ("agatston", "volume_mm3", "mass_mg", "per_artery", "lesions", "n_lesions", "risk_category", "cac_drs", "chest_ct_category", "warnings"):
        assert key in report


def test_empty_label_scores_zero():
    hu, lab = empty()
    hu[3:5, 3:5, 1] = 500.0
    report = score_calcium(hu, lab, SPACING, params=CalciumScoreParams(calibration_factor=0.8, artery_labels={"LAD": 1}))
    assert report["agatston"] == 0.0 and report["volume_mm3"] == 0.0 and report["mass_mg"] == 0.0
    assert report["lesions"] == [] and report["risk_category"] == "0" and report["cac_drs"] == "A0"


# ---------------------------------------------------------------------------- categories


@pytest.mark.parametrize(
    "score, category",
    [(0, "0"), (0.5, "1-10"), (1, "1-10"), (10, "1-10"), (11, "11-100"), (100, "11-100"), (101, "101-400"), (400, "101-400"), (401, ">400")],
)
def test_risk_category(score, category):
    assert risk_category(score) == category


@pytest.mark.parametrize(
    "score, n, expected",
    [(0, 0, "A0"), (1, 1, "A1/N1"), (99, 2, "A1/N2"), (99.5, 2, "A1/N2"), (100, 3, "A2/N3"), (299, 1, "A2/N1"), (300, 4, "A3/N4"), (50, None, "A1")],
)
def test_cac_drs(score, n, expected):
    assert cac_drs(score, n) == expected


@pytest.mark.parametrize(
    "score, category", [(0, "0-10"), (10, "0-10"), (11, "11-100"), (100, "11-100"), (101, "101-1000"), (1000, "101-1000"), (1001, ">1000")]
)
def test_chest_ct_category(score, category):
    assert chest_ct_category(score) == category


@pytest.mark.parametrize("fn", [risk_category, chest_ct_category, cac_drs])
def test_categories_reject_negative(fn):
    with pytest.raises(ValueError):
        fn(-1)


# ---------------------------------------------------------------------------- ICAC


def test_icac_volume_total_and_per_side():
    # Left: 5 voxels of 300 HU plus 2 of 120 HU (not counted); right: 3 voxels at exactly 130 HU.
    # Voxel 0.5 x 0.5 x 1 mm = 0.25 mm^3: left 1.25, right 0.75, total 2.0 mm^3.
    hu, lab = empty()
    put(hu, lab, np.s_[2, 2:7, 1], 300.0, label=1)
    put(hu, lab, np.s_[3, 2:4, 1], 120.0, label=1)
    put(hu, lab, np.s_[8, 2:5, 2], 130.0, label=2)
    report = icac_volume(hu, lab, (0.5, 0.5, 1.0), label_names={"ICA_left": 1, "ICA_right": 2})
    assert report["total_mm3"] == pytest.approx(2.0)
    assert report["ln_total"] == pytest.approx(math.log(3.0))
    assert report["per_label"]["ICA_left"]["volume_mm3"] == pytest.approx(1.25)
    assert report["per_label"]["ICA_right"]["volume_mm3"] == pytest.approx(0.75)
    assert report["per_label"]["ICA_right"]["ln_volume"] == pytest.approx(math.log(1.75))
    assert report["parameters"]["voxel_volume_mm3"] == pytest.approx(0.25)
    assert any("2 label voxels" in w for w in report["warnings"])
    unnamed = icac_volume(hu, lab, (0.5, 0.5, 1.0), threshold_hu=200.0)
    assert unnamed["total_mm3"] == pytest.approx(1.25) and set(unnamed["per_label"]) == {"label_1", "label_2"}


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"connectivity": 6}, "connectivity"),
        ({"mode": "4d"}, "mode"),
        ({"min_pixels": 3, "min_area_mm2": 2.0}, "mutually exclusive"),
        ({"min_pixels": 0}, "min_pixels"),
        ({"min_area_mm2": -1.0}, "min_area_mm2"),
        ({"calibration_factor": -0.8}, "calibration_factor"),
        ({"threshold_hu": float("nan")}, "threshold_hu"),
        ({"artery_labels": {"LAD": 1, "LCX": 1}}, "share"),
        ({"artery_labels": {"LAD": 0}}, "positive integer"),
    ],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalciumScoreParams(**kwargs)


def test_invalid_inputs():
    hu, lab = empty()
    with pytest.raises(ValueError, match="another grid"):
        score_calcium(hu, lab[:, :, :2], SPACING)
    with pytest.raises(ValueError, match="non-integer"):
        score_calcium(hu, lab.astype(np.float32) + 0.5, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        score_calcium(hu, lab, (1.0, 0.0, 3.0))
    with pytest.raises(ValueError, match="slice_increment_mm"):
        score_calcium(hu, lab, SPACING, slice_increment_mm=-1.0)


# ---------------------------------------------------------------------------- speed


def test_vectorised_on_a_full_size_volume():
    # 512 x 512 x 240 at 0.4 mm / 3 mm with 300 separated 2 x 2 lesions of known HU.
    rng = np.random.default_rng(0)
    shape = (512, 512, 240)
    hu = np.zeros(shape, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    xs, ys, zs = np.meshgrid(np.arange(5, 500, 33), np.arange(5, 500, 33), np.arange(2, 240, 20), indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel(), zs.ravel()], axis=1)[:300]
    values = rng.choice([150.0, 250.0, 350.0, 450.0], size=len(centres)).astype(np.float32)
    for (x, y, z), v in zip(centres, values):
        hu[x : x + 3, y : y + 3, z] = v  # 9 pixels of 0.16 mm^2 = 1.44 mm^2
        lab[x - 1 : x + 4, y - 1 : y + 4, z] = 1
    start = time.perf_counter()
    report = score_calcium(hu, lab, (0.4, 0.4, 3.0))
    elapsed = time.perf_counter() - start
    assert report["n_lesions"] == 300
    assert report["agatston"] == pytest.approx(float(np.sum(1.44 * agatston_weight(values))))
    assert elapsed < 6.0, f"scoring took {elapsed:.2f} s"
