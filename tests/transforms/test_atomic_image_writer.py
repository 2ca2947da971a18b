"""AtomicNibabelWriter: SaveImaged's segmentations appear whole or not at all (review of session 16)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage

from ctbundles.transforms.atomic_image_writer import AtomicNibabelWriter


def _image():
    affine = np.array([[-0.7, 0, 0, 10.0], [0, -0.7, 0, -5.0], [0, 0, 3.0, 2.0], [0, 0, 0, 1.0]])
    data = torch.arange(4 * 5 * 3, dtype=torch.float32).reshape(1, 4, 5, 3) % 4
    return MetaTensor(data, affine=torch.as_tensor(affine), meta={"filename_or_obj": "/scans/case_1.nii.gz"}), affine


def test_writes_the_same_file_as_monai_and_leaves_no_temporary(tmp_path):
    img, affine = _image()
    SaveImage(output_dir=tmp_path / "atomic", output_postfix="seg", output_dtype=np.uint8, resample=False,
              separate_folder=False, writer=AtomicNibabelWriter)(img)
    SaveImage(output_dir=tmp_path / "plain", output_postfix="seg", output_dtype=np.uint8, resample=False,
              separate_folder=False)(img)
    a, b = nib.load(tmp_path / "atomic" / "case_1_seg.nii.gz"), nib.load(tmp_path / "plain" / "case_1_seg.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, affine)
    assert np.array_equal(np.asarray(a.dataobj), img[0].numpy().astype(np.uint8)) and a.get_data_dtype() == np.uint8
    assert os.listdir(tmp_path / "atomic") == ["case_1_seg.nii.gz"]


def test_a_crash_while_writing_leaves_neither_a_truncated_file_nor_a_temporary(tmp_path, monkeypatch):
    img, _ = _image()
    old = tmp_path / "case_1_seg.nii.gz"
    old.write_bytes(b"the previous run's output")

    def crash(obj, filename):
        with open(filename, "wb") as fh:
            fh.write(b"\x1f\x8b half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(Exception, match="disk full"):
        SaveImage(output_dir=tmp_path, output_postfix="seg", resample=False, separate_folder=False,
                  writer=AtomicNibabelWriter)(img)
    assert old.read_bytes() == b"the previous run's output" and os.listdir(tmp_path) == ["case_1_seg.nii.gz"]
