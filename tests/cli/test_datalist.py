"""`ctbundles datalist` on the ISLES 2018 layout."""

from __future__ import annotations

import json
import shutil

import pytest

from ctbundles.cli import main
from ctbundles.datasets.isles2018 import build_datalist, write_cohort


@pytest.fixture()
def isles_root(tmp_path):
    root = tmp_path / "isles"
    write_cohort(root, 4, seed=0, shape_xy=(32, 32), n_slices=2, n_slabs=None)
    return root


def test_writes_the_datalist_and_prints_folds_and_exclusions(isles_root, tmp_path, capsys):
    victim = next((isles_root / "TRAINING" / "case_2").glob("SMIR.Brain.XX.O.CT_MTT.*"))
    shutil.rmtree(victim)
    out = tmp_path / "lists" / "datalist.json"
    rc = main(["datalist", "isles2018", str(isles_root), "--out", str(out), "--folds", "2", "--seed", "3"])
    assert rc == 0
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(build_datalist(isles_root, folds=2, seed=3)))
    n_cases = len(list((isles_root / "TRAINING").iterdir()))
    assert written["numTraining"] == n_cases - 1
    printed = capsys.readouterr().out
    assert f"{n_cases - 1} training case(s)" in printed
    for k in (0, 1):
        n = sum(it["fold"] == k for it in written["training"])
        assert f"fold {k}: {n} case(s)" in printed
    assert "excluded TRAINING/case_2: missing CT_MTT" in printed
    assert not list(out.parent.glob(".tmp-*"))  # atomic write left no temporary file


def test_not_the_layout_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    rc = main(["datalist", "isles2018", str(tmp_path / "junk"), "--out", str(tmp_path / "d.json")])
    assert rc == 2
    assert "not an ISLES 2018 layout" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()
    assert main(["datalist", "isles2018", str(tmp_path / "absent"), "--out", str(tmp_path / "d.json")]) == 2


def test_no_usable_case_exits_1_and_lists_every_reason(isles_root, tmp_path, capsys):
    for case_dir in (isles_root / "TRAINING").iterdir():
        if case_dir.is_dir():
            shutil.rmtree(next(case_dir.glob("SMIR.Brain.XX.O.OT.*")))
    rc = main(["datalist", "isles2018", str(isles_root), "--out", str(tmp_path / "d.json")])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.out.count("missing OT") == len(list((isles_root / "TRAINING").iterdir()))
    assert "no usable case" in captured.err


def test_patients_option_and_bad_folds(isles_root, tmp_path, capsys):
    mapping = tmp_path / "map.csv"
    n = len(list((isles_root / "TRAINING").iterdir()))
    mapping.write_text("case,patient\n" + "".join(f"{i},ONE\n" for i in range(1, n + 1)))
    out = tmp_path / "d.json"
    assert main(["datalist", "isles2018", str(isles_root), "--out", str(out), "--patients", str(mapping)]) == 0
    assert {it["fold"] for it in json.loads(out.read_text())["training"]} == {0}
    assert main(["datalist", "isles2018", str(isles_root), "--out", str(out), "--folds", "0"]) == 2
    assert "--folds" in capsys.readouterr().err


def test_help_lists_the_layouts(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["datalist", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for layout in ("isles2018", "orcascore", "folder", "--folds", "--out"):
        assert layout in text


@pytest.mark.parametrize("layout, module", [("orcascore", "ctbundles.datasets.orcascore"),
                                             ("folder", "ctbundles.datasets.nifti_folder")])
def test_other_layouts_dispatch_to_their_builder(layout, module, tmp_path, monkeypatch, capsys):
    """The command hands ROOT, --folds and --seed to the layout's build_datalist (stubbed here:
    those builders live in their own modules and have their own tests)."""
    import sys
    import types

    calls = []

    def fake_build(root, folds=None, seed=0):
        calls.append((str(root), folds, seed))
        return {"training": [{"image": "a.nii.gz", "label": "b.nii.gz", "fold": 0}],
                "excluded": [{"path": "c.nii.gz", "reason": "no label named c"}]}

    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(build_datalist=fake_build))
    out = tmp_path / "d.json"
    assert main(["datalist", layout, str(tmp_path), "--out", str(out), "--folds", "4", "--seed", "9"]) == 0
    assert calls == [(str(tmp_path), 4, 9)]
    assert json.loads(out.read_text())["training"][0]["image"] == "a.nii.gz"
    assert "excluded c.nii.gz: no label named c" in capsys.readouterr().out


def _folder_cohort(root):
    import nibabel as nib
    import numpy as np

    for sub, name in (("imagesTr", "tr1"), ("labelsTr", "tr1"), ("imagesTs", "ts1")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        data = np.zeros((4, 4, 3), np.uint8) if sub == "labelsTr" else np.full((4, 4, 3), -1000, np.int16)
        nib.save(nib.Nifti1Image(data, np.eye(4)), root / sub / f"{name}.nii.gz")
    return root


def test_folder_layout_counts_its_test_cases_and_never_writes_over_a_listed_file(tmp_path, capsys):
    """Review of session 16: the folder layouts write "test", which the command used to ignore (0 testing cases);
    --out aimed at a file the datalist lists replaced that label with JSON."""
    root = _folder_cohort(tmp_path / "fl")
    assert main(["datalist", "folder", str(root), "--out", str(tmp_path / "dl.json"), "--folds", "1"]) == 0
    assert "1 training case(s), 1 testing case(s)" in capsys.readouterr().out
    label = root / "labelsTr" / "tr1.nii.gz"
    before = label.read_bytes()
    assert main(["datalist", "folder", str(root), "--out", str(label), "--folds", "1"]) == 2
    assert "over an input file" in capsys.readouterr().err and label.read_bytes() == before
