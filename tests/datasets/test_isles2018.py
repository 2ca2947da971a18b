"""ISLES 2018 layout: writer, datalist (matched by modality, patient-grouped folds), stacker."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctbundles.datasets import isles2018
from ctbundles.datasets.isles2018 import build_datalist, stack_maps, write_case, write_cohort
from ctbundles.errors import CTInputError
from ctbundles.synthetic.ctp import generate_ctp, generate_ctp_patient

SMALL = dict(shape_xy=(32, 32), n_slices=3)
NAME_RE = re.compile(r"^SMIR\.Brain\.XX\.O\.([A-Za-z0-9_]+)\.(\d+)$")
KEY_OF = {"CT": "ct", "CT_CBF": "cbf", "CT_CBV": "cbv", "CT_MTT": "mtt", "CT_Tmax": "tmax", "OT": "label"}


def _write_patients(root, plan):
    """plan: list of (seed, n_slabs); every slab its own consecutive case; returns case -> slab."""
    written, number = {}, 1
    for seed, n_slabs in plan:
        for case in generate_ctp_patient(seed, **SMALL, n_slabs=n_slabs):
            written[f"case_{number}"] = case
            write_case(case, root, case_number=number)
            number += 1
    return written


@pytest.fixture()
def cohort(tmp_path):
    root = tmp_path / "ISLES2018"
    cases = _write_patients(root, [(0, 2), (1, 1), (2, 2), (3, 1), (4, 1), (5, 2)])
    return root, cases


def test_layout_names_dtypes_and_shuffled_ids(cohort):
    root, cases = cohort
    assert sorted(p.name for p in (root / "TRAINING").iterdir()) == sorted(cases)
    all_ids = []
    for case_name in cases:
        folders = sorted((root / "TRAINING" / case_name).iterdir())
        mods = {}
        for folder in folders:
            m = NAME_RE.match(folder.name)
            assert m, folder.name
            assert [p.name for p in folder.iterdir()] == [f"{folder.name}.nii"]
            mods[m.group(1)] = int(m.group(2))
        assert set(mods) == {"CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT"}
        ordered = [mods[k] for k in ("CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT")]
        assert ordered != sorted(ordered)  # ids are not in modality order
        all_ids += ordered
        dtypes = {mod: nib.load(str(next((root / "TRAINING" / case_name).glob(f"*.{mod}.*/*.nii")))).get_data_dtype()
                  for mod in mods}
        assert dtypes == {"CT": np.int32, "CT_CBF": np.uint16, "CT_CBV": np.uint16, "CT_MTT": np.float64,
                          "CT_Tmax": np.float64, "OT": np.uint8}
    assert len(set(all_ids)) == len(all_ids)  # unique across the dataset


def test_datalist_matches_every_modality_by_name_not_id(cohort):
    root, cases = cohort
    dl = build_datalist(root, folds=3, seed=0)
    assert dl["numTraining"] == len(cases) and not dl["excluded"]
    for item in dl["training"]:
        case = cases[item["case"]]
        for mod, key in KEY_OF.items():
            assert NAME_RE.match(Path(item[key]).parent.name).group(1) == mod
        data = {key: np.asarray(nib.load(str(root / item[key])).dataobj) for key in KEY_OF.values()}
        np.testing.assert_array_equal(data["ct"], case.image.astype(np.int32))
        np.testing.assert_array_equal(data["cbf"], case.extra["CBF"])
        np.testing.assert_array_equal(data["cbv"], case.extra["CBV"])
        np.testing.assert_array_equal(data["mtt"], case.extra["MTT"])
        np.testing.assert_array_equal(data["tmax"], case.extra["Tmax"])
        np.testing.assert_array_equal(data["label"], case.label)
        assert item["image"] == [item["cbf"], item["cbv"], item["mtt"], item["tmax"]]
        assert item["patient"] == case.meta["patient_id"] and item["slab"] == case.meta["slab"]


@pytest.mark.parametrize("folds, seed", [(2, 0), (3, 1), (5, 7)])
def test_slabs_of_one_patient_share_a_fold(cohort, folds, seed):
    root, _ = cohort
    dl = build_datalist(root, folds=folds, seed=seed)
    fold_of_patient = {}
    for item in dl["training"]:
        assert 0 <= item["fold"] < folds
        fold_of_patient.setdefault(item["patient"], set()).add(item["fold"])
    assert all(len(f) == 1 for f in fold_of_patient.values())
    two_slab = [p for p in fold_of_patient if sum(it["patient"] == p for it in dl["training"]) == 2]
    assert len(two_slab) == 3
    # 9 cases dealt largest patient first into the emptiest fold: sizes differ by at most 2
    sizes = np.bincount([it["fold"] for it in dl["training"]], minlength=folds)
    assert sizes.sum() == 9 and sizes.max() - sizes.min() <= 2


def test_missing_map_is_excluded_with_its_modality(cohort):
    root, _ = cohort
    shutil.rmtree(next((root / "TRAINING" / "case_3").glob("SMIR.Brain.XX.O.CT_MTT.*")))
    (next((root / "TRAINING" / "case_5").glob("SMIR.Brain.XX.O.OT.*")) / "extra").mkdir()
    shutil.rmtree(next((root / "TRAINING" / "case_6").glob("SMIR.Brain.XX.O.CT_CBF.*")))
    shutil.rmtree(next((root / "TRAINING" / "case_6").glob("SMIR.Brain.XX.O.OT.*")))
    dl = build_datalist(root, folds=2)
    excluded = {Path(e["path"]).name: e["reason"] for e in dl["excluded"]}
    assert set(excluded) == {"case_3", "case_6"}
    assert "CT_MTT" in excluded["case_3"] and "missing" in excluded["case_3"]
    assert "CT_CBF" in excluded["case_6"] and "OT" in excluded["case_6"]
    assert {it["case"] for it in dl["training"]} == {"case_1", "case_2", "case_4", "case_5", "case_7", "case_8", "case_9"}


def test_mismatched_grid_and_unreadable_file_are_excluded(cohort):
    root, _ = cohort
    cbv = next((root / "TRAINING" / "case_2").glob("*CT_CBV*/*.nii"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.uint16), np.eye(4)), str(cbv))
    tmax = next((root / "TRAINING" / "case_4").glob("*CT_Tmax*/*.nii"))
    tmax.write_bytes(b"not a nifti file")
    excluded = {Path(e["path"]).name: e["reason"] for e in build_datalist(root)["excluded"]}
    assert "CT_CBV" in excluded["case_2"] and "(16, 16, 3)" in excluded["case_2"]
    assert "CT_Tmax" in excluded["case_4"] and "unreadable" in excluded["case_4"]


def test_without_mapping_each_case_is_its_own_patient(cohort):
    root, _ = cohort
    (root / "patients.csv").unlink()
    dl = build_datalist(root, folds=3)
    assert dl["patient_grouping"].startswith("none")
    assert len({it["patient"] for it in dl["training"]}) == dl["numTraining"] == 9


def test_explicit_mapping_file(cohort, tmp_path):
    root, _ = cohort
    (root / "patients.csv").unlink()
    mapping = tmp_path / "my_patients.csv"
    mapping.write_text("case,patient\n1,P1\n2,P1\n3,P2\n4,P3\n5,P3\n6,P3\n7,P4\n8,P5\n9,P6\n")
    dl = build_datalist(root, folds=2, patients_csv=mapping)
    folds = {}
    for it in dl["training"]:
        folds.setdefault(it["patient"], set()).add(it["fold"])
    assert folds.keys() == {"P1", "P2", "P3", "P4", "P5", "P6"} and all(len(v) == 1 for v in folds.values())
    bad = tmp_path / "bad.csv"
    bad.write_text("id,subject\n1,P1\n")
    with pytest.raises(CTInputError, match="case"):
        build_datalist(root, patients_csv=bad)


def test_testing_split_and_optional_4dpwi(tmp_path):
    root = tmp_path / "isles"
    case = generate_ctp(3, **SMALL)
    write_case(case, root, split="TRAINING", case_number=1, pwi_frames=5)
    write_case(generate_ctp(4, **SMALL), root, split="TESTING", case_number=1)
    pwi = next((root / "TRAINING" / "case_1").glob("*CT_4DPWI*/*.nii"))
    img = nib.load(str(pwi))
    assert img.shape == (32, 32, 3, 5)
    series = np.asarray(img.dataobj)
    np.testing.assert_array_equal(series[..., 0], case.image.astype(np.int16))  # before the bolus
    assert not list((root / "TESTING" / "case_1").glob("*.OT.*"))
    dl = build_datalist(root, folds=None)
    assert dl["numTraining"] == 1 and dl["numTest"] == 1
    assert dl["training"][0]["pwi"].endswith(pwi.name) and "fold" not in dl["training"][0]
    assert "label" not in dl["testing"][0] and len(dl["testing"][0]["image"]) == 4


def test_refuses_to_overwrite_a_case(tmp_path):
    case = generate_ctp(3, **SMALL)
    write_case(case, tmp_path, case_number=1)
    with pytest.raises(FileExistsError):
        write_case(case, tmp_path, case_number=1)
    assert write_case(case, tmp_path).name == "case_2"  # next free number


@pytest.mark.parametrize("make", ["empty", "file", "random_folders"])
def test_not_an_isles_root_is_an_error(tmp_path, make):
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")
    else:
        root.mkdir()
        if make == "random_folders":
            (root / "images").mkdir()
            (root / "TRAINING").mkdir()
    with pytest.raises(CTInputError, match="ISLES 2018"):
        build_datalist(root)


def test_a_split_folder_itself_is_accepted(cohort):
    root, _ = cohort
    dl = build_datalist(root / "TRAINING", folds=2)
    assert dl["numTraining"] == 9 and dl["patient_grouping"].startswith("none")


@pytest.mark.parametrize("source", ["folder", "item"])
def test_stack_maps_channel_order(cohort, tmp_path, source):
    from monai.transforms import EnsureChannelFirst, LoadImage

    root, cases = cohort
    if source == "folder":
        out = stack_maps(root / "TRAINING" / "case_4")
        assert out.parent == root / "TRAINING" / "case_4"
    else:
        item = build_datalist(root)["training"][3]
        out = stack_maps(item, tmp_path / "stack.nii.gz", base_dir=root)
    img = nib.load(str(out))
    assert img.shape == (32, 32, 3, 4)
    data = np.asarray(img.dataobj)
    for c, name in enumerate(("CBF", "CBV", "MTT", "Tmax")):
        np.testing.assert_allclose(data[..., c], cases["case_4"].extra[name].astype(np.float32))
    np.testing.assert_allclose(img.affine, cases["case_4"].affine)
    loaded = EnsureChannelFirst()(LoadImage(image_only=True)(str(out)))
    assert tuple(loaded.shape) == (4, 32, 32, 3)
    # the stacked file does not disturb the datalist
    assert build_datalist(root)["numTraining"] == 9


def test_stack_maps_refuses_an_incomplete_case(cohort):
    root, _ = cohort
    shutil.rmtree(next((root / "TRAINING" / "case_1").glob("SMIR.Brain.XX.O.CT_Tmax.*")))
    with pytest.raises(CTInputError, match="CT_Tmax"):
        stack_maps(root / "TRAINING" / "case_1")


def test_write_cohort_records_patients(tmp_path):
    dirs = write_cohort(tmp_path, 3, seed=2, shape_xy=(32, 32))
    rows = (tmp_path / isles2018.PATIENTS_FILE).read_text().splitlines()
    assert rows[0] == "split,case,patient,slab" and len(rows) == 1 + len(dirs)
    assert [d.name for d in dirs] == [f"case_{i}" for i in range(1, len(dirs) + 1)]
