"""CalciumScoreHandler on a real ignite Engine over synthetic cases with known scores."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from ctbundles.handlers.calcium_score_handler import CalciumScoreHandler
from ctbundles.transforms.calcium_transforms import CalciumScored, ICACVolumed


def make_item(name: str, hu_value: float, n_pixels: int, label_value: int = 1, folder: str = "/data"):
    """A 1 x 1 x 3 mm grid with a 1 x n_pixels lesion of ``hu_value`` in slice 1."""
    hu = np.zeros((8, 8, 3), dtype=np.float32)
    lab = np.zeros((8, 8, 3), dtype=np.uint8)
    hu[2, 1 : 1 + n_pixels, 1] = hu_value
    lab[2, 1 : 1 + n_pixels, 1] = label_value
    lab[5, 5, 1] = label_value  # a label voxel below 130 HU: not counted
    meta = {"affine": torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0])), "spacing": [1.0, 1.0, 3.0], "filename_or_obj": f"{folder}/{name}.nii.gz"}
    return {"image": MetaTensor(torch.as_tensor(hu), meta=meta), "pred": MetaTensor(torch.as_tensor(lab), meta=dict(meta))}


def run_engine(batches, handler, scorer):
    def step(engine, batch):
        return [scorer(item) for item in batch]  # a decollated list of dicts, as MONAI evaluators give

    engine = Engine(step)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_one_json_per_case_and_one_csv_row_per_case(tmp_path):
    # Agatston by hand (1 mm^2 pixels, 3 mm increment): 150 HU x 3 px = 3; 250 x 4 = 8; 450 x 5 = 20.
    cases = [("case_a", 150.0, 3), ("case_b", 250.0, 4), ("case_c", 450.0, 5)]
    items = [make_item(*c) for c in cases]
    batches = [items[:2], items[2:]]
    handler = CalciumScoreHandler(tmp_path / "out")
    scorer = CalciumScored(artery_labels={"LAD": 1}, calibration_factor=0.8)
    run_engine(batches, handler, scorer)

    expected = {"case_a": 3.0, "case_b": 8.0, "case_c": 20.0}
    rows = read_rows(tmp_path / "out" / "scores.csv")
    assert [r["case"] for r in rows] == ["case_a", "case_b", "case_c"]
    for row in rows:
        report = json.loads((tmp_path / "out" / f"{row['case']}.json").read_text())
        assert report["agatston"] == pytest.approx(expected[row["case"]])
        assert float(row["agatston"]) == pytest.approx(expected[row["case"]])
        assert float(row["agatston_LAD"]) == pytest.approx(expected[row["case"]])
        assert report["parameters"]["calibration_factor"] == 0.8 and row["param_calibration_factor"] == "0.8"
        assert row["param_slice_increment_mm"] == "3.0" and row["param_connectivity"] == "8"
        assert "1 label voxels" in row["warnings"]
    # mass of case_b: 4 voxels x 3 mm^3 = 0.012 cm^3 x 250 HU x 0.8 = 2.4 mg
    assert float(rows[1]["mass_mg"]) == pytest.approx(2.4)
    assert open(tmp_path / "out" / "scores.csv").read().count("case,") == 1  # header once
    assert not list((tmp_path / "out").glob("*.tmp"))  # no temporary file left behind


def test_rerun_replaces_rows_and_repeated_names_get_suffixes(tmp_path):
    handler = CalciumScoreHandler(tmp_path, cohort_csv="cohort.csv")
    run_engine([[make_item("scan", 150.0, 2), make_item("scan", 450.0, 2, folder="/other")]], handler, CalciumScored())
    rows = read_rows(tmp_path / "cohort.csv")
    assert [(r["case"], float(r["agatston"])) for r in rows] == [("scan", 2.0), ("scan_2", 8.0)]
    # A second run (new handler) keeps the old rows and replaces the case it scores again.
    run_engine([[make_item("scan", 250.0, 2)]], CalciumScoreHandler(tmp_path, cohort_csv="cohort.csv"), CalciumScored())
    rows = read_rows(tmp_path / "cohort.csv")
    assert sorted((r["case"], float(r["agatston"])) for r in rows) == [("scan", 4.0), ("scan_2", 8.0)]


def test_icac_reports(tmp_path):
    # 4 voxels of 600 HU, voxel 3 mm^3: 12 mm^3, ln(13).
    handler = CalciumScoreHandler(tmp_path, report_key="icac_volume", cohort_csv="icac.csv")
    run_engine([[make_item("head_1", 600.0, 4)]], handler, ICACVolumed(label_names={"ICA_left": 1, "ICA_right": 2}))
    report = json.loads((tmp_path / "head_1.json").read_text())
    assert report["total_mm3"] == pytest.approx(12.0)
    row = read_rows(tmp_path / "icac.csv")[0]
    assert float(row["volume_mm3_ICA_left"]) == pytest.approx(12.0) and float(row["volume_mm3_ICA_right"]) == 0.0
    assert float(row["ln_total"]) == pytest.approx(np.log(13.0))
    assert row["param_threshold_hu"] == "130.0"


def test_never_writes_over_an_input(tmp_path):
    item = make_item("x", 300.0, 2, folder=str(tmp_path))
    source = tmp_path / "x.json"
    source.write_text("input")
    item["image"].meta["filename_or_obj"] = str(source)
    with pytest.raises(ValueError, match="over an input"):
        run_engine([[item]], CalciumScoreHandler(tmp_path), CalciumScored())
    assert source.read_text() == "input"
