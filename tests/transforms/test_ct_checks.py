"""Checks on loaded CTs (ctbundles.transforms.ct_checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from tests_support.dicom_series import write_dicom_series

from ctbundles.errors import CTInputError
from ctbundles.transforms.ct_checks import (
    Finding,
    assert_same_grid,
    check_ct,
    detect_contrast,
    errors,
    hu_summary,
)
from ctbundles.transforms.ct_io import load_ct


def _image(data, spacing=(1.5, 1.5, 1.5), **meta):
    data = np.asarray(data, dtype=np.float32)
    affine = np.diag([*spacing, 1.0])
    m = {"affine": torch.as_tensor(affine), "spacing": np.asarray(spacing), "slice_increment_mm": spacing[2]}
    m.update(meta)
    return MetaTensor(torch.as_tensor(data), meta=m)


def _body(shape=(80, 80, 80), blob_hu=40.0, blob_radius_mm=0.0, spacing=1.5, seed=0):
    """A water-like body (40 HU, noise 20 HU) in air with an optional sphere of ``blob_hu``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[(np.arange(s) - s / 2) * spacing for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    data = np.full(shape, -1000.0, np.float32)
    data[r < 0.45 * shape[0] * spacing] = 40.0
    data[r < blob_radius_mm] = blob_hu
    return data + rng.normal(0, 20, shape).astype(np.float32)


def _sphere_radius(volume_ml):
    return (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)


def codes(findings):
    return {f.code for f in findings}


# ------------------------------------------------------------------------------------------------
# contrast
# ------------------------------------------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.parametrize(
    "rel,enhanced",
    [
        ("chest_cta/chest_cta_crop_b_ct_1.5mm.nii.gz", True),
        ("abdomen_ct/abdomen_noncontrast_ct_3mm.nii.gz", False),
        ("qrm_phantom/qrm_thorax_cci_canon_aquilion_one_120kV_3mm.nii.gz", False),
        ("head_ct/head_ct_noncontrast_ge_tiltcorrected_0.98x0.98x2.62.nii.gz", False),
    ],
)
def test_contrast_on_real_scans(shared_data, rel, enhanced):
    image = load_ct(shared_data / rel)
    found = [f for f in check_ct(image) if f.code == "contrast"]
    assert bool(found) == enhanced
    if enhanced:
        c = detect_contrast(image)
        assert 400 < c["median_hu"] < 550  # the blood pool is about 466 HU
        assert found[0].severity == "error" and f"{c['median_hu']:.0f} HU" in found[0].message
    assert not errors(check_ct(image)) if not enhanced else True


@pytest.mark.parametrize(
    "blob_hu,volume_ml,enhanced",
    [(450.0, 150.0, True), (40.0, 150.0, False), (450.0, 30.0, False), (800.0, 150.0, False)],
)
def test_contrast_blood_pool_volume_and_density(blob_hu, volume_ml, enhanced):
    image = _image(_body(blob_hu=blob_hu, blob_radius_mm=_sphere_radius(volume_ml)))
    c = detect_contrast(image)
    assert c["enhanced"] == enhanced
    if enhanced:
        # the opening trims about a voxel off the rim: most of the sphere is found
        assert 0.6 * volume_ml < c["volume_ml"] <= 1.05 * volume_ml
        assert c["median_hu"] == pytest.approx(blob_hu, abs=10)
    assert ("contrast" in codes(check_ct(image))) == enhanced


# ------------------------------------------------------------------------------------------------
# not HU
# ------------------------------------------------------------------------------------------------
def _not_hu_variants():
    rng = np.random.default_rng(3)
    ct = _body(shape=(30, 30, 20))
    return {
        "8bit": np.round(rng.uniform(0, 255, (30, 30, 20))),
        "unit": (ct - ct.min()) / (ct.max() - ct.min()),
        "symmetric": 2 * (ct - ct.min()) / (ct.max() - ct.min()) - 1,
        "mr_like": rng.uniform(0, 3000, (30, 30, 20)),
        "raw_stored": ct + 1024.0,  # CT stored without its -1024 rescale intercept
    }


@pytest.mark.parametrize("variant", ["8bit", "unit", "symmetric", "mr_like", "raw_stored"])
def test_not_hu_flagged(variant):
    data = _not_hu_variants()[variant]
    found = [f for f in check_ct(_image(data)) if f.code == "not_hu"]
    assert len(found) == 1 and found[0].severity == "error"
    assert f"{data.min():.0f}" in found[0].message or f"{data.min():.3g}" in found[0].message


@pytest.mark.parametrize("modality,flagged", [("MR", True), ("CT", False), ("", False)])
def test_modality_other_than_ct_flagged(modality, flagged):
    found = [f for f in check_ct(_image(_body(shape=(30, 30, 20)), modality=modality)) if f.code == "not_hu"]
    assert bool(found) == flagged
    if flagged:
        assert "Modality is MR" in found[0].message


def test_ct_in_hu_not_flagged():
    image = _image(_body(shape=(30, 30, 20)))
    assert check_ct(image) == []
    s = hu_summary(image)
    assert s["min"] < -1000 < s["p50"] < 100 and s["max"] > 40


# ------------------------------------------------------------------------------------------------
# slice thickness and geometry
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "thickness,increment,flagged",
    [(3.0, 3.0, False), (5.0, 5.0, True), (3.0, 1.5, False), (float("nan"), 5.0, True), (float("nan"), 3.0, False)],
)
def test_thick_slices(thickness, increment, flagged):
    image = _image(_body(shape=(20, 20, 10)), spacing=(1.0, 1.0, increment), slice_thickness_mm=thickness)
    found = [f for f in check_ct(image) if f.code == "thick_slices"]
    assert bool(found) == flagged
    if flagged:
        assert found[0].severity == "warning" and "5.00 mm" in found[0].message and "3 mm" in found[0].message


def test_nonuniform_spacing_reported(tmp_path):
    hu = np.full((6, 6, 5), 40.0, np.float32)
    hu[0, 0, :] = -1000.0
    write_dicom_series(tmp_path, hu, positions_along_normal=[0.0, 2.0, 4.0, 7.0, 10.0])
    kept = [f for f in check_ct(load_ct(tmp_path, nonuniform="keep")) if f.code == "nonuniform_spacing"]
    assert len(kept) == 1 and kept[0].severity == "error"
    assert "2.00 to 3.00 mm" in kept[0].message
    resampled = [f for f in check_ct(load_ct(tmp_path)) if f.code == "nonuniform_spacing"]
    assert len(resampled) == 1 and resampled[0].severity == "warning"
    assert "missing_slices" not in codes(check_ct(load_ct(tmp_path)))


def test_uniform_series_has_no_geometry_finding(tmp_path):
    hu = np.full((6, 6, 5), 40.0, np.float32)
    hu[0, 0, :] = -1000.0
    write_dicom_series(tmp_path, hu, increment=2.5)
    assert check_ct(load_ct(tmp_path)) == []


def test_tilt_in_sheared_affine():
    data = _body(shape=(20, 20, 10))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[1, 2] = 2.0 * np.tan(np.deg2rad(10.0))  # slices stacked 10 degrees off the normal
    image = MetaTensor(torch.as_tensor(data), meta={"affine": torch.as_tensor(affine)})
    found = [f for f in check_ct(image) if f.code == "gantry_tilt"]
    assert len(found) == 1 and "10.0 degrees" in found[0].message


# ------------------------------------------------------------------------------------------------
# grid check and the Finding record
# ------------------------------------------------------------------------------------------------
def test_assert_same_grid_names_files_shapes_affines():
    image = _image(np.zeros((4, 5, 6)), spacing=(0.5, 0.5, 3.0), filename_or_obj="/data/ct.nii.gz")
    assert_same_grid(image, _image(np.zeros((4, 5, 6)), spacing=(0.5, 0.5, 3.0)))
    other = _image(np.zeros((4, 5, 3)), spacing=(0.5, 0.5, 6.0), filename_or_obj="/data/label.nii.gz")
    with pytest.raises(CTInputError) as err:
        assert_same_grid(image, other)
    msg = str(err.value)
    for part in ("/data/ct.nii.gz", "/data/label.nii.gz", "(4, 5, 6)", "(4, 5, 3)", "3.", "6."):
        assert part in msg
    shifted = _image(np.zeros((4, 5, 6)), spacing=(0.5, 0.5, 3.0))
    shifted.affine[0, 3] = 1.0
    with pytest.raises(CTInputError, match="not on the grid"):
        assert_same_grid(image, shifted)


def test_finding_severity_validated():
    assert Finding("x", "info", "m").as_dict() == {"code": "x", "severity": "info", "message": "m"}
    with pytest.raises(ValueError, match="severity"):
        Finding("x", "fatal", "m")


# ------------------------------------------------------------------------------------------------
# NaN / infinite voxels and the slice axis (review of session 16)
# ------------------------------------------------------------------------------------------------
def test_non_finite_voxels_are_an_error_and_the_summary_stays_finite():
    data = _body(shape=(30, 30, 20))
    data[3, 4, 5], data[6, 7, 8], data[1, 1, 1] = np.nan, np.inf, -np.inf
    found = check_ct(_image(data))
    bad = [f for f in found if f.code == "non_finite"]
    assert len(bad) == 1 and bad[0].severity == "error" and bad[0].message.startswith("3 voxel(s)")
    assert "not_hu" not in codes(found)  # the other value checks look at the finite voxels
    s = hu_summary(_image(data))
    assert all(np.isfinite(v) for v in s.values()) and s["min"] < -1000
    assert all(np.isnan(v) for v in hu_summary(_image(np.full((4, 4, 4), np.nan))).values())


def test_volume_stored_sagittal_first_is_reported():
    """The same voxels with the array axes permuted (head-foot on axis 0) and an affine that says so."""
    data = _body(shape=(30, 30, 20))
    image = _image(data)
    assert "slice_axis" not in codes(check_ct(image))
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 1.5, 1.5, 1.5, 1.0  # axis 0 runs head-foot
    permuted = MetaTensor(torch.as_tensor(np.ascontiguousarray(data.transpose(2, 0, 1))), meta={"affine": torch.as_tensor(affine)})
    found = [f for f in check_ct(permuted) if f.code == "slice_axis"]
    assert len(found) == 1 and found[0].severity == "warning" and "array axis 0" in found[0].message
    tilted = np.diag([1.0, 1.0, 2.0, 1.0])
    tilted[1, 2] = 2.0 * np.tan(np.deg2rad(25.0))  # a strong gantry tilt is still axial
    assert "slice_axis" not in codes(check_ct(MetaTensor(torch.as_tensor(data), meta={"affine": torch.as_tensor(tilted)})))
