"""`ctbundles demo`: the main job on generated data, end to end through the written files."""

from __future__ import annotations

import csv
import json

import pytest

from ctbundles.cli import main


def test_demo_scores_every_kind_from_files_and_matches_truth(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--cases", "1", "--seed", "3", "--no-inference", "--small"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    kinds = {s["kind"]: s for s in summary["kinds"]}
    assert set(kinds) == {"cardiac", "chest", "head", "ctp"}
    for kind, s in kinds.items():
        truth_rows = {r["case_id"]: r for r in csv.DictReader(open(tmp_path / kind / "truth.csv"))}
        assert {row["case"] for row in s["read_back"]} == set(truth_rows)
        for row in s["read_back"]:
            assert row["agrees"]
            # the figure the demo measured from the files equals the generator's stored truth
            assert row[s["figure"]] == pytest.approx(float(truth_rows[row["case"]][s["figure"]]), rel=1e-6, abs=1e-9)
    out = capsys.readouterr().out
    assert "cardiac" in out and "summary written" in out


def test_demo_regenerates_its_own_cohort_and_refuses_foreign_folders(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--cases", "1", "--kinds", "head", "--no-inference", "--small"]) == 0
    first = json.loads((tmp_path / "summary.json").read_text())
    assert main(["demo", "--out", str(tmp_path), "--cases", "1", "--kinds", "head", "--no-inference", "--small"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["kinds"][0]["read_back"] == first["kinds"][0]["read_back"]

    foreign = tmp_path / "other"
    (foreign / "cardiac").mkdir(parents=True)
    (foreign / "cardiac" / "my_scan.nii.gz").write_bytes(b"not ours")
    assert main(["demo", "--out", str(foreign), "--kinds", "cardiac", "--no-inference", "--small"]) == 2
    assert (foreign / "cardiac" / "my_scan.nii.gz").read_bytes() == b"not ours"


def test_demo_rejects_unknown_kind(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--kinds", "cardiac,knee", "--small"]) == 2
    assert "knee" in capsys.readouterr().err


def test_demo_default_cohort_is_clinical_size(tmp_path):
    """Without --small the scans have the protocol's clinical grid (the resolution of the shipped weights)."""
    import SimpleITK as sitk

    assert main(["demo", "--out", str(tmp_path), "--cases", "1", "--kinds", "cardiac", "--no-inference"]) == 0
    (image,) = sorted((tmp_path / "cardiac" / "Training" / "Images").glob("*.mhd"))
    scan = sitk.ReadImage(str(image))
    assert scan.GetSize()[:2] == (512, 512)
    assert 0.4 <= scan.GetSpacing()[0] <= 0.41 and scan.GetSpacing()[2] == 3.0  # cardiac protocol: 0.4 mm pixels, 3 mm slices
