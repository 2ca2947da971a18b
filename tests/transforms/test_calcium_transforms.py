"""MONAI transforms of the calcium scores: metadata handling, channels, key mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd

from ctbundles.transforms.calcium_scoring import CalciumScoreParams
from ctbundles.transforms.calcium_transforms import (
    CalciumScore,
    CalciumScored,
    ICACVolume,
    ICACVolumed,
    ThresholdMaskHU,
    ThresholdMaskHUd,
    geometry_from_meta,
)


def make_case(spacing=(0.5, 0.5, 3.0), increment=None, warnings=None):
    """A 2 x 2 pixel lesion of 250 HU in slice 1 and a label ring of 100 HU around it."""
    hu = np.full((10, 10, 4), 30.0, dtype=np.float32)
    lab = np.zeros((10, 10, 4), dtype=np.uint8)
    lab[2:6, 2:6, 1] = 1
    hu[2:6, 2:6, 1] = 100.0
    hu[3:5, 3:5, 1] = 250.0
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    meta = {"affine": torch.as_tensor(affine), "spacing": list(spacing), "filename_or_obj": "/data/case_007.nii.gz"}
    if increment is not None:
        meta["slice_increment_mm"] = increment
    if warnings is not None:
        meta["ct_warnings"] = warnings
    return MetaTensor(torch.as_tensor(hu), meta=meta), MetaTensor(torch.as_tensor(lab), meta=dict(meta))


def test_geometry_priority():
    img, _ = make_case(spacing=(0.5, 0.5, 1.5), increment=1.5)
    assert geometry_from_meta(img)[:2] == ([0.5, 0.5, 1.5], 1.5)
    assert geometry_from_meta(img, slice_increment_mm=3.0)[1] == 3.0
    no_spacing = MetaTensor(torch.zeros(2, 2, 2), meta={"affine": torch.diag(torch.tensor([0.7, 0.7, 2.0, 1.0]))})
    spacing, inc, affine = geometry_from_meta(no_spacing)
    assert spacing == pytest.approx([0.7, 0.7, 2.0]) and inc == pytest.approx(2.0) and affine.shape == (4, 4)
    with pytest.raises(ValueError, match="no spacing"):
        geometry_from_meta(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("strict, expected", [(False, [0, 1, 0, 2, 0]), (True, [0, 0, 0, 2, 0])])
def test_threshold_mask_hu(strict, expected):
    image = torch.tensor([129.0, 130.0, 131.0, 1000.0, -50.0]).reshape(1, 5, 1, 1)
    label = MetaTensor(torch.tensor([1, 1, 0, 2, 1], dtype=torch.uint8).reshape(1, 5, 1, 1), meta={"tag": "pred"})
    out = ThresholdMaskHU(strict=strict)(label, image)
    assert isinstance(out, MetaTensor) and out.meta["tag"] == "pred" and out.dtype == torch.uint8
    assert out.flatten().tolist() == expected


def test_threshold_mask_hu_numpy_and_channel_broadcast():
    image = np.array([100.0, 200.0]).reshape(1, 2, 1, 1)
    label = np.ones((2, 1, 1), dtype=bool)  # no channel: image channel is dropped
    out = ThresholdMaskHU()(label, image)
    assert isinstance(out, np.ndarray) and out.shape == (2, 1, 1) and out.ravel().tolist() == [False, True]


def test_threshold_mask_hud():
    img, lab = make_case()
    d = ThresholdMaskHUd(keys="pred")({"image": img, "pred": lab})
    assert int(d["pred"].sum()) == 4  # only the 2 x 2 lesion of the 4 x 4 label passes 130 HU


def test_calcium_score_reads_meta_and_matches_hand_value():
    # 4 pixels x 0.25 mm^2 = 1 mm^2, peak 250 -> weight 2; increment 1.5 mm -> factor 0.5: 1.0.
    img, lab = make_case(spacing=(0.5, 0.5, 1.5), increment=1.5, warnings=["slice thickness 3 mm"])
    report = CalciumScore()(img, lab)
    assert report["agatston"] == pytest.approx(1.0)
    assert report["volume_mm3"] == pytest.approx(4 * 0.25 * 1.5)
    assert report["parameters"]["slice_increment_mm"] == 1.5
    assert report["source_image"] == "/data/case_007.nii.gz"
    assert report["warnings"][0] == "input: slice thickness 3 mm"
    # World centroid from the affine: index (3.5, 3.5, 1) -> (-1.75, -1.75, 1.5).
    assert report["lesions"][0]["centroid_mm"] == pytest.approx([-1.75, -1.75, 1.5])
    assert CalciumScore(world_centroids=False)(img, lab)["lesions"][0]["centroid_mm"] == pytest.approx([1.75, 1.75, 1.5])


def test_calcium_score_overrides_and_params():
    img, lab = make_case()
    assert CalciumScore(slice_increment_mm=1.5)(img, lab)["agatston"] == pytest.approx(1.0)
    # 1 mm^2 is exactly the minimum; min_pixels=5 drops the 4-pixel lesion.
    assert CalciumScore(min_pixels=5)(img, lab)["agatston"] == 0.0
    assert CalciumScore(params=CalciumScoreParams(calibration_factor=0.8))(img, lab)["mass_mg"] == pytest.approx(
        0.8 * 4 * 0.75 * 250 / 1000
    )
    with pytest.raises(ValueError, match="not both"):
        CalciumScore(params=CalciumScoreParams(), connectivity=4)


def test_calcium_scored_with_channel_first_pipeline():
    img, lab = make_case()
    pipeline = Compose([EnsureChannelFirstd(keys=["image", "pred"], channel_dim="no_channel"), CalciumScored(image_key="image", label_key="pred", artery_labels={"LAD": 1})])
    d = pipeline({"image": img, "pred": lab})
    report = d["calcium_score"]
    assert report["agatston"] == pytest.approx(2.0)
    assert report["per_artery"]["LAD"]["agatston"] == pytest.approx(2.0)
    assert report["cac_drs"] == "A1/N1"
    assert d["image"] is not None and d["pred"] is not None


def test_one_hot_label_is_argmaxed():
    img, lab = make_case()
    one_hot = torch.stack([1 - lab.as_tensor(), torch.zeros_like(lab.as_tensor()), lab.as_tensor()])  # class 2
    report = CalciumScore(artery_labels={"LCX": 2})(img, one_hot)
    assert report["per_artery"]["LCX"]["agatston"] == pytest.approx(2.0)


def test_icac_volume_transforms():
    # Left (1): the 2 x 2 lesion = 4 voxels of 0.75 mm^3 = 3 mm^3; the 100 HU ring is not counted.
    img, lab = make_case()
    lab = lab.clone()
    lab[7:9, 7, 2] = 2
    img = img.clone()
    img[7:9, 7, 2] = 500.0
    report = ICACVolume(label_names={"ICA_left": 1, "ICA_right": 2})(img, lab)
    assert report["per_label"]["ICA_left"]["volume_mm3"] == pytest.approx(3.0)
    assert report["per_label"]["ICA_right"]["volume_mm3"] == pytest.approx(1.5)
    assert report["total_mm3"] == pytest.approx(4.5) and report["ln_total"] == pytest.approx(math.log(5.5))
    d = ICACVolumed(label_key="label", label_names={"ICA_left": 1, "ICA_right": 2})({"image": img, "label": lab})
    assert d["icac_volume"]["total_mm3"] == pytest.approx(4.5)
    assert d["icac_volume"]["source_image"] == "/data/case_007.nii.gz"


def test_missing_keys():
    img, _ = make_case()
    assert "calcium_score" not in CalciumScored(allow_missing_keys=True)({"image": img})
    with pytest.raises(KeyError):
        CalciumScored()({"image": img})


def test_scoring_errors_name_the_file_and_refuse_unscoreable_input():
    """Review of session 16: a label on another grid, NaN HU under the label, or slices stored along another array
    axis raise CTInputError (a ValueError) naming the image file, instead of a traceback without it or a silently
    wrong score."""
    from ctbundles.errors import CTInputError

    img, lab = make_case()
    with pytest.raises(CTInputError, match=r"^/data/case_007\.nii\.gz: label shape"):
        CalciumScore()(img, lab[:, :, :3])
    nan_img = img.clone()
    nan_img[3, 3, 1] = float("nan")
    with pytest.raises(CTInputError, match=r"case_007.*1 NaN or infinite HU"):
        CalciumScore()(nan_img, lab)
    with pytest.raises(CTInputError, match=r"case_007.*NaN or infinite HU"):
        ICACVolume()(nan_img, lab)
    reference = CalciumScore()(img, lab)["agatston"]
    # the same voxels transposed to (Z, X, Y) with an affine that says so: refused, not scored on the wrong planes
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 3.0, -0.5, -0.5, 1.0
    meta = {"affine": torch.as_tensor(affine), "filename_or_obj": "/data/case_007_sag.nii.gz"}
    t_img = MetaTensor(img.as_tensor().permute(2, 0, 1).contiguous(), meta=meta)
    t_lab = MetaTensor(lab.as_tensor().permute(2, 0, 1).contiguous(), meta=dict(meta))
    with pytest.raises(CTInputError, match=r"case_007_sag.*array axis 0, not axis 2"):
        CalciumScore()(t_img, t_lab)
    assert reference == pytest.approx(CalciumScore()(img, lab)["agatston"]) and reference > 0
