"""NIfTI folder layout: write -> datalist -> load round trip, pairing by name, exclusions, folds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from ctbundles.datasets import nifti_folder
from ctbundles.datasets.datalist_io import patient_folds
from ctbundles.errors import CTInputError
from ctbundles.synthetic.chest_cardiac import generate_cardiac


@pytest.fixture(scope="module")
def case():
    return generate_cardiac(8, shape=(64, 56, 12), spacing=(1.5, 1.5, 3.0), n_plaques=5)


def test_round_trip_arrays_affine_and_truth(tmp_path, case):
    paths = nifti_folder.write_case(case, tmp_path)
    assert paths["image"] == tmp_path / "imagesTr" / f"{case.case_id}.nii.gz"
    assert paths["heart_mask"] == tmp_path / "extrasTr" / f"{case.case_id}_heart_mask.nii.gz"
    out = nifti_folder.write_datalist(tmp_path, label_names=case.label_names)
    items = load_decathlon_datalist(str(out), data_list_key="training")
    assert len(items) == 1
    item = items[0]
    loader = LoadImage(image_only=True)
    img = loader(item["image"])
    np.testing.assert_array_equal(np.asarray(img), case.image)
    np.testing.assert_allclose(np.asarray(img.affine), case.affine, atol=1e-5)
    assert nib.load(item["image"]).get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(loader(item["label"])), case.label)
    np.testing.assert_array_equal(np.asarray(loader(item["heart_mask"])), case.extra["heart_mask"])
    record = json.loads(Path(item["truth"]).read_text())
    assert record["truth"]["agatston"] == pytest.approx(case.truth["agatston"])
    assert record["label_names"] == case.label_names
    assert record["meta"]["slice_thickness_mm"] == 3.0
    datalist = json.loads(out.read_text())
    assert datalist["training"][0]["image"] == f"imagesTr/{case.case_id}.nii.gz"  # relative: the folder can move
    assert datalist["labels"]["2"] == "LAD"
    # atomic writes leave no temporary files behind
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def _tiny(root: Path, folder: str, name: str, shape=(4, 4, 3), value=0):
    nifti_folder.write_nifti(root / folder / name, np.full(shape, value, np.int16), np.eye(4))


def test_pairs_by_name_and_lists_excluded_with_reasons(tmp_path):
    for n in ("a", "b", "c", "e", "f"):
        _tiny(tmp_path, "imagesTr", f"{n}.nii.gz")
    _tiny(tmp_path, "imagesTr", "g_0000.nii.gz")  # nnU-Net channel suffix
    for n in ("a", "b", "d", "f", "g"):
        _tiny(tmp_path, "labelsTr", f"{n}.nii.gz", shape=(4, 4, 3) if n != "f" else (4, 4, 5))
    (tmp_path / "labelsTr" / "e.nii.gz").write_bytes(b"not a nifti file")
    (tmp_path / "imagesTr" / ".tmp-x.nii.gz").write_bytes(b"partial")  # an interrupted write: ignored
    _tiny(tmp_path, "imagesTs", "t1.nii.gz")
    dl = nifti_folder.build_datalist(tmp_path, folds=2)
    assert sorted(it["case_id"] for it in dl["training"]) == ["a", "b", "g"]
    for it in dl["training"]:
        assert Path(it["label"]).name == f"{it['case_id']}.nii.gz"
    reasons = {Path(e["path"]).name: e["reason"] for e in dl["excluded"]}
    assert "no label named c" in reasons["c.nii.gz"]
    assert "label without an image named d" in reasons["d.nii.gz"]
    assert reasons["e.nii.gz"].startswith("unreadable label")
    assert "(4, 4, 5)" in reasons["f.nii.gz"] and "(4, 4, 3)" in reasons["f.nii.gz"]
    assert len(dl["excluded"]) == 4
    assert [Path(t["image"]).name for t in dl["test"]] == ["t1.nii.gz"]


def test_missing_images_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CTInputError, match="imagesTr"):
        nifti_folder.build_datalist(tmp_path)


def test_folds_grouped_by_patient_and_deterministic(tmp_path):
    patients = {f"c{i}": f"P{i // 2}" for i in range(10)}  # two scans per patient
    for cid, pid in patients.items():
        _tiny(tmp_path, "imagesTr", f"{cid}.nii.gz")
        _tiny(tmp_path, "labelsTr", f"{cid}.nii.gz")
        (tmp_path / "truth").mkdir(exist_ok=True)
        (tmp_path / "truth" / f"{cid}.json").write_text(json.dumps({"patient_id": pid}))
    dl = nifti_folder.build_datalist(tmp_path, folds=5, seed=3)
    fold = {it["case_id"]: it["fold"] for it in dl["training"]}
    for i in range(0, 10, 2):
        assert fold[f"c{i}"] == fold[f"c{i + 1}"]
    assert sorted(fold.values()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert nifti_folder.build_datalist(tmp_path, folds=5, seed=3)["training"] == dl["training"]
    assert dl["folds"] == 5
    # default: 5 folds
    assert nifti_folder.build_datalist(tmp_path)["folds"] == nifti_folder.DEFAULT_FOLDS


def test_patient_folds_balanced_and_seeded():
    pats = [f"p{i}" for i in range(13)]
    f = patient_folds(pats + pats[:3], 4, seed=1)
    counts = np.bincount(list(f.values()), minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 13
    assert f == patient_folds(reversed(pats), 4, seed=1)  # order of input does not matter
    assert any(patient_folds(pats, 4, seed=s) != f for s in range(2, 6))
    with pytest.raises(ValueError):
        patient_folds(pats, 0)


def test_write_datalist_elsewhere_keeps_absolute_paths(tmp_path):
    root = tmp_path / "cohort"
    _tiny(root, "imagesTr", "a.nii.gz")
    _tiny(root, "labelsTr", "a.nii.gz")
    out = nifti_folder.write_datalist(root, out=tmp_path / "lists" / "dl.json", folds=1)
    item = json.loads(out.read_text())["training"][0]
    assert os.path.isabs(item["image"]) and Path(item["image"]).is_file()
    assert item["fold"] == 0
