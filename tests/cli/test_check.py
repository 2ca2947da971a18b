"""`ctbundles check IMAGE`: report, JSON and exit status."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from tests_support.dicom_series import write_dicom_series

from ctbundles.cli import main


def _run(capsys, *argv):
    rc = main(["check", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.shared_data
def test_check_qrm_dicom(shared_data, tmp_path, capsys):
    out_json = tmp_path / "report.json"
    rc, out, _ = _run(capsys, shared_data / "qrm_phantom" / "dicom", "--json", out_json)
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["format"] == "dicom" and report["shape"] == [512, 512, 47]
    assert report["spacing_mm"] == pytest.approx([0.488, 0.488, 3.0])
    assert report["slice_increment_mm"] == pytest.approx(3.0)
    assert report["orientation"] == "LPS"
    assert report["hu"]["min"] == -2048.0 and report["hu"]["max"] == 1275.0
    assert report["acquisition"]["kvp"] == 120.0 and report["acquisition"]["convolution_kernel"] == "FC12"
    assert report["findings"] == [] and report["ok"] is True
    assert "512 x 512 x 47" in out and "0.488 x 0.488 x 3.000 mm" in out and "kVp 120" in out
    assert "min -2048" in out and "max 1275" in out and "findings:         none" in out


@pytest.mark.shared_data
def test_check_contrast_cta_fails(shared_data, capsys):
    rc, out, _ = _run(capsys, shared_data / "chest_cta" / "chest_cta_crop_b_ct_1.5mm.nii.gz")
    assert rc == 1
    assert "[error] contrast" in out and "NOT OK: 1 error(s)" in out


@pytest.mark.shared_data
def test_check_head_ct_reports_tilt_and_spacing(shared_data, tmp_path, capsys):
    out_json = tmp_path / "head.json"
    rc, out, _ = _run(capsys, shared_data / "head_ct" / "dicom", "--json", out_json)
    assert rc == 0  # tilt corrected and spacing resampled: warnings, not errors
    report = json.loads(out_json.read_text())
    found = {f["code"]: f for f in report["findings"]}
    assert {"gantry_tilt", "nonuniform_spacing", "thick_slices"} == set(found)
    assert "18.5 degrees" in found["gantry_tilt"]["message"]
    assert report["slice_geometry"]["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.05)
    assert "gantry tilt 18.5 deg" in out


def test_check_two_series_lists_then_selects(tmp_path, capsys):
    vol = np.full((6, 6, 4), 40.0, np.float32)
    vol[0] = -1000.0
    uid_a = write_dicom_series(tmp_path, vol, prefix="a", description="first")
    uid_b = write_dicom_series(tmp_path, vol, prefix="b", description="second", increment=1.5)
    rc, _, err = _run(capsys, tmp_path)
    assert rc == 2 and uid_a in err and uid_b in err and "--series-uid" in err
    rc, out, _ = _run(capsys, tmp_path, "--series-uid", uid_b)
    assert rc == 0 and uid_b in out and "slice increment:  1.500 mm" in out


def test_check_8bit_image_fails(tmp_path, capsys):
    path = tmp_path / "screenshot.nii.gz"
    data = np.random.default_rng(0).integers(0, 256, (16, 16, 4)).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    rc, out, _ = _run(capsys, path, "--json", tmp_path / "r.json")
    assert rc == 1 and "[error] not_hu" in out and "8-bit" in out
    assert json.loads((tmp_path / "r.json").read_text())["findings"][0]["code"] == "not_hu"


def test_check_missing_file_exits_2(tmp_path, capsys):
    rc, _, err = _run(capsys, tmp_path / "nope.nii.gz")
    assert rc == 2 and "nope.nii.gz" in err and "no such file" in err


def test_check_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--series-uid", "--json", "--tilt", "--nonuniform", "Exit status"):
        assert word in out


def test_check_nan_voxels_is_an_error_finding_not_a_crash(tmp_path, capsys):
    """Review of session 16: one NaN voxel used to crash the report (a None formatted as a number)."""
    rng = np.random.default_rng(0)
    data = np.full((24, 24, 12), -1000.0, np.float32)
    data[4:20, 4:20, :] = 40.0 + rng.normal(0, 10, (16, 16, 12))
    data[10, 10, 5] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 3.0, 1.0])), path)
    rc, out, err = _run(capsys, path, "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert rc == 1 and [f["code"] for f in report["findings"]] == ["non_finite"]
    assert "1 voxel(s) are NaN or infinite" in out and report["hu"]["min"] == pytest.approx(data[np.isfinite(data)].min())
    assert "Traceback" not in err
