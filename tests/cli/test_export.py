"""`ctbundles export` on the command line: errors and the zoo checks (the export itself: tests/test_zoo_export.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from ctbundles.cli import main
from tests_support import BUNDLES_DIR

ICAC = "icac_ct_segmentation"


def test_export_without_model_pt_fails_naming_the_file(tmp_path, capsys):
    bundle = tmp_path / ICAC
    shutil.copytree(BUNDLES_DIR / ICAC, bundle)
    (bundle / "models" / "model.pt").unlink(missing_ok=True)
    assert main(["export", str(bundle), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ctbundles export: error:" in err and "models/model.pt: missing" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_export_needs_out_or_check_only(tmp_path, capsys):
    assert main(["export", str(BUNDLES_DIR / ICAC)]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_check_only_lists_failed_checks(tmp_path, capsys, zoo_schema):
    """The source bundle (ctbundles not vendored, no model.pt here) fails with named reasons."""
    bundle = tmp_path / ICAC
    shutil.copytree(BUNDLES_DIR / ICAC, bundle)
    (bundle / "models" / "model.pt").unlink(missing_ok=True)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    code = main(["export", "--check-only", str(bundle), "--schema", str(zoo_schema)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL [files] missing required file models/model.pt" in out
    assert "FAIL [changelog] version '9.9.9' is not a key of 'changelog'" in out
    assert "FAIL [self-contained] required_packages_version names ctbundles" in out
    assert "FAIL [self-contained] configs/inference.json names" in out


@pytest.mark.parametrize("argv", [["export", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "--onnx" in capsys.readouterr().out
