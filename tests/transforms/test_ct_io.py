"""CT input layer: DICOM series, NIfTI and MetaImage loading (ctbundles.transforms.ct_io)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, SpatialResample
from tests_support.dicom_series import write_dicom_series

from ctbundles.errors import CTInputError
from ctbundles.transforms.ct_checks import check_ct
from ctbundles.transforms.ct_io import (
    LoadCT,
    LoadCTd,
    acquisition_facts,
    list_dicom_series,
    load_ct,
    load_label,
    orientation_codes,
    tilt_from_affine,
)

QRM_NIFTI = "qrm_phantom/qrm_thorax_cci_canon_aquilion_one_120kV_3mm.nii.gz"


def _volume(shape=(6, 5, 4), seed=0, lo=-1000, hi=1500):
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.float32)


def _expected_affine(pixel_spacing, increment, origin):
    """RAS affine of an axial series: X along +x (L in LPS -> -R), Y along +y, Z along the normal."""
    return np.array(
        [
            [-pixel_spacing[1], 0, 0, -origin[0]],
            [0, -pixel_spacing[0], 0, -origin[1]],
            [0, 0, increment, origin[2]],
            [0, 0, 0, 1],
        ]
    )


# ------------------------------------------------------------------------------------------------
# real data: the QRM phantom and the head CT
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qrm(shared_data):
    return load_ct(shared_data / "qrm_phantom" / "dicom"), load_ct(shared_data / QRM_NIFTI)


@pytest.fixture(scope="module")
def head_raw(shared_data):
    return load_ct(shared_data / "head_ct" / "dicom", tilt="keep", nonuniform="keep")


@pytest.mark.shared_data
def test_qrm_dicom_equals_its_nifti(qrm):
    dicom, nifti = qrm
    assert dicom.shape == nifti.shape == (512, 512, 47)
    assert dicom.dtype == torch.float32
    np.testing.assert_array_equal(dicom.numpy(), nifti.numpy())
    np.testing.assert_allclose(np.asarray(dicom.affine), np.asarray(nifti.affine), atol=1e-4)
    np.testing.assert_allclose(dicom.meta["spacing"], nifti.meta["spacing"], atol=1e-6)
    np.testing.assert_allclose(dicom.meta["spacing"], [0.488, 0.488, 3.0], atol=1e-6)
    assert orientation_codes(dicom.affine) == orientation_codes(nifti.affine) == "LPS"


@pytest.mark.shared_data
def test_qrm_matches_monai_loadimage(qrm, shared_data):
    dicom, _ = qrm
    ref = LoadImage(image_only=True)(str(shared_data / QRM_NIFTI))
    np.testing.assert_array_equal(dicom.numpy(), ref.numpy())
    np.testing.assert_allclose(np.asarray(dicom.affine), np.asarray(ref.affine), atol=1e-4)


@pytest.mark.shared_data
def test_qrm_hu_and_acquisition_facts(qrm):
    dicom, _ = qrm
    assert float(dicom.min()) == -2048.0 and float(dicom.max()) == 1275.0
    assert dicom.meta["slice_increment_mm"] == pytest.approx(3.0, abs=1e-6)
    facts = acquisition_facts(dicom)
    assert facts["kvp"] == 120.0
    assert facts["slice_thickness_mm"] == 3.0
    assert facts["convolution_kernel"] == "FC12"
    assert facts["manufacturer"] == "TOSHIBA"
    assert facts["series_instance_uid"].endswith(".786246")
    assert dicom.meta["ct_warnings"] == []
    geo = dicom.meta["slice_geometry"]
    assert geo["uniform"] and not geo["tilted"] and geo["n_slices"] == 47


@pytest.mark.shared_data
def test_head_ct_tilt_and_uneven_spacing_detected(head_raw):
    geo = head_raw.meta["slice_geometry"]
    assert geo["tilted"]
    assert geo["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.05)
    assert geo["gantry_tilt_tag_deg"] == 18.5
    assert tilt_from_affine(head_raw.affine) == pytest.approx(18.5, abs=0.05)
    assert not geo["uniform"]
    assert geo["increment_min_mm"] == pytest.approx(1.08, abs=0.01)
    assert geo["increment_max_mm"] == pytest.approx(7.0, abs=0.01)
    assert geo["increment_median_mm"] == pytest.approx(4.0, abs=0.01)
    assert geo["n_missing_slices"] == 0  # 7 mm after 4 mm is a second protocol zone, not a lost slice
    codes = {f.code for f in check_ct(head_raw)}
    assert {"gantry_tilt", "nonuniform_spacing", "thick_slices"} <= codes


@pytest.mark.shared_data
@pytest.mark.parametrize("tilt", ["resample", "keep"])
def test_head_ct_geometry_matches_dcm2niix_tilt_corrected_nifti(shared_data, tilt):
    """Resampled onto the grid of dcm2niix's tilt-corrected NIfTI, our volume (corrected, or kept
    sheared with its true affine) lands on the same anatomy."""
    ours = load_ct(shared_data / "head_ct" / "dicom", tilt=tilt)
    ref = load_ct(shared_data / "head_ct" / "head_ct_noncontrast_ge_tiltcorrected_0.98x0.98x2.62.nii.gz")
    src = MetaTensor(ours.as_tensor()[None] + 1500.0, meta={"affine": ours.affine})
    moved = SpatialResample(mode="bilinear", padding_mode="zeros", align_corners=True, dtype=np.float32)(
        src, dst_affine=ref.affine, spatial_size=ref.shape
    )
    ours_on_ref, theirs = moved.numpy()[0] - 1500.0, ref.numpy()
    inside = (ours_on_ref > -1400) & (theirs > -1400)  # both inside the scanned field (-1500 outside)
    assert inside.mean() > 0.8
    assert np.corrcoef(ours_on_ref[inside], theirs[inside])[0, 1] > 0.98
    assert np.median(np.abs(ours_on_ref[inside] - theirs[inside])) < 10.0


@pytest.mark.shared_data
@pytest.mark.parametrize("option", ["tilt", "nonuniform"])
def test_head_ct_refused_on_request(shared_data, option):
    with pytest.raises(CTInputError, match="18.5 degrees" if option == "tilt" else "non-uniform slice spacing"):
        load_ct(shared_data / "head_ct" / "dicom", **{option: "error"})


# ------------------------------------------------------------------------------------------------
# generated DICOM series
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slope,intercept", [(1.0, -1024.0), (0.5, -1000.0), (2.0, 0.0)])
def test_rescale_slope_intercept_applied(tmp_path, slope, intercept):
    hu = _volume()
    write_dicom_series(tmp_path, hu, slope=slope, intercept=intercept)
    image = load_ct(tmp_path)
    expected = np.round((hu - intercept) / slope) * slope + intercept
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-4)
    assert image.meta["ct_warnings"] == []


def test_missing_rescale_tags_warn_and_keep_values(tmp_path):
    hu = _volume()
    write_dicom_series(tmp_path, hu, slope=None, intercept=None)
    image = load_ct(tmp_path)
    np.testing.assert_array_equal(image.numpy(), hu)
    assert any("no RescaleSlope/RescaleIntercept" in w for w in image.meta["ct_warnings"])
    assert "missing_rescale" in {f.code for f in check_ct(image)}


def test_slices_sorted_by_position_and_true_affine(tmp_path):
    hu = _volume(shape=(6, 5, 7))
    write_dicom_series(tmp_path, hu, pixel_spacing=(0.5, 0.7), increment=2.0, origin=(-10.0, -20.0, 100.0))
    image = load_ct(tmp_path)
    np.testing.assert_array_equal(image.numpy(), np.round(hu))
    np.testing.assert_allclose(np.asarray(image.affine), _expected_affine((0.5, 0.7), 2.0, (-10.0, -20.0, 100.0)))
    np.testing.assert_allclose(image.meta["spacing"], [0.7, 0.5, 2.0])
    assert orientation_codes(image.affine) == "LPS"


def test_overlapping_reconstruction_uses_increment_not_thickness(tmp_path):
    write_dicom_series(tmp_path, _volume(), increment=1.5, slice_thickness=3.0)
    image = load_ct(tmp_path)
    assert image.meta["slice_increment_mm"] == pytest.approx(1.5)
    assert image.meta["spacing"][2] == pytest.approx(1.5)
    assert image.meta["slice_thickness_mm"] == 3.0


def test_missing_slice_detected_and_interpolated(tmp_path):
    # slices at 0, 3, 6, (9 missing), 12, 15 mm
    hu = np.stack([np.full((4, 4), v, np.float32) for v in (0, 30, 60, 120, 150)], axis=-1)
    write_dicom_series(tmp_path, hu, positions_along_normal=[0, 3, 6, 12, 15])
    kept = load_ct(tmp_path, nonuniform="keep")
    geo = kept.meta["slice_geometry"]
    assert geo["n_missing_slices"] == 1 and geo["increment_median_mm"] == pytest.approx(3.0)
    assert "6.00 mm after slice 2" in geo["missing_gaps"]
    missing = [f for f in check_ct(kept) if f.code == "missing_slices"]
    assert len(missing) == 1 and missing[0].severity == "error" and "6.00 mm" in missing[0].message
    resampled = load_ct(tmp_path)
    assert resampled.shape == (4, 4, 6)
    # the missing slice at 9 mm is interpolated half way between 60 and 120 HU
    np.testing.assert_allclose(resampled.numpy()[0, 0, :], [0, 30, 60, 90, 120, 150], atol=1e-4)
    with pytest.raises(CTInputError, match="slice\\(s\\) missing"):
        load_ct(tmp_path, nonuniform="error")


def test_two_series_refused_then_selected(tmp_path):
    a, b = _volume(seed=1), _volume(seed=2, shape=(6, 5, 3))
    uid_a = write_dicom_series(tmp_path, a, description="calcium 3mm", prefix="a")
    uid_b = write_dicom_series(tmp_path, b, description="calcium 1.5mm", prefix="b", increment=1.5)
    series = list_dicom_series(tmp_path)
    assert [(s.uid, s.n_slices) for s in series] == [(uid_a, 4), (uid_b, 3)]
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    msg = str(err.value)
    assert "2 DICOM series" in msg and str(tmp_path) in msg
    assert uid_a in msg and uid_b in msg and "'calcium 1.5mm'" in msg and "4 slices" in msg and "3 slices" in msg
    image = load_ct(tmp_path, series_uid=uid_b)
    np.testing.assert_array_equal(image.numpy(), np.round(b))
    assert image.meta["series_instance_uid"] == uid_b and image.meta["slice_increment_mm"] == pytest.approx(1.5)
    with pytest.raises(CTInputError, match="no series with SeriesInstanceUID 1.2.3"):
        load_ct(tmp_path, series_uid="1.2.3")


def test_single_file_loads_its_series(tmp_path):
    hu = _volume()
    uid = write_dicom_series(tmp_path, hu, prefix="a")
    write_dicom_series(tmp_path, _volume(seed=5), prefix="b")
    image = load_ct(tmp_path / "a_000.dcm")
    assert image.meta["series_instance_uid"] == uid
    np.testing.assert_array_equal(image.numpy(), np.round(hu))
    files = sorted(str(p) for p in tmp_path.glob("a_*.dcm"))
    np.testing.assert_array_equal(LoadCT()(files).numpy(), image.numpy())  # a file list, as MONAI Label may pass


@pytest.mark.parametrize("tilt_deg", [12.0, 20.0])
def test_gantry_tilt_corrected_keeps_world_position(tmp_path, tilt_deg):
    hu = np.full((16, 16, 10), -1000.0, np.float32)
    hu[9, 6, 4] = 1000.0  # one bright voxel
    write_dicom_series(tmp_path, hu, pixel_spacing=(1.0, 1.0), increment=2.0, tilt_deg=tilt_deg)
    raw = load_ct(tmp_path, tilt="keep")
    assert raw.meta["slice_geometry"]["gantry_tilt_deg"] == pytest.approx(tilt_deg, abs=0.01)
    world = np.asarray(raw.affine) @ [9, 6, 4, 1]
    fixed = load_ct(tmp_path)
    aff = np.asarray(fixed.affine)
    assert tilt_from_affine(aff) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(aff[:3, :3].T @ aff[:3, :3], np.diag(np.diag(aff[:3, :3].T @ aff[:3, :3])), atol=1e-9)
    assert any("corrected by trilinear resampling" in w for w in fixed.meta["ct_warnings"])
    # the bright voxel's intensity-weighted centre stays at the same world position (within a voxel)
    arr = fixed.numpy() + 1000.0
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in arr.shape], indexing="ij"), -1).reshape(-1, 3)
    centre = (idx * arr.reshape(-1, 1)).sum(0) / arr.sum()
    moved = aff @ np.append(centre, 1)
    assert np.linalg.norm(moved[:3] - world[:3]) < 0.1
    assert float(fixed.min()) == pytest.approx(-1000.0)  # outside the tilted field: the image minimum
    with pytest.raises(CTInputError, match=f"{tilt_deg:.1f} degrees"):
        load_ct(tmp_path, tilt="error")


# ------------------------------------------------------------------------------------------------
# NIfTI, MetaImage, labels, MONAI transforms
# ------------------------------------------------------------------------------------------------
def _lps_direction():
    return np.array([[1.0, 0, 0], [0, 0.0, -1.0], [0, 1.0, 0.0]])  # a coronal-like direction


def test_metaimage_round_trip_matches_nifti(tmp_path):
    hu = _volume(shape=(7, 6, 5))
    img = sitk.GetImageFromArray(np.transpose(hu, (2, 1, 0)).astype(np.int16))
    img.SetSpacing((0.6, 0.8, 2.5))
    img.SetOrigin((5.0, -7.0, 30.0))
    img.SetDirection(tuple(_lps_direction().ravel()))
    sitk.WriteImage(img, str(tmp_path / "ct.mhd"))
    assert (tmp_path / "ct.raw").exists() or (tmp_path / "ct.zraw").exists()
    image = load_ct(tmp_path / "ct.mhd")
    np.testing.assert_array_equal(image.numpy(), hu)
    lps = np.eye(4)
    lps[:3, :3] = _lps_direction() * [0.6, 0.8, 2.5]
    lps[:3, 3] = [5.0, -7.0, 30.0]
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    np.testing.assert_allclose(np.asarray(image.affine), expected, atol=1e-9)
    np.testing.assert_allclose(image.meta["spacing"], [0.6, 0.8, 2.5])
    assert image.meta["format"] == "metaimage"
    np.testing.assert_array_equal(load_ct(tmp_path / "ct.raw").numpy(), hu)  # the data file names its header
    # the same voxels and affine written as NIfTI come back identical (MONAI NibabelReader)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), expected), str(tmp_path / "ct.nii.gz"))
    nifti = load_ct(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(nifti.numpy(), image.numpy())
    np.testing.assert_allclose(np.asarray(nifti.affine), np.asarray(image.affine), atol=1e-5)


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([0.5, 0.5, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def test_load_label_same_grid_and_other_grid(tmp_path):
    image = load_ct(_nifti(tmp_path / "ct.nii.gz", _volume(shape=(8, 8, 4)).astype(np.int16)))
    label = load_label(_nifti(tmp_path / "lab.nii.gz", np.ones((8, 8, 4), np.uint8)), like=image)
    assert label.shape == image.shape and float(label.sum()) == 8 * 8 * 4
    with pytest.raises(CTInputError) as err:
        load_label(_nifti(tmp_path / "small.nii.gz", np.ones((8, 8, 3), np.uint8)), like=image)
    msg = str(err.value)
    assert "small.nii.gz" in msg and "ct.nii.gz" in msg and "(8, 8, 4)" in msg and "(8, 8, 3)" in msg
    flipped = np.diag([0.5, 0.5, -3.0, 1.0])
    with pytest.raises(CTInputError, match=r"-3\."):
        load_label(_nifti(tmp_path / "flip.nii.gz", np.ones((8, 8, 4), np.uint8), flipped), like=image)


@pytest.mark.parametrize("name", ["ct.png", "missing.nii.gz"])
def test_unsupported_or_missing_input(tmp_path, name):
    if name.endswith(".png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    with pytest.raises(CTInputError, match=name):
        load_ct(tmp_path / name)


def test_empty_folder_refused(tmp_path):
    with pytest.raises(CTInputError, match="no DICOM image slices"):
        load_ct(tmp_path)


def test_loadctd_in_compose_with_path_string_and_collate(tmp_path):
    ct = _nifti(tmp_path / "ct.nii.gz", _volume(shape=(8, 8, 4)).astype(np.int16))
    lab = _nifti(tmp_path / "lab.nii.gz", np.ones((8, 8, 4), np.uint8))
    dicom = tmp_path / "dicom"
    write_dicom_series(dicom, _volume(shape=(8, 8, 4)), slice_thickness=None)
    pipeline = Compose([LoadCTd(keys="image", label_keys="label"), EnsureChannelFirstd(keys=["image", "label"])])
    out = pipeline({"image": str(ct), "label": str(lab)})
    assert out["image"].shape == (1, 8, 8, 4) and out["label"].shape == (1, 8, 8, 4)
    assert out["image"].meta["slice_increment_mm"] == pytest.approx(3.0)
    only = Compose([LoadCTd(keys="image"), EnsureChannelFirstd(keys="image")])(str(ct))  # MONAI Label passes a path
    assert only["image"].shape == (1, 8, 8, 4)
    np.testing.assert_array_equal(LoadCT()(str(ct)).numpy(), out["image"].numpy()[0])
    # NIfTI and DICOM metas (unknown kVp/thickness as NaN, warnings lists) collate in one batch
    ds = Dataset([{"image": str(ct)}, {"image": str(dicom)}], transform=Compose([LoadCTd("image"), EnsureChannelFirstd("image")]))
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 1, 8, 8, 4)
    assert math.isnan(float(batch["image"].meta["kvp"][0])) and float(batch["image"].meta["kvp"][1]) == 120.0


def test_an_unreadable_dicom_file_in_the_series_folder_is_named(tmp_path):
    """Review of session 16: an empty .dcm at the edge of the stack was skipped silently (one slice fewer, no
    warning); a junk file without a DICOM name is still ignored."""
    hu = _volume()
    write_dicom_series(tmp_path, hu, prefix="a")
    (tmp_path / "notes.txt").write_text("not DICOM")
    np.testing.assert_array_equal(load_ct(tmp_path).numpy(), np.round(hu))
    (tmp_path / "a_999.dcm").write_bytes(b"")
    with pytest.raises(CTInputError, match=r"1 DICOM file\(s\) cannot be read: a_999\.dcm"):
        load_ct(tmp_path)
    assert [s.n_slices for s in list_dicom_series(tmp_path)] == [hu.shape[2]]  # listing the series still works
