"""`ctbundles synth`: deterministic cohorts in the NIfTI and orCaScore layouts, truth files, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctbundles.cli import main
from ctbundles.commands.synth import case_seed


def _run(args):
    return main(["synth", *args])


def _rows(path: Path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_nifti_cohort_is_deterministic_with_truth(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _run(["cardiac", "--out", str(out), "--cases", "2", "--seed", "5", "--small", "--quiet"]) == 0
    for name in ("cardiac_000", "cardiac_001"):
        ia = nib.load(a / "imagesTr" / f"{name}.nii.gz")
        ib = nib.load(b / "imagesTr" / f"{name}.nii.gz")
        np.testing.assert_array_equal(ia.get_fdata(), ib.get_fdata())
        np.testing.assert_array_equal(nib.load(a / "labelsTr" / f"{name}.nii.gz").get_fdata(), nib.load(b / "labelsTr" / f"{name}.nii.gz").get_fdata())
        assert ia.shape == (128, 128, 40)
    assert not np.array_equal(nib.load(a / "imagesTr" / "cardiac_000.nii.gz").get_fdata(), nib.load(a / "imagesTr" / "cardiac_001.nii.gz").get_fdata())
    dl = json.loads((a / "datalist.json").read_text())
    assert [it["case_id"] for it in dl["training"]] == ["cardiac_000", "cardiac_001"] and dl["excluded"] == []
    assert dl["labels"] == {"0": "background", "1": "LM", "2": "LAD", "3": "LCX", "4": "RCA"}
    assert b"\r" not in (a / "truth.csv").read_bytes()  # plain \n line ends, as the project's other CSVs
    rows = _rows(a / "truth.csv")
    assert [r["case_id"] for r in rows] == ["cardiac_000", "cardiac_001"]
    assert rows == [dict(r, file=r["file"].replace(str(b), str(a))) for r in _rows(b / "truth.csv")]
    for r in rows:
        truth = json.loads((a / "truth" / f"{r['case_id']}.json").read_text())
        assert float(r["agatston"]) == pytest.approx(truth["truth"]["agatston"])
        assert float(r["LAD_agatston"]) == pytest.approx(truth["truth"]["per_artery"]["LAD"]["agatston"])
        assert int(r["seed"]) == truth["meta"]["seed"] == case_seed(5, int(r["index"]))


def test_case_seeds_do_not_depend_on_cohort_size():
    assert [case_seed(1, i) for i in range(3)] == [case_seed(1, i) for i in range(5)][:3]
    assert case_seed(1, 0) != case_seed(2, 0)


def test_orcascore_layout_with_shape_override(tmp_path, capsys):
    out = tmp_path / "orca"
    assert _run(["chest", "--out", str(out), "--cases", "5", "--seed", "1", "--layout", "orcascore", "--shape", "48", "40", "12"]) == 0
    err = capsys.readouterr().err
    assert "[5/5] chest_004" in err  # one progress line per case
    names = sorted(p.name for p in (out / "Training" / "Images").glob("*.mhd"))
    assert names == ["TRV1P1CTI.mhd", "TRV1P2CTI.mhd", "TRV2P1CTI.mhd", "TRV3P1CTI.mhd", "TRV4P1CTI.mhd"]
    dl = json.loads((out / "datalist.json").read_text())
    assert len(dl["training"]) == 5 and dl["folds"] == 4
    import SimpleITK as sitk

    assert sitk.ReadImage(str(out / dl["training"][0]["image"])).GetSize() == (48, 40, 12)
    assert len(_rows(out / "truth.csv")) == 5


def test_layout_kind_mismatch_exits_2(tmp_path, capsys):
    assert _run(["cardiac", "--out", str(tmp_path / "x"), "--cases", "1", "--layout", "isles2018"]) == 2
    assert "isles2018" in capsys.readouterr().err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--out", "--cases", "--seed", "--layout", "--shape", "--small"):
        assert opt in text


@pytest.mark.parametrize("kind,layout", [("head", "nifti"), ("ctp", "nifti"), ("ctp", "isles2018")])
def test_head_and_ctp_cohorts(tmp_path, kind, layout):
    pytest.importorskip(f"ctbundles.synthetic.{kind}", reason=f"the {kind} generator comes from branch synth_head")
    if layout == "isles2018":
        pytest.importorskip("ctbundles.datasets.isles2018", reason="the ISLES 2018 layout comes from branch synth_head")
    out = tmp_path / kind
    assert _run([kind, "--out", str(out), "--cases", "2", "--seed", "2", "--small", "--layout", layout, "--quiet"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    rows = _rows(out / "truth.csv")
    assert dl["excluded"] == [] and len(dl["training"]) == len(rows) >= 2
    key = "total_mm3" if kind == "head" else "lesion_volume_ml"
    assert all(float(r[key]) >= 0 for r in rows)
    if layout == "isles2018":
        assert (out / "TRAINING" / "case_1").is_dir()
