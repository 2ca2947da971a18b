"""orCaScore-style MetaImage layout: round trip, label remap, pairing by token, exclusions, folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ctbundles.datasets import orcascore
from ctbundles.errors import CTInputError
from ctbundles.synthetic.chest_cardiac import CORONARY_LABELS, generate_cardiac


@pytest.fixture(scope="module")
def case():
    plaques = [
        {"artery": a, "position": p, "shape": "box", "size_mm": [3.0, 3.0, 6.0], "hu": 500.0, "snap_to_grid": True}
        for a, p in (("LM", 0.5), ("LAD", 0.3), ("LCX", 0.3), ("RCA", 0.3))
    ]
    return generate_cardiac(2, shape=(128, 128, 40), spacing=(1.5, 1.5, 3.0), plaques=plaques, noise_std=0, psf=False)


def test_remap_native_to_orcascore():
    native = np.array([0, 1, 2, 3, 4], np.uint8)
    np.testing.assert_array_equal(orcascore.remap_to_orcascore(native, CORONARY_LABELS), [0, 1, 1, 2, 3])
    np.testing.assert_array_equal(orcascore.remap_to_orcascore(np.array([5]), {"other": 5}), [4])


def test_round_trip_arrays_geometry_labels_and_truth(tmp_path, case):
    paths = orcascore.write_case(case, tmp_path, vendor=3, patient=7)
    assert paths["image"] == tmp_path / "Training" / "Images" / "TRV3P7CTI.mhd"
    assert paths["label"] == tmp_path / "Training" / "Reference" / "TRV3P7R.mhd"
    assert (tmp_path / "Training" / "Images" / "TRV3P7CTI.raw").is_file()
    assert not list(tmp_path.rglob(".tmp-*"))
    dl = orcascore.build_datalist(tmp_path)
    assert dl["excluded"] == [] and len(dl["training"]) == 1
    item = dl["training"][0]
    assert item["patient"] == "V3P7" and item["vendor"] == 3
    img, aff = orcascore.read_mhd(item["image"])
    np.testing.assert_array_equal(img, case.image)
    np.testing.assert_allclose(aff, case.affine, atol=1e-6)
    ref, _ = orcascore.read_mhd(item["label"])
    np.testing.assert_array_equal(ref, orcascore.remap_to_orcascore(case.label, case.label_names))
    assert set(np.unique(ref).tolist()) == {0, 1, 2, 3}
    # LM and LAD both became 1
    assert (ref == 1).sum() == ((case.label == 1) | (case.label == 2)).sum()
    # MetaImage geometry in LPS as SimpleITK reads it
    s = sitk.ReadImage(item["image"])
    assert s.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(s.GetSpacing(), case.spacing)
    np.testing.assert_allclose(s.GetDirection(), np.eye(3).ravel())
    np.testing.assert_allclose(s.GetOrigin(), [-case.affine[0, 3], -case.affine[1, 3], case.affine[2, 3]])
    # truth re-scored on the orCaScore labels: LAD = LM + LAD of the native truth
    record = json.loads(Path(item["truth"]).read_text())
    native = case.truth["per_artery"]
    assert record["truth"]["per_artery"]["LAD"]["agatston"] == pytest.approx(native["LM"]["agatston"] + native["LAD"]["agatston"])
    assert record["truth"]["agatston"] == pytest.approx(case.truth["agatston"])
    assert native["LM"]["agatston"] > 0 and native["RCA"]["agatston"] > 0


def _tiny_mhd(path: Path, shape=(4, 4, 3)):
    orcascore.write_mhd(path, np.zeros(shape, np.int16), np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_pairing_tokens_case_insensitive_test_items_and_exclusions(tmp_path):
    tr = tmp_path / "training"  # lower-case folder names are accepted
    for v, p in ((1, 1), (1, 2), (2, 1), (4, 9)):
        _tiny_mhd(tr / "Images" / f"TRV{v}P{p}CTI.mhd")
    _tiny_mhd(tr / "images" / "trv3p3cti.mhd")  # lower-case file name
    for v, p in ((1, 1), (1, 2), (3, 3)):
        _tiny_mhd(tr / "Reference" / f"TRV{v}P{p}R.mhd")
    _tiny_mhd(tr / "Reference" / "TRV4P9R.mhd", shape=(4, 4, 5))  # size mismatch
    _tiny_mhd(tr / "Reference" / "TRV5P5R.mhd")  # no image
    _tiny_mhd(tr / "Images" / "TRV6P1CTI.mhd")
    (tr / "Images" / "TRV6P1CTI.raw").unlink()  # data file missing
    _tiny_mhd(tr / "Images" / "scan_01.mhd")  # not the naming convention
    _tiny_mhd(tmp_path / "Test" / "Images" / "TEV2P4CTI.mhd")
    dl = orcascore.build_datalist(tmp_path, folds=2)
    assert sorted(it["case_id"] for it in dl["training"]) == ["TRV1P1", "TRV1P2", "TRV3P3"]
    for it in dl["training"]:
        assert Path(it["label"]).stem.upper() == it["case_id"] + "R"
    assert [it["case_id"] for it in dl["test"]] == ["TEV2P4"] and "label" not in dl["test"][0]
    reasons = {Path(e["path"]).name: e["reason"] for e in dl["excluded"]}
    assert "no reference" in reasons["TRV2P1CTI.mhd"]
    assert "(4, 4, 5)" in reasons["TRV4P9CTI.mhd"]
    assert "without an image" in reasons["TRV5P5R.mhd"]
    assert "TRV6P1CTI.raw" in reasons["TRV6P1CTI.mhd"] and "missing" in reasons["TRV6P1CTI.mhd"]
    assert "does not follow" in reasons["scan_01.mhd"]
    assert len(dl["excluded"]) == 5


def test_four_folds_grouped_by_patient(tmp_path):
    for v in (1, 2, 3, 4):
        for p in (1, 2):
            stem = f"TRV{v}P{p}"
            _tiny_mhd(tmp_path / "Training" / "Images" / f"{stem}CTI.mhd")
            _tiny_mhd(tmp_path / "Training" / "Reference" / f"{stem}R.mhd")
    dl = orcascore.build_datalist(tmp_path, seed=5)
    assert dl["folds"] == 4
    folds = [it["fold"] for it in dl["training"]]
    assert sorted(folds) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({it["patient"] for it in dl["training"]}) == 8
    assert orcascore.build_datalist(tmp_path, seed=5)["training"] == dl["training"]
    out = orcascore.write_datalist(tmp_path, seed=5)
    assert json.loads(out.read_text())["training"][0]["image"].startswith("Training/Images/")


def test_empty_or_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(CTInputError, match="no .mhd"):
        orcascore.build_datalist(tmp_path)
    with pytest.raises(CTInputError, match="does not exist"):
        orcascore.build_datalist(tmp_path / "nope")
