"""Synthetic ISLES 2018-style CT perfusion slabs."""

from __future__ import annotations

import numpy as np
import pytest

from ctbundles.synthetic.ctp import MAP_NAMES, generate_ctp, generate_ctp_patient

SMALL = dict(shape_xy=(64, 64))
ISLES_DTYPES = {"CBF": np.uint16, "CBV": np.uint16, "MTT": np.float64, "Tmax": np.float64}


def test_same_seed_same_slab():
    a, b = generate_ctp(4, **SMALL), generate_ctp(4, **SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    for name in MAP_NAMES:
        np.testing.assert_array_equal(a.extra[name], b.extra[name])
    assert a.truth == b.truth
    assert not np.array_equal(generate_ctp(5, **SMALL).extra["CBF"], a.extra["CBF"])


def test_full_size_slab_has_the_isles_grid_and_dtypes():
    case = generate_ctp(0, n_slices=2)
    assert case.kind == "ctp"
    assert case.image.shape == (256, 256, 2)
    assert case.label.dtype == np.uint8 and case.label_names == {"lesion": 1}
    for name, dtype in ISLES_DTYPES.items():
        assert case.extra[name].dtype == dtype and case.extra[name].shape == (256, 256, 2)


@pytest.mark.parametrize("seed", range(8))
def test_slices_dtypes_and_value_ranges(seed):
    case = generate_ctp(seed, **SMALL)
    assert case.image.shape[:2] == (64, 64) and 2 <= case.image.shape[2] <= 22
    ct = case.image
    assert ct.dtype == np.float32 and np.array_equal(ct, np.rint(ct))
    assert ct.min() == -1024.0 and 900.0 < ct.max() <= 3071.0
    brain = case.extra["CBF"] > 0
    assert 20.0 < np.median(ct[brain]) < 45.0
    cbf, cbv, mtt, tmax = (case.extra[n] for n in MAP_NAMES)
    assert cbf.max() <= 1000 and cbv.max() <= 255
    assert 0.0 <= mtt.min() and mtt.max() <= 30.0
    assert 0.0 <= tmax.min() and tmax.max() <= 30.0
    outside = ct < -500.0  # air: every map is 0 there, as in the ISLES maps
    for name in MAP_NAMES:
        assert np.all(case.extra[name][outside] == 0)
    normal = brain & (case.label == 0)
    assert 15.0 < np.median(cbf[normal]) < 80.0
    assert 2.0 < np.median(mtt[normal]) < 8.0
    assert np.median(tmax[normal]) < 3.0


def test_vessels_reach_the_upper_isles_ranges():
    highs = [generate_ctp(s, **SMALL, noise=False) for s in range(6)]
    assert max(int(c.extra["CBF"].max()) for c in highs) >= 600
    assert max(int(c.extra["CBV"].max()) for c in highs) >= 180


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name, darker", [("CBF", True), ("CBV", True), ("MTT", False), ("Tmax", False)])
def test_infarct_against_the_contralateral_side(seed, name, darker):
    """The core is darker in CBF/CBV and brighter in MTT/Tmax than its mirror image across the
    midline (the grid is centred on the midline, so the mirror of column i is 63 - i)."""
    case = generate_ctp(seed, **SMALL, lesion_size_mm=(12.0, 14.0, 10.0))
    lesion = case.label > 0
    assert lesion.any()
    mirror = lesion[::-1, :, :]
    values = case.extra[name].astype(float)
    inside, contra = values[lesion].mean(), values[mirror & ~lesion].mean()
    if darker:
        assert inside < 0.6 * contra
    else:
        assert inside > 1.5 * contra


def test_lesion_side_and_truth_volume():
    case = generate_ctp(2, **SMALL, lesion_side="right", noise=False)
    ijk = np.argwhere(case.label > 0)
    x = ijk @ case.affine[:3, :3].T[:, 0] + case.affine[0, 3]
    assert np.all(x > 0)  # patient right is +x in RAS
    sx, sy, sz = case.spacing
    expected_ml = np.count_nonzero(case.label) * sx * sy * sz / 1000.0
    assert case.truth["lesion_volume_ml"] == pytest.approx(expected_ml)
    assert case.truth["lesion_voxels"] == np.count_nonzero(case.label)


def test_no_lesion_option():
    case = generate_ctp(1, **SMALL, lesion=False)
    assert not case.label.any() and case.truth["lesion_volume_ml"] == 0.0


def test_two_slabs_of_one_patient_are_contiguous():
    a, b = generate_ctp_patient(7, **SMALL, n_slabs=2, n_slices=4)
    assert (a.meta["slab"], b.meta["slab"]) == ("A", "B")
    assert a.meta["patient_id"] == b.meta["patient_id"] and a.case_id != b.case_id
    assert a.image.shape == b.image.shape == (64, 64, 4)
    np.testing.assert_array_equal(a.affine[:3, :3], b.affine[:3, :3])
    np.testing.assert_allclose(a.affine[:2, 3], b.affine[:2, 3])
    assert b.affine[2, 3] == pytest.approx(a.affine[2, 3] + 4 * a.spacing[2])  # B starts where A ends
    assert a.label.any()  # slab A holds the core centre
    with pytest.raises(ValueError, match="slab"):
        generate_ctp(7, **SMALL, n_slabs=1, slab="B")


def test_seeded_cohort_has_single_and_double_slab_patients():
    counts = [generate_ctp(s, **SMALL, noise=False, lesion=False).meta["n_slabs"] for s in range(12)]
    assert set(counts) == {1, 2}


def test_slab_overrides_that_do_not_fit_the_brain():
    two_slab_seed = next(s for s in range(20) if generate_ctp(s, **SMALL, lesion=False).meta["n_slabs"] == 2)
    case = generate_ctp(two_slab_seed, **SMALL, n_slices=22)  # 2 x 22 x 5 mm would exceed the brain
    assert case.meta["n_slabs"] == 1 and case.image.shape[2] == 22
    with pytest.raises(ValueError, match="110 mm"):
        generate_ctp(two_slab_seed, **SMALL, n_slices=22, n_slabs=2)
    with pytest.raises(ValueError, match="1-22 slices"):
        generate_ctp(0, **SMALL, n_slices=23)
