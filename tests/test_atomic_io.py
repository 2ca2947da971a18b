"""ctbundles.atomic_io: no half-written file after a crash, never over an input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ctbundles.atomic_io import atomic_write, atomic_write_json, atomic_write_text, split_suffix


def test_crash_inside_writer_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def test_refuses_to_write_over_an_input(tmp_path):
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(b"pixels")
    with pytest.raises(ValueError, match="over an input"):
        atomic_write_text(image, "report", inputs=[image])
    assert image.read_bytes() == b"pixels"


def test_json_with_numpy_values_and_file_mode(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "x.json", {"a": np.float32(1.5), "b": np.arange(3), "c": np.bool_(True)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": True}
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("name, expected", [("case.nii.gz", ("case", ".nii.gz")), ("A.MHD", ("A", ".MHD")), ("notes.txt", ("notes.txt", ""))])
def test_split_suffix(name, expected):
    assert split_suffix(name) == expected


def test_refuses_to_write_inside_an_input_folder(tmp_path):
    """A DICOM series is a folder: a report aimed at one of its slices, or anywhere under it, is refused."""
    series = tmp_path / "dicom"
    (series / "sub").mkdir(parents=True)
    (series / "IM0001.dcm").write_bytes(b"slice")
    for target in (series / "IM0001.dcm", series / "report.json", series / "sub" / "report.json"):
        with pytest.raises(ValueError, match="inside the input folder"):
            atomic_write_text(target, "report", inputs=[series])
    assert (series / "IM0001.dcm").read_bytes() == b"slice" and sorted(p.name for p in series.rglob("*")) == ["IM0001.dcm", "sub"]
    assert atomic_write_text(tmp_path / "report.json", "report", inputs=[series]).read_text() == "report"  # beside it: fine


def test_refuses_to_write_over_the_data_file_of_an_input_metaimage(tmp_path):
    header, raw = tmp_path / "scan.mhd", tmp_path / "scan.raw"
    header.write_text("ObjectType = Image\nNDims = 3\nElementDataFile = scan.raw\n")
    raw.write_bytes(b"voxels")
    with pytest.raises(ValueError, match="over an input"):
        atomic_write_text(raw, "report", inputs=[header])
    assert raw.read_bytes() == b"voxels"
