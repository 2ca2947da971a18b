"""`ctbundles score` on small NIfTI files written in tmp, with hand-computed scores.

The synthetic CT is air (-1000 HU) around a soft-tissue body (40 HU) so that the input checks see a
non-contrast CT in HU; calcium is placed inside the label at known HU. Pixels are 0.5 x 0.5 mm
(0.25 mm^2), slices 3 mm apart unless a test says otherwise.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ctbundles.cli import main

SHAPE = (40, 40, 6)


def body(shape=SHAPE):
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[4:-4, 4:-4, :] = 40.0
    return hu, np.zeros(shape, dtype=np.uint8)


def write(path, array, spacing=(0.5, 0.5, 3.0), origin=(0.0, 0.0, 0.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def case(tmp_path, hu, lab, spacing=(0.5, 0.5, 3.0)):
    return write(tmp_path / "ct.nii.gz", hu, spacing), write(tmp_path / "ct_label.nii.gz", lab, spacing)


def score(tmp_path, image, label, *options):
    out = tmp_path / "report.json"
    rc = main(["score", image, "--label", label, "--json", str(out), *options])
    return rc, (json.loads(out.read_text()) if rc == 0 else None)


def two_lesions():
    # A: 2 x 2 px (1 mm^2) at 250 HU -> 1 x 2 = 2.  B: 3 x 3 px (2.25 mm^2) at 450 HU -> 2.25 x 4 = 9.
    hu, lab = body()
    hu[10:12, 10:12, 2] = 250.0
    hu[20:23, 20:23, 3] = 450.0
    lab[8:14, 8:14, 2] = 1  # the label ring around A is 40 HU and must not count
    lab[20:23, 20:23, 3] = 1
    return hu, lab


def test_default_definition_and_json(tmp_path, capsys):
    image, label = case(tmp_path, *two_lesions())
    rc, report = score(tmp_path, image, label)
    assert rc == 0
    assert report["agatston"] == pytest.approx(11.0)
    assert report["volume_mm3"] == pytest.approx((4 + 9) * 0.25 * 3.0)
    assert report["mass_mg"] is None and report["n_lesions"] == 2
    assert report["risk_category"] == "11-100" and report["cac_drs"] == "A1" and report["chest_ct_category"] == "11-100"
    assert report["parameters"]["slice_increment_mm"] == 3.0 and report["parameters"]["pixel_area_mm2"] == pytest.approx(0.25)
    assert report["image"] == image and report["label"] == label
    assert isinstance(report["warnings"], list)
    out = capsys.readouterr().out
    assert "Agatston score   11.0" in out and "HU >= 130 inside label" in out


def lesion_variants():
    hu, lab = body()
    # diagonal pair: 2 x 2 px at 150 HU and 2 x 2 px at 450 HU touching at a corner (slice 1)
    hu[10:12, 10:12, 1] = 150.0
    hu[12:14, 12:14, 1] = 450.0
    lab[10:14, 10:14, 1] = 1
    # an L of 3 pixels at 350 HU (0.75 mm^2, slice 4)
    hu[[25, 26, 26], [25, 25, 26], 4] = 350.0
    lab[[25, 26, 26], [25, 25, 26], 4] = 1
    return hu, lab


@pytest.mark.parametrize(
    "options, expected",
    [
        ([], 2 * 4.0),  # 8-connected pair: 2 mm^2 x weight 4; the L (0.75 mm^2) dropped
        (["--connectivity", "4"], 1 * 1 + 1 * 4.0),  # split pair: 1 mm^2 x 1 + 1 mm^2 x 4
        (["--min-pixels", "3"], 8.0 + 0.75 * 3),  # the L is kept: 0.75 mm^2 x weight 3
        (["--min-pixels", "4"], 8.0),
        (["--min-area-mm2", "0.5"], 8.0 + 0.75 * 3),
        (["--min-area-mm2", "2.5"], 0.0),  # even the 2 mm^2 pair is dropped
        (["--threshold-hu", "500"], 0.0),
        (["--mode", "3d"], 8.0 + 0.75 * 3),  # 3D: pair 6 mm^3 kept; the L (2.25 mm^3 >= 1.5) kept too
    ],
)
def test_lesion_options(tmp_path, options, expected):
    image, label = case(tmp_path, *lesion_variants())
    rc, report = score(tmp_path, image, label, *options)
    assert rc == 0
    assert report["agatston"] == pytest.approx(expected)


@pytest.mark.parametrize("options, pixels", [([], 4), (["--strict"], 2)])
def test_strict_threshold(tmp_path, options, pixels):
    hu, lab = body()
    hu[10:12, 10:12, 2] = 130.0
    hu[10, 10:12, 2] = 131.0
    lab[10:12, 10:12, 2] = 1
    image, label = case(tmp_path, hu, lab)
    rc, report = score(tmp_path, image, label, "--min-pixels", "1", *options)
    assert rc == 0
    assert report["agatston"] == pytest.approx(pixels * 0.25)
    assert report["parameters"]["strict"] is bool(options)


def test_mass_and_artery_labels(tmp_path):
    # LAD (1): 2 x 2 px at 250 HU; RCA (3): 3 x 3 px at 450 HU. c = 0.8 mg/cm^3 per HU.
    # mass LAD = 0.8 x (4 x 0.75 mm^3 / 1000) x 250 = 0.6 mg; RCA = 0.8 x (9 x 0.75 / 1000) x 450 = 2.43 mg
    hu, lab = two_lesions()
    lab[lab > 0] = 0
    lab[10:12, 10:12, 2] = 1
    lab[20:23, 20:23, 3] = 3
    image, label = case(tmp_path, hu, lab)
    rc, report = score(tmp_path, image, label, "--calibration-factor", "0.8", "--artery-labels", "LAD=1,LCX=2,RCA=3")
    assert rc == 0
    per = report["per_artery"]
    assert per["LAD"]["agatston"] == pytest.approx(2.0) and per["RCA"]["agatston"] == pytest.approx(9.0)
    assert per["LCX"]["agatston"] == 0.0
    assert per["LAD"]["mass_mg"] == pytest.approx(0.6) and per["RCA"]["mass_mg"] == pytest.approx(2.43)
    assert report["mass_mg"] == pytest.approx(3.03)
    assert report["cac_drs"] == "A1/N2"
    assert report["parameters"]["artery_labels"] == {"LAD": 1, "LCX": 2, "RCA": 3}


def test_overlapping_slices_use_the_increment(tmp_path):
    # The same 2 x 2 px, 250 HU plaque seen in 4 slices 1.5 mm apart: 4 x 1 mm^2 x 2 x 0.5 = 4.
    hu, lab = body((40, 40, 8))
    hu[10:12, 10:12, 2:6] = 250.0
    lab[10:12, 10:12, 2:6] = 1
    image, label = case(tmp_path, hu, lab, spacing=(0.5, 0.5, 1.5))
    rc, report = score(tmp_path, image, label)
    assert rc == 0 and report["agatston"] == pytest.approx(4.0)
    assert report["parameters"]["slice_factor"] == pytest.approx(0.5)


def test_bad_option_values(tmp_path, capsys):
    image, label = case(tmp_path, *two_lesions())
    with pytest.raises(SystemExit) as err:
        main(["score", image, "--label", label, "--min-pixels", "3", "--min-area-mm2", "2"])
    assert err.value.code == 2
    assert main(["score", image, "--label", label, "--artery-labels", "LAD=one"]) == 2
    assert "LAD" in capsys.readouterr().err


def contrast_case():
    # A 72 x 72 x 36 mm blood pool at 400 HU (186 mL) in a body: an enhanced CT.
    hu = np.full((48, 48, 24), -1000.0, dtype=np.float32)
    hu[2:-2, 2:-2, :] = 40.0
    hu[6:42, 6:42, 3:21] = 400.0
    lab = np.zeros(hu.shape, dtype=np.uint8)
    lab[20:24, 20:24, 10] = 1
    return hu, lab


def test_contrast_is_refused_unless_forced(tmp_path, capsys):
    image, label = case(tmp_path, *contrast_case(), spacing=(2.0, 2.0, 2.0))
    rc, _ = score(tmp_path, image, label)
    assert rc == 2
    err = capsys.readouterr().err
    assert "contrast" in err and image in err and "--force" in err
    rc, report = score(tmp_path, image, label, "--force")
    assert rc == 0
    assert any(w.startswith("forced past contrast") for w in report["warnings"])
    # 4 x 4 px of 4 mm^2 inside the 400 HU pool: 64 mm^2 x weight 4 x (2 mm / 3)
    assert report["agatston"] == pytest.approx(64.0 * 4 * 2.0 / 3.0)


def test_not_hu_is_refused(tmp_path, capsys):
    hu, lab = two_lesions()
    normalized = ((hu + 1000.0) / 2000.0).astype(np.float32)  # 0..1
    image, label = case(tmp_path, normalized, lab)
    rc, _ = score(tmp_path, image, label)
    assert rc == 2 and "not_hu" in capsys.readouterr().err


def test_label_on_another_grid(tmp_path, capsys):
    hu, lab = two_lesions()
    image = write(tmp_path / "ct.nii.gz", hu)
    smaller = write(tmp_path / "small_label.nii.gz", lab[:, :, :4])
    assert main(["score", image, "--label", smaller]) == 2
    err = capsys.readouterr().err
    assert "small_label.nii.gz" in err and "(40, 40, 4)" in err
    assert main(["score", image, "--label", smaller, "--force"]) == 2  # shapes differ: never scored
    shifted = write(tmp_path / "shifted_label.nii.gz", lab, origin=(5.0, 0.0, 0.0))
    assert main(["score", image, "--label", shifted]) == 2
    rc, report = score(tmp_path, image, shifted, "--force")
    assert rc == 0 and report["agatston"] == pytest.approx(11.0)
    assert any("not on the grid" in w for w in report["warnings"])


def test_never_writes_over_an_input(tmp_path, capsys):
    image, label = case(tmp_path, *two_lesions())
    before = open(label, "rb").read()
    assert main(["score", image, "--label", label, "--json", label]) == 2  # one line on stderr, no traceback
    assert "over an input" in capsys.readouterr().err
    assert open(label, "rb").read() == before


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = capsys.readouterr().out
    for option in ("--label", "--json", "--connectivity", "--min-area-mm2", "--min-pixels", "--mode", "--threshold-hu", "--strict", "--calibration-factor", "--artery-labels", "--series-uid", "--force"):
        assert option in out


def test_contrast_cta_from_shared_data_is_refused(shared_data, tmp_path, capsys):
    folder = shared_data / "chest_cta"
    image = str(folder / "chest_cta_crop_b_ct_1.5mm.nii.gz")
    label = str(folder / "chest_cta_crop_b_labels_1heart_2aorta.nii.gz")
    assert main(["score", image, "--label", label]) == 2
    assert "contrast" in capsys.readouterr().err
