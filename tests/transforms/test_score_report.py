"""Report helpers: atomic writes, case ids, flat CSV rows and the printed summary."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ctbundles.transforms.calcium_scoring import CalciumScoreParams, icac_volume, score_calcium
from ctbundles.transforms.score_report import (
    atomic_write_text,
    case_id,
    format_summary,
    report_row,
    write_csv_rows,
    write_json,
)


def small_report(**kwargs):
    hu = np.zeros((6, 6, 2), dtype=np.float32)
    lab = np.zeros((6, 6, 2), dtype=np.uint8)
    hu[1:3, 1:3, 0] = 300.0
    lab[1:3, 1:3, 0] = 2
    return score_calcium(hu, lab, (1.0, 1.0, 3.0), params=CalciumScoreParams(**kwargs))


@pytest.mark.parametrize(
    "source, expected",
    [
        ("/data/p01/ct.nii.gz", "ct"),
        ("/data/p01/CT.NII", "CT"),
        ("/orca/TRV1P1CTI.mhd", "TRV1P1CTI"),
        ("/dicom/patient_7/", "patient_7"),
        (None, "case"),
        ("", "case"),
    ],
)
def test_case_id(source, expected):
    assert case_id(source) == expected


def test_atomic_write_replaces_and_refuses_inputs(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]
    with pytest.raises(ValueError, match="over an input"):
        atomic_write_text(target, "three", inputs=[str(target)])
    assert target.read_text() == "two"


def test_report_row_flattens_scores_arteries_and_parameters(tmp_path):
    # 4 px x 1 mm^2 x weight 3 = 12
    report = small_report(artery_labels={"LAD": 1, "LCX": 2}, calibration_factor=0.5)
    row = report_row(report, "p01")
    assert row["case"] == "p01" and row["agatston"] == pytest.approx(12.0)
    assert row["agatston_LCX"] == pytest.approx(12.0) and row["agatston_LAD"] == 0.0
    assert row["cac_drs"] == "A1/N1" and row["param_connectivity"] == 8
    assert json.loads(row["param_artery_labels"]) == {"LAD": 1, "LCX": 2}
    path = write_csv_rows(tmp_path / "c.csv", [row, report_row(small_report(), "p02")])
    rows = list(csv.DictReader(open(path)))
    assert [r["case"] for r in rows] == ["p01", "p02"] and rows[1]["agatston_LAD"] == ""
    icac = icac_volume(np.full((2, 2, 2), 200.0), np.ones((2, 2, 2), np.uint8), (1.0, 1.0, 1.0))
    assert report_row(icac, "h1")["total_mm3"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="not a calcium-score report"):
        report_row({"x": 1}, "bad")


def test_summary_and_json(tmp_path):
    report = small_report()
    text = format_summary(report, title="case p01")
    assert text.splitlines()[0] == "case p01"
    assert "Agatston score   12.0" in text and "n/a (no calibration factor)" in text and "Risk category    11-100" in text
    path = write_json(tmp_path / "r.json", report)
    assert json.loads(path.read_text())["agatston"] == pytest.approx(12.0)
