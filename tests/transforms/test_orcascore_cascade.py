"""Pre/post-processing of the orCaScore cascade (Araújo et al., Sects. 3.2.1-3.2.3), hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctbundles.errors import CTInputError
from ctbundles.transforms.orcascore_cascade import (
    FalsePositiveCropsd,
    HeartROICropd,
    HeartROIPasted,
    HistogramMatch,
    HistogramMatchd,
    LesionSamplingWeightsd,
    PredictedCandidatesd,
    PredictedHeartMaskd,
    component_crop_boxes,
    crop_to_box,
    extract_crops,
    fold_to_patch_centres,
    heart_roi_box,
    lesion_sampling_weights,
    paste_box,
    paste_crops,
)


# ------------------------------------------------------------------ histogram matching
def test_histogram_match_maps_quantiles_onto_reference():
    # input: values 0..99 each once; reference: 1000 + 10 * (0..99) -> a monotone map v -> 1000 + 10 v
    img = np.arange(100, dtype=np.float32).reshape(10, 10, 1)
    ref = (1000 + 10 * np.arange(100, dtype=np.float32)).reshape(10, 10)
    out = HistogramMatch(ref)(img)
    np.testing.assert_allclose(out, 1000 + 10 * img, atol=1e-3)


def test_histogram_match_keeps_metatensor_meta_and_reads_npy(tmp_path):
    ref = np.linspace(-100, 300, 64, dtype=np.float32).reshape(8, 8)
    np.save(tmp_path / "ref.npy", ref)
    img = MetaTensor(torch.linspace(0, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3), meta={"filename_or_obj": "a.mhd"})
    out = HistogramMatchd("image", tmp_path / "ref.npy")({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.mhd"
    assert out.shape == img.shape
    assert float(out.min()) == pytest.approx(-100.0) and float(out.max()) == pytest.approx(300.0)
    # order preserved: matching is monotone
    flat = out.flatten().numpy()
    assert (np.diff(flat) >= 0).all()


def test_histogram_match_switched_off_returns_input():
    img = np.arange(6, dtype=np.float32)
    assert HistogramMatch(None)(img) is img


def test_histogram_reference_missing_file_names_it(tmp_path):
    with pytest.raises(CTInputError, match="nope.npy"):
        HistogramMatch(tmp_path / "nope.npy")


# ------------------------------------------------------------------ heart ROI
def test_roi_box_is_or_of_slices_then_bbox():
    m = np.zeros((40, 50, 3), bool)
    m[5:15, 10:20, 0] = True  # 10 x 10 square on slice 0
    m[12:30, 8:18, 2] = True  # 18 x 10 on slice 2
    assert heart_roi_box(m) == ((5, 30), (8, 20))


def test_roi_opening_removes_blobs_smaller_than_7x7_and_thin_lines():
    m = np.zeros((60, 60, 2), bool)
    m[20:40, 20:40, 0] = True  # heart, survives the opening
    m[2:8, 50:56, 1] = True  # 6 x 6 blob: removed
    m[50, 0:60, 1] = True  # 1-pixel line: removed
    assert heart_roi_box(m) == ((20, 40), (20, 40))
    # without the opening the blob and line decide the box
    assert heart_roi_box(m, opening_size=1) == ((2, 51), (0, 60))
    # a 7 x 7 blob survives (the structuring element fits exactly)
    m[2:9, 50:57, 1] = True
    assert heart_roi_box(m) == ((2, 40), (20, 57))


def test_roi_box_margin_clipped_and_empty():
    m = np.zeros((30, 30, 1), bool)
    m[0:10, 20:30, 0] = True
    assert heart_roi_box(m, margin=3) == ((0, 13), (17, 30))
    assert heart_roi_box(np.zeros((30, 30, 4))) is None
    assert heart_roi_box(np.pad(np.ones((5, 5)), 5)[..., None]) is None  # 5x5 is opened away


def test_roi_crop_and_paste_round_trip():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(1, 40, 30, 5)).astype(np.float32)
    mask = np.zeros((1, 40, 30, 5), np.uint8)
    mask[0, 10:25, 5:20, 1:4] = 1
    d = HeartROICropd(["image"], mask_key="mask")({"image": MetaTensor(torch.as_tensor(vol)), "mask": mask})
    assert d["image"].shape == (1, 15, 15, 5)
    assert d["roi_box"] == {"box": [[10, 25], [5, 20]], "size": [40, 30], "empty": False}
    back = HeartROIPasted(["image"])(d)["image"]
    assert back.shape == vol.shape
    expected = np.zeros_like(vol)
    expected[:, 10:25, 5:20] = vol[:, 10:25, 5:20]
    np.testing.assert_array_equal(np.asarray(back), expected)
    np.testing.assert_array_equal(paste_box(crop_to_box(vol[0], ((10, 25), (5, 20))), ((10, 25), (5, 20)), (40, 30, 5)), expected[0])


def test_roi_crop_min_size_and_empty_mask_fallback():
    vol = np.zeros((1, 100, 100, 2), np.float32)
    mask = np.zeros_like(vol)
    mask[0, 90:100, 45:55, 0] = 1  # 10 x 10 at the lower border
    d = HeartROICropd(["image"], mask_key="mask", min_size=32)({"image": vol, "mask": mask})
    assert d["roi_box"]["box"] == [[68, 100], [34, 66]]
    d = HeartROICropd(["image"], mask_key="mask")({"image": vol, "mask": np.zeros_like(vol)})
    assert d["roi_box"]["box"] == [[0, 100], [0, 100]] and d["roi_box"]["empty"]


# ------------------------------------------------------------------ false-positive crops
def test_crop_boxes_centred_and_shifted_inside_borders():
    m = np.zeros((512, 512), bool)
    m[200:204, 300:310] = True  # centre (202, 305) -> corner (202 - 48, 305 - 48)
    m[0:3, 0:3] = True  # corner of the image: window shifted to (0, 0)
    m[508:512, 250:252] = True  # lower border: x clipped to 512 - 96
    assert component_crop_boxes(m) == [(0, 0), (154, 257), (416, 203)]


def test_crop_boxes_tile_components_wider_than_window():
    m = np.zeros((300, 300), bool)
    m[10:12, 20:250] = True  # 230 pixels wide -> windows at 20, 116, 250 - 96 = 154
    assert component_crop_boxes(m) == [(0, 20), (0, 116), (0, 154)]


def test_crop_boxes_8_connectivity():
    m = np.zeros((200, 200), bool)
    m[50, 50] = m[51, 51] = True  # diagonal neighbours: one 8-connected component
    assert len(component_crop_boxes(m, connectivity=2)) == 1
    assert len(component_crop_boxes(m, connectivity=1)) == 2  # two 4-connected, windows differ by one pixel


def test_crop_and_paste_round_trip_returns_identical_slice_inside_windows():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(256, 200)).astype(np.float32)
    m = np.zeros((256, 200), bool)
    m[5:8, 190:200] = True
    m[120:130, 100:105] = True
    m[250:256, 0:4] = True
    corners = component_crop_boxes(m)
    crops = extract_crops(img, corners)
    assert crops.shape == (3, 96, 96)
    covered = np.zeros_like(m)
    for x, y in corners:
        covered[x : x + 96, y : y + 96] = True
    for reduce in ("max", "mean"):
        back = paste_crops(crops, corners, img.shape, reduce=reduce)
        np.testing.assert_array_equal(back[covered], img[covered])
        assert (back[~covered] == 0).all()


def test_crops_of_image_smaller_than_window_are_padded_and_pasted_back():
    img = np.arange(50 * 40, dtype=np.float32).reshape(50, 40)
    m = np.zeros((50, 40), bool)
    m[10, 10] = True
    corners = component_crop_boxes(m)
    assert corners == [(0, 0)]
    crops = extract_crops(img, corners, pad_value=-1)
    assert crops.shape == (1, 96, 96) and crops[0, 60, 60] == -1
    np.testing.assert_array_equal(paste_crops(crops, corners, img.shape), img)


def test_paste_crops_binary_overlap_is_or():
    a = np.zeros((1, 96, 96), np.float32)
    b = np.zeros((1, 96, 96), np.float32)
    a[0, 50, 50] = 1  # at (50, 50) in the slice
    # second window at (10, 10): its pixel (40, 40) is slice (50, 50), predicted 0 there
    out = paste_crops(np.concatenate([a, b]), [(0, 0), (10, 10)], (128, 128))
    assert out[50, 50] == 1 and out.sum() == 1


def test_false_positive_crops_dict_samples():
    img = np.random.default_rng(0).normal(size=(1, 128, 128, 3)).astype(np.float32)
    cand = np.zeros((1, 128, 128, 3), np.uint8)
    cand[0, 60:62, 60:62, 0] = 1
    cand[0, 10:12, 100:102, 2] = 1
    cand[0, 110:112, 10:12, 2] = 1
    label = cand.copy()
    label[0, 110:112, 10:12, 2] = 0  # this candidate is a false positive
    out = FalsePositiveCropsd(["image", "label"], candidate_key="cand")({"image": img, "label": label, "cand": cand, "id": 7})
    assert [(s["crop_slice"], s["crop_corner"]) for s in out] == [(0, [13, 13]), (2, [0, 32]), (2, [32, 0])]
    assert all(s["image"].shape == (1, 96, 96) and s["id"] == 7 for s in out)
    np.testing.assert_array_equal(out[1]["image"][0], img[0, 0:96, 32:128, 2])
    assert [int(s["label"].sum()) for s in out] == [4, 4, 0]
    assert len(FalsePositiveCropsd(["image"], candidate_key="cand", max_crops=2)({"image": img, "cand": cand})) == 2


class _BrightNet(torch.nn.Module):
    """Stand-in stage-2 network: class 1 where the input exceeds 0.5, else background (a known answer)."""

    def forward(self, x):
        fg = (x > 0.5).float()
        return torch.cat([1 - fg, fg, torch.zeros_like(fg), torch.zeros_like(fg)], dim=1)


@pytest.mark.parametrize("roi_size", [None, (4, 4)])
def test_predicted_candidates_are_prediction_or_label_above_130_hu(roi_size):
    # 8 x 8 x 2 volume; network input (image) and HU given separately
    image = np.zeros((1, 8, 8, 2), np.float32)
    hu = np.zeros((1, 8, 8, 2), np.float32)
    label = np.zeros((1, 8, 8, 2), np.float32)
    image[0, 1, 1, 0] = image[0, 2, 2, 0] = image[0, 6, 5, 1] = 0.9  # predicted voxels
    hu[0, 1, 1, 0], hu[0, 2, 2, 0], hu[0, 6, 5, 1] = 400.0, 100.0, 131.0  # (2, 2) is below 130 HU: dropped
    label[0, 4, 4, 1] = 1.0
    hu[0, 4, 4, 1] = 250.0  # reference calcium not predicted: added
    label[0, 7, 0, 0] = 2.0
    hu[0, 7, 0, 0] = 120.0  # reference rim below 130 HU: not a candidate
    hu[0, 0, 7, 1] = 900.0  # bright, neither predicted nor labelled: not a candidate
    t = PredictedCandidatesd("candidates", _BrightNet(), roi_size=roi_size, overlap=0.0)
    d = t({"image": MetaTensor(torch.as_tensor(image)), "image_hu": hu, "label": label})
    cand = d["candidates"]
    assert isinstance(cand, MetaTensor) and tuple(cand.shape) == (1, 8, 8, 2)
    expected = np.zeros((8, 8, 2), bool)
    expected[1, 1, 0] = expected[6, 5, 1] = expected[4, 4, 1] = True
    np.testing.assert_array_equal(cand[0].numpy() > 0, expected)
    # without the reference, only the prediction above 130 HU
    t.include_label = False
    only = t({"image": torch.as_tensor(image), "image_hu": hu, "label": label})["candidates"][0].numpy() > 0
    expected[4, 4, 1] = False
    np.testing.assert_array_equal(only, expected)


class _Above(torch.nn.Module):
    """Two-class logits: class 1 where the input exceeds ``t`` (stage 1 / stage 2 stand-in)."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 100 * (x - self.t)], dim=1)


def test_predicted_candidates_from_the_cascade_are_what_stage_3_gets_in_inference():
    """With ``cascade``: stage 1 on the cascade input, stage 2 on the transformed volume inside the ROI box,
    the foreground exactly as the inferer hands it to stage 3 (no 130 HU rule), plus reference calcium."""
    from ctbundles.networks.orcascore_cascade import OrcaScoreCascadeInferer

    vol = torch.zeros(1, 64, 64, 3)
    vol[0, 20:40, 20:44, :] = 0.6  # heart on every slice: stage 1 (> 0.5) -> ROI box [20, 40) x [20, 44)
    vol[0, 30:32, 30:33, 1] = 1.0  # coronary calcium in the ROI (6 px), 400 HU
    vol[0, 22:24, 40:42, 1] = 0.93  # a bright spot in the ROI (4 px), 100 HU: stage 2 marks it
    vol[0, 60, 5:9, 2] = 1.0  # bone outside the ROI (4 px): stage 2 never sees it
    hu = torch.zeros(1, 64, 64, 3)
    hu[0, 30:32, 30:33, 1] = 400.0
    hu[0, 22:24, 40:42, 1] = 100.0
    hu[0, 60, 5:9, 2] = 900.0
    hu[0, 35, 25, 0] = 250.0  # a reference lesion stage 2 misses (input 0.6): added as a candidate
    label = torch.zeros(1, 64, 64, 3)
    label[0, 35, 25, 0] = 1.0
    label[0, 30:32, 30:33, 1] = 1.0
    halve = lambda v: v * 0.5  # noqa: E731  (stages 2-3 see their own input, as histogram matching in inference.json)
    cascade = OrcaScoreCascadeInferer(roi_network=_Above(0.5), use_fp_stage=False, calcium_input_transform=halve)
    t = PredictedCandidatesd("candidates", _Above(0.45), cascade=cascade, cascade_input_key="image_cascade")
    d = t({"image": torch.zeros(1, 64, 64, 3), "image_cascade": vol, "image_hu": hu, "label": label})
    cand = d["candidates"][0].numpy() > 0
    expected = np.zeros((64, 64, 3), bool)
    expected[30:32, 30:33, 1] = True  # halved: 0.5 > 0.45
    expected[22:24, 40:42, 1] = True  # halved: 0.465 > 0.45, kept below 130 HU (inference's stage 3 sees it)
    expected[35, 25, 0] = True  # reference calcium > 130 HU
    np.testing.assert_array_equal(cand, expected)
    # the predicted part is the foreground the inferer passes to stage 3 (keep_mask) in inference
    seen = []
    cascade.fp_network, cascade.use_fp_stage = _Above(0.0), True
    cascade.keep_mask = lambda v, fg: seen.append(fg.numpy().copy()) or fg.numpy()
    cascade(vol[None], _Above(0.45))
    expected[35, 25, 0] = False
    np.testing.assert_array_equal(seen[0], expected)
    t.include_label = False
    only = t({"image": torch.zeros(1, 64, 64, 3), "image_cascade": vol, "image_hu": hu, "label": label})["candidates"][0].numpy() > 0
    np.testing.assert_array_equal(only, expected)
    with pytest.raises(ValueError, match="cascade_input_key"):
        PredictedCandidatesd("candidates", _Above(0.45), cascade=cascade)


def test_predicted_heart_mask_then_crop_gives_the_box_inference_crops():
    """PredictedHeartMaskd + HeartROICropd (margin 0): the training crop is the stage-1 box the inferer crops
    to, so calcium on the box edge sits on the crop edge; stage 1 runs in eval mode."""
    from ctbundles.networks.orcascore_cascade import OrcaScoreCascadeInferer

    vol = torch.zeros(1, 64, 64, 3)
    vol[0, 12:52, 14:50, :] = 0.6  # heart on every slice -> box [12, 52) x [14, 50), above min_roi_size
    vol[0, 51, 30, 1] = 1.0  # calcium on the heart's last row (the RCA on the border)
    roi = torch.nn.Sequential(torch.nn.BatchNorm2d(1), _Above(0.5))
    roi.train()  # batch statistics would change the masks: the transform must switch to eval
    cascade = OrcaScoreCascadeInferer(roi_network=roi, fp_network=None, opening_size=7)
    label = torch.zeros(1, 64, 64, 3)
    label[0, 51, 30, 1] = 3
    d = PredictedHeartMaskd("image_stage1", cascade)({"image_stage1": vol, "image": vol.clone(), "label": label})
    assert not roi.training and d["roi_mask"].shape == (1, 64, 64, 3)
    out = HeartROICropd(["image", "label"], mask_key="roi_mask", opening_size=7)(d)
    inferred = [[12, 52], [14, 50]]
    assert out["roi_box"]["box"] == inferred
    cascade(vol[None], _Above(2.0))
    assert cascade.last_roi_boxes == [inferred]
    assert out["image"].shape == (1, 40, 36, 3)
    assert out["label"][0, 39, 16, 1] == 3  # the last row of the crop
    with pytest.raises(ValueError, match="image_stage1.*1, X, Y, Z"):
        PredictedHeartMaskd("image_stage1", cascade)({"image_stage1": vol[0]})


# ------------------------------------------------------------------ lesion-balanced patch sampling
def _two_lesions():
    # 6 x 6 x 2: a 1-voxel LAD lesion and an 8-voxel RCA lesion (2 x 2 x 2), one bright unlabelled voxel
    label = np.zeros((6, 6, 2), np.int64)
    label[0, 0, 0] = 1
    label[3:5, 3:5, :] = 3
    bright = label > 0
    bright[5, 0, 1] = True
    return label, bright


def test_lesion_weights_give_each_lesion_its_class_weight():
    label, bright = _two_lesions()
    w = lesion_sampling_weights(label, bright, [0.0, 1.0, 1.0, 2.0], negative_fraction=0.2)
    # LAD lesion: mass 1 on 1 voxel; RCA lesion: mass 2 over 8 voxels; negatives: 0.2 / 0.8 * 3 = 0.75
    assert w[0, 0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(w[3:5, 3:5, :], 0.25)
    assert w[5, 0, 1] == pytest.approx(0.75)
    assert w.sum() == pytest.approx(3.75)
    assert w[label + bright == 0].sum() == 0.0
    # share of draws: LAD 1/3.75, RCA 2/3.75, negatives 0.2 (voxel-weighted sampling would give LAD 1/10)
    assert w[label == 1].sum() / w.sum() == pytest.approx(0.2667, abs=1e-4)


def test_lesion_weights_faint_lesion_counts_without_bright_and_fallbacks():
    label, bright = _two_lesions()
    bright[0, 0, 0] = False  # a lesion darker than the bright threshold is still a lesion
    w = lesion_sampling_weights(label, bright, [0, 1, 1, 1], negative_fraction=0.0)
    assert w[0, 0, 0] == pytest.approx(1.0) and w[5, 0, 1] == 0.0
    # no lesion: every bright voxel weight 1; nothing bright: every voxel weight 1
    np.testing.assert_array_equal(lesion_sampling_weights(np.zeros((3, 3)), np.eye(3, dtype=bool), [0, 1]), np.eye(3))
    np.testing.assert_array_equal(lesion_sampling_weights(np.zeros((2, 2)), np.zeros((2, 2), bool), [0, 1]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="class_weights"):
        lesion_sampling_weights(label, bright, [0, 1])
    with pytest.raises(ValueError, match="negative_fraction"):
        lesion_sampling_weights(label, bright, [0, 1, 1, 1], negative_fraction=1.0)


def test_fold_to_patch_centres_moves_border_weight_onto_drawable_centres():
    # axis of 10 with a patch of 4: RandWeightedCropd draws centres 2..7 (slice(2, 8)); axis of 3 <= 5: only 1
    w = np.zeros((10, 3))
    w[0, 0], w[5, 2], w[9, 1] = 1.0, 2.0, 4.0
    out = fold_to_patch_centres(w, (4, 5))
    expected = np.zeros((10, 3))
    expected[2, 1], expected[5, 1], expected[7, 1] = 1.0, 2.0, 4.0
    np.testing.assert_array_equal(out, expected)
    from monai.transforms.utils import weighted_patch_samples

    centres = weighted_patch_samples((4, 5), out, n_samples=200, r_state=np.random.RandomState(0))
    assert {tuple(int(v) for v in c) for c in centres} == {(2, 1), (5, 1), (7, 1)}


def test_lesion_weights_dict_with_rand_weighted_crop():
    from monai.transforms import Compose, DeleteItemsd, RandWeightedCropd

    label, bright = _two_lesions()
    image = np.where(bright, 0.9, 0.1).astype(np.float32)[None]
    data = {"image": MetaTensor(torch.as_tensor(image)), "label": MetaTensor(torch.as_tensor(label[None].astype(np.float32)))}
    t = LesionSamplingWeightsd("w", image_threshold=0.5, class_weights=[0, 1, 1, 2], negative_fraction=0.2, spatial_size=(6, 6, 1))
    w = t(data)["w"]
    assert isinstance(w, MetaTensor) and tuple(w.shape) == (1, 6, 6, 2)
    # a 6 x 6 patch fits only at (3, 3); every weight is on z = 0 or z = 1 of that column (3.75 in all)
    np.testing.assert_allclose(w[0, 3, 3].numpy().sum(), 3.75, rtol=1e-6)
    crop = Compose([t, RandWeightedCropd(["image", "label"], "w", (6, 6, 1), num_samples=3), DeleteItemsd("w")])
    crop.set_random_state(0)
    out = crop(data)
    assert len(out) == 3 and all("w" not in o and tuple(o["image"].shape) == (1, 6, 6, 1) for o in out)


# ------------------------------------------------------------------ histogram reference selection
def test_select_reference_is_slice_with_best_f1():
    from ctbundles.transforms.orcascore_cascade import select_histogram_reference, slice_f1

    heart = np.zeros((8, 8, 3), np.uint8)
    heart[2:6, 2:6, 0] = 1  # 16 px
    heart[2:6, 2:6, 1] = 1
    pred = np.zeros_like(heart)
    pred[2:6, 2:4, 0] = 1  # 8 px inside: F1 = 2*8 / (8 + 16) = 2/3
    pred[2:6, 2:6, 1] = 1  # exact: F1 = 1
    pred[0:2, 0:2, 2] = 1  # no heart on slice 2: not a candidate
    image_a = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    heart_b = np.zeros((8, 8, 2), np.uint8)
    heart_b[1:5, 1:5, 1] = 1
    pred_b = heart_b.copy()
    pred_b[5, 1:5, 1] = 1  # F1 = 32 / 36
    preds = {"a": pred, "b": pred_b}
    assert slice_f1(pred[:, :, 0], heart[:, :, 0]) == pytest.approx(2 / 3)
    best = select_histogram_reference(
        [("a", image_a, heart), ("b", np.zeros((8, 8, 2)), heart_b)], segment=lambda img: preds["a" if img.shape[2] == 3 else "b"]
    )
    assert (best["case"], best["slice"], best["f1"], best["n_slices"]) == ("a", 1, 1.0, 3)
    np.testing.assert_array_equal(best["reference"], image_a[:, :, 1])


def test_select_reference_without_heart_raises():
    from ctbundles.transforms.orcascore_cascade import select_histogram_reference

    with pytest.raises(CTInputError, match="no training slice has a heart mask"):
        select_histogram_reference([(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))], segment=lambda x: x)
