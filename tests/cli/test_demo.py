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


def _bundle_script(bundle: str, name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bundles" / bundle / "scripts" / name
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_scans_are_on_the_grid_the_shipped_weights_were_trained_on(tmp_path):
    """Without --small each kind's scans have its bundle's training grid (cardiac and chest written and read back)."""
    import SimpleITK as sitk

    from ctbundles.commands.demo import KINDS
    from ctbundles.synthetic.chest_cardiac import PROTOCOLS

    chest_grid = _bundle_script("cac_chest_cardiac_ct_segmentation", "make_synthetic_cohorts.py").GRIDS["chest"]
    assert (KINDS["chest"]["grid"]["shape"], KINDS["chest"]["grid"]["spacing"]) == chest_grid
    assert KINDS["cardiac"]["grid"] == {"small": True}  # the cascade's cohorts: ctbundles synth cardiac --small
    assert main(["demo", "--out", str(tmp_path), "--cases", "1", "--kinds", "cardiac,chest", "--no-inference"]) == 0
    (image,) = sorted((tmp_path / "cardiac" / "Training" / "Images").glob("*.mhd"))
    scan = sitk.ReadImage(str(image))
    small = PROTOCOLS["cardiac"]["small"]
    assert scan.GetSize() == small["shape"] and scan.GetSpacing() == pytest.approx(small["spacing"])
    (chest,) = sorted((tmp_path / "chest" / "imagesTr").glob("*.nii.gz"))
    scan = sitk.ReadImage(str(chest))
    assert scan.GetSize() == chest_grid[0] and scan.GetSpacing() == pytest.approx(chest_grid[1])
