"""CTProtocolGuard(d): refuses contrast/not-HU scans, warns (or refuses on request) on thick slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai.data import MetaTensor

from ctbundles.errors import CTInputError
from ctbundles.transforms.ct_protocol_guard import CTProtocolGuard, CTProtocolGuardd


def ct(thickness_mm: float, blood_hu: float = 40.0, hu: bool = True) -> MetaTensor:
    a = np.full((64, 64, 20), -1000.0, np.float32)  # air
    a[8:56, 8:56] = 20.0  # soft tissue
    a[20:44, 20:44, 4:16] = blood_hu  # a 24 x 24 x 12 blood pool (of 2 mm voxels: ~55 mL)
    if not hu:
        a = a + 1024.0
    aff = np.diag([2.0, 2.0, thickness_mm, 1.0])
    return MetaTensor(torch.as_tensor(a), affine=torch.as_tensor(aff), meta={
        "filename_or_obj": "/scans/case.nii.gz", "slice_thickness_mm": thickness_mm,
        "slice_increment_mm": thickness_mm, "spacing": [2.0, 2.0, thickness_mm], "ct_warnings": []})


def test_plain_scan_passes_untouched():
    img = ct(1.0)
    out = CTProtocolGuard()(img)
    assert out is img and out.meta["ct_warnings"] == []


def test_thick_slices_warn_by_default_and_refuse_on_request():
    img = CTProtocolGuard()(ct(5.0))
    assert any("[thick_slices]" in w for w in img.meta["ct_warnings"])
    with pytest.raises(CTInputError, match=r"/scans/case.nii.gz.*thick_slices"):
        CTProtocolGuard(refuse=("thick_slices",))(ct(5.0))


def test_not_hu_refused():
    with pytest.raises(CTInputError, match="not_hu"):
        CTProtocolGuardd("image")({"image": ct(1.0, hu=False)})


def test_contrast_refused():
    a = np.full((80, 80, 40), -1000.0, np.float32)
    a[5:75, 5:75] = 20.0
    a[10:70, 10:70, 2:38] = 450.0  # ~ 60 x 60 x 36 voxels of 2 mm: a huge enhanced blood pool
    img = MetaTensor(torch.as_tensor(a), affine=torch.as_tensor(np.diag([2.0, 2.0, 2.0, 1.0])),
                     meta={"filename_or_obj": "cta.nii.gz", "spacing": [2.0, 2.0, 2.0], "slice_increment_mm": 2.0})
    with pytest.raises(CTInputError, match=r"cta.nii.gz.*contrast"):
        CTProtocolGuard()(img)
