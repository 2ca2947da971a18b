"""The whole cascade (Araújo et al., Sect. 3.2, Fig. 1) with hand-made stage networks of known behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ctbundles.networks.orcascore_cascade import OrcaScoreCascadeInferer, calcium_labels
from ctbundles.networks.orcascore_encoder_unet import OrcaScoreEncoderUNet
from ctbundles.networks.orcascore_heart_unet import OrcaScoreHeartUNet


class ThresholdNet(nn.Module):
    """Two-class logits: class 1 where the input exceeds ``t``."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 100 * (x - self.t)], dim=1)


def phantom():
    vol = torch.zeros(1, 1, 128, 128, 4)
    vol[0, 0, 40:80, 50:90, :] = 0.6  # heart on every slice
    vol[0, 0, 120, :, 1] = 1.0  # a one-pixel "rib" line: heart net says heart, opening removes it
    vol[0, 0, 60:62, 60:63, 2] = 1.0  # coronary calcium in the heart (6 px)
    vol[0, 0, 45:47, 85:87, 2] = 0.93  # aortic calcium in the heart ROI (4 px), a false positive
    vol[0, 0, 120, 10:14, 3] = 1.0  # bone outside the ROI (4 px)
    return vol


def test_cascade_stages_roi_calcium_and_false_positive_removal():
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.95))
    out = inferer(phantom(), ThresholdNet(0.9))
    assert out.shape == (1, 2, 128, 128, 4)
    assert inferer.last_roi_boxes == [[[40, 80], [50, 90]]]  # the rib line did not widen the box
    label = out.argmax(1)[0]
    expected = torch.zeros(128, 128, 4, dtype=torch.long)
    expected[60:62, 60:63, 2] = 1  # aortic FP removed by stage 3, bone outside the ROI never seen
    assert torch.equal(label, expected)
    # one-hot: probabilities of each voxel sum to one
    torch.testing.assert_close(out.sum(1), torch.ones(1, 128, 128, 4))


def test_cascade_without_stage3_keeps_aortic_false_positive():
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.95), use_fp_stage=False)
    label = inferer(phantom(), ThresholdNet(0.9)).argmax(1)[0]
    assert int(label.sum()) == 6 + 4
    assert int(label[45:47, 85:87, 2].sum()) == 4


def test_calcium_labels_threshold_on_summed_artery_probability():
    # 4 voxels, classes (background, LAD, LCX, RCA)
    probs = torch.tensor([[0.40, 0.30, 0.20, 0.10],   # argmax background; artery sum 0.6
                          [0.10, 0.20, 0.65, 0.05],   # LCX
                          [0.95, 0.02, 0.01, 0.02],   # background
                          [0.20, 0.40, 0.00, 0.40]]).T[None]  # tie LAD/RCA -> the first (LAD)
    assert calcium_labels(probs).tolist() == [[0, 2, 0, 1]]
    assert calcium_labels(probs, 0.5).tolist() == [[1, 2, 0, 1]]  # 0.6 > 0.5: calcium, most probable artery
    assert calcium_labels(probs, 0.85).tolist() == [[0, 2, 0, 0]]  # only 0.9 > 0.85
    assert calcium_labels(probs, 0.9).tolist() == [[0, 0, 0, 0]]  # strict
    with pytest.raises(ValueError):
        OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), calcium_threshold=1.0)


def test_cascade_calcium_threshold_moves_the_operating_point():
    # ThresholdNet(0.9) logits (0, 100 (x - 0.9)): the aortic voxels (0.93) have p(calcium) = sigmoid(3) = 0.953,
    # the coronary ones (1.0) sigmoid(10); a threshold of 0.99 keeps only the coronary calcium
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), use_fp_stage=False, calcium_threshold=0.99)
    label = inferer(phantom(), ThresholdNet(0.9)).argmax(1)[0]
    assert int(label.sum()) == 6 and int(label[60:62, 60:63, 2].sum()) == 6
    # stage 3 with ThresholdNet(0.9): its argmax keeps both; fp_threshold 0.99 removes the aortic voxels
    both = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.9))
    assert int(both(phantom(), ThresholdNet(0.9)).argmax(1)[0].sum()) == 6 + 4
    strict = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.9), fp_threshold=0.99)
    assert int(strict(phantom(), ThresholdNet(0.9)).argmax(1)[0].sum()) == 6


def test_calcium_input_transform_feeds_stages_2_and_3_only():
    """``calcium_input_transform``: stage 1 sees the input as given, stages 2-3 the transformed volume
    (inference.json: stage 1 unmatched, stages 2-3 histogram-matched). Halving the phantom puts the heart
    (0.6 -> 0.3) below stage 1's 0.5, so an ROI from the transformed volume would be the whole slice."""
    halve = lambda v: v * 0.5  # noqa: E731
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.48), calcium_input_transform=halve)
    label = inferer(phantom(), ThresholdNet(0.45)).argmax(1)[0]
    assert inferer.last_roi_boxes == [[[40, 80], [50, 90]]]  # stage 1 on the untransformed heart
    # stage 2 (> 0.45 on the halved volume): coronary 0.5 and aortic 0.465, not the heart (0.3); the bone
    # (0.5) lies outside the ROI; stage 3 (> 0.48 on the halved volume) removes the aortic voxels
    expected = torch.zeros(128, 128, 4, dtype=torch.long)
    expected[60:62, 60:63, 2] = 1
    assert torch.equal(label, expected)
    # the same networks without the transform: stage 2 marks the whole heart (0.6 > 0.45) on every slice
    plain = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), use_fp_stage=False)
    assert int(plain(phantom(), ThresholdNet(0.45)).argmax(1)[0].sum()) == 40 * 40 * 4


def test_fp_whole_lesions_keeps_or_removes_whole_3d_lesions():
    """``fp_whole_lesions``: stage 3 decides per 6-connected 3D lesion of the stage-2 foreground. A lesion over
    slices 1-2, bright (1.0) on slice 2 and faint (0.93) on slice 1: stage 3 (> 0.95) keeps only its bright
    part voxel by voxel, the whole lesion with the option. A faint voxel touching it only diagonally and the
    faint aortic calcium are separate lesions without a kept voxel: removed either way."""
    vol = phantom()
    vol[0, 0, 60:62, 60:63, 1] = 0.93  # the lesion's faint slice, under the bright part of slice 2
    vol[0, 0, 62, 63, 1] = 0.93  # touches (61, 62, 2) only diagonally: not 6-connected
    kwargs = dict(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.95))
    voxels = OrcaScoreCascadeInferer(**kwargs)(vol, ThresholdNet(0.9)).argmax(1)[0]
    whole = OrcaScoreCascadeInferer(**kwargs, fp_whole_lesions=True)(vol, ThresholdNet(0.9)).argmax(1)[0]
    expected = torch.zeros(128, 128, 4, dtype=torch.long)
    expected[60:62, 60:63, 2] = 1
    assert torch.equal(voxels, expected)
    expected[60:62, 60:63, 1] = 1
    assert torch.equal(whole, expected)
    # without any kept voxel nothing grows back
    none = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(1.5), fp_whole_lesions=True)
    assert int(none(vol, ThresholdNet(0.9)).argmax(1)[0].sum()) == 0


def test_fp_views_both_averages_stage3_over_calcium_input_and_scan():
    """``fp_views="both"``: stage 3's softmax is the mean over the volume stage 2 sees (here halved) and the
    inferer's input. Stage 3 = ThresholdNet(0.48), p = sigmoid(100 (x - 0.48)): the aortic calcium (0.93) has
    p = sigmoid(-1.5) = 0.18 halved and about 1 unhalved, mean 0.59; the coronary calcium 0.94."""
    halve = lambda v: v * 0.5  # noqa: E731
    kwargs = dict(roi_network=ThresholdNet(0.5), fp_network=ThresholdNet(0.48), calcium_input_transform=halve)
    stage2 = ThresholdNet(0.45)
    one = OrcaScoreCascadeInferer(**kwargs)(phantom(), stage2).argmax(1)[0]
    assert int(one.sum()) == 6  # the halved view alone removes the aortic calcium (0.18 < 0.5)
    both = OrcaScoreCascadeInferer(**kwargs, fp_views="both")(phantom(), stage2).argmax(1)[0]
    assert int(both.sum()) == 6 + 4 and int(both[45:47, 85:87, 2].sum()) == 4  # mean 0.59 > 0.5
    for t, n in ((0.58, 6 + 4), (0.6, 6), (0.93, 6), (0.95, 0)):  # the means bracket 0.59 and 0.94
        strict = OrcaScoreCascadeInferer(**kwargs, fp_views="both", fp_threshold=t)(phantom(), stage2).argmax(1)[0]
        assert int(strict.sum()) == n, t


def test_fp_views_both_without_calcium_input_transform_runs_stage3_once():
    """Without ``calcium_input_transform`` both views are the inferer's input: the same output as one view,
    from one stage-3 pass per window batch."""
    calls = []

    class Counting(ThresholdNet):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    outs = []
    for views in ("calcium_input", "both"):
        calls.clear()
        inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=Counting(0.95), fp_views=views)
        outs.append((inferer(phantom(), ThresholdNet(0.9)), list(calls)))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1] == [2]  # two windows, one batch


def test_fp_options_are_checked():
    with pytest.raises(ValueError, match="fp_views must be 'calcium_input' or 'both', got 'unmatched'"):
        OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_views="unmatched")
    with pytest.raises(TypeError, match="fp_whole_lesions must be true or false"):
        OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_whole_lesions="true")


def test_cascade_without_heart_uses_whole_slice():
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(5.0), fp_network=None)  # never says heart
    label = inferer(phantom(), ThresholdNet(0.9)).argmax(1)[0]
    assert inferer.last_roi_boxes == [[[0, 128], [0, 128]]]
    assert int(label.sum()) == 128 + 6 + 4 + 4  # rib line, coronary, aortic and bone


def test_roi_box_margin_lets_stage2_see_calcium_just_outside_the_heart_box():
    """Calcium 3 px outside the stage-1 box (the RCA on the heart's border): lost without a margin (the
    paper's crop), found with ``roi_box_margin`` 4; the margin is clipped at the slice edge."""
    vol = phantom()
    vol[0, 0, 83, 70, 1] = 1.0  # 3 px beyond the box's end row 80 (half-open), inside a 4 px margin
    without = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=None)
    assert int(without(vol, ThresholdNet(0.9)).argmax(1)[0, 83, 70, 1]) == 0
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=None, roi_box_margin=4)
    label = inferer(vol, ThresholdNet(0.9)).argmax(1)[0]
    assert inferer.last_roi_boxes == [[[36, 84], [46, 94]]]
    assert int(label[83, 70, 1]) == 1
    assert int(label[120, 10:14, 3].sum()) == 0  # bone far outside the widened box stays unseen
    edge = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=None, roi_box_margin=60)
    edge(vol, ThresholdNet(0.9))
    assert edge.last_roi_boxes == [[[0, 128], [0, 128]]]
    for bad in (-1, 2.5, "wide", None):
        with pytest.raises(ValueError, match="roi_box_margin must be a whole number"):
            OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), roi_box_margin=bad)


def test_cascade_runs_paper_networks_small():
    from monai.data import MetaTensor

    roi = OrcaScoreHeartUNet(features=(4, 8, 16, 32, 64, 4))
    calcium = OrcaScoreEncoderUNet(out_channels=4)
    fp = OrcaScoreEncoderUNet(backbone="efficientnet-b0")
    inferer = OrcaScoreCascadeInferer(roi, fp, min_roi_size=32)
    x = MetaTensor(torch.rand(1, 1, 64, 64, 2), meta={"filename_or_obj": "case.mhd"})
    out = inferer(x, calcium)
    assert out.shape == (1, 4, 64, 64, 2)
    assert not (roi.training or calcium.training or fp.training)  # batch norm in inference mode
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.mhd"


def test_cascade_rejects_non_volume():
    with pytest.raises(ValueError, match="B, 1, X, Y, Z"):
        OrcaScoreCascadeInferer(ThresholdNet(0.5))(torch.zeros(1, 1, 8, 8), ThresholdNet(0.5))


class ShapeRecorder(nn.Module):
    """Records the input sizes it sees; two-class logits with class 1 where the input exceeds 0.9."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return torch.cat([torch.zeros_like(x), 100 * (x - 0.9)], dim=1)


def test_cascade_pads_roi_to_encoder_multiple_and_crops_output_back():
    """A 40 x 45 heart box: stage 2 sees it zero-padded to 64 x 64; the output is cut back to the box."""
    vol = torch.zeros(1, 1, 128, 128, 2)
    vol[0, 0, 40:80, 50:95, :] = 0.6
    vol[0, 0, 41, 93, 1] = 1.0  # calcium at the box's far corner (row 1, column 43 of the crop)
    stage2 = ShapeRecorder()
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=None, opening_size=1)
    label = inferer(vol, stage2).argmax(1)[0]
    assert inferer.last_roi_boxes == [[[40, 80], [50, 95]]]
    assert set(stage2.sizes) == {(64, 64)}
    assert label.nonzero().tolist() == [[41, 93, 1]]
    # with divisible=1 the crop goes in as it is
    stage2 = ShapeRecorder()
    OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=None, opening_size=1, divisible=1)(vol, stage2)
    assert set(stage2.sizes) == {(40, 45)}


def test_cascade_stage2_sliding_window_of_training_patch_size():
    """roi_size: stage 2 sees only windows of the patch size it was trained on (here 32 x 32 over a 40 x 45 box)."""
    vol = torch.zeros(1, 1, 128, 128, 2)
    vol[0, 0, 40:80, 50:95, :] = 0.6
    vol[0, 0, 41, 93, 1] = 1.0
    vol[0, 0, 78, 51, 0] = 1.0
    stage2 = ShapeRecorder()
    inferer = OrcaScoreCascadeInferer(roi_network=ThresholdNet(0.5), fp_network=None, opening_size=1, roi_size=(32, 32))
    label = inferer(vol, stage2).argmax(1)[0]
    assert set(stage2.sizes) == {(32, 32)}
    assert label.nonzero().tolist() == [[41, 93, 1], [78, 51, 0]]


def test_load_stage_weights_loads_strictly_and_names_the_file(tmp_path):
    """Stages 1 and 3 get their weights where the config builds them (MONAI Label runs no handlers)."""
    import torch.nn as nn

    from ctbundles.errors import CTInputError
    from ctbundles.networks.orcascore_cascade import load_stage_weights

    source = nn.Conv2d(1, 2, 3)
    saved = tmp_path / "model_roi.pt"
    torch.save({"model": source.state_dict()}, saved)
    target = load_stage_weights(nn.Conv2d(1, 2, 3), str(saved), "cpu")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    bare = tmp_path / "bare.pt"
    torch.save(source.state_dict(), bare)
    assert torch.equal(load_stage_weights(nn.Conv2d(1, 2, 3), str(bare)).weight, source.weight)
    with pytest.raises(CTInputError, match="missing.pt: cascade stage weights not found"):
        load_stage_weights(nn.Conv2d(1, 2, 3), str(tmp_path / "missing.pt"))
    with pytest.raises(CTInputError, match="model_roi.pt: weights do not fit"):
        load_stage_weights(nn.Conv2d(1, 4, 3), str(saved))
    untouched = nn.Conv2d(1, 2, 3)
    before = untouched.weight.detach().clone()
    assert torch.equal(load_stage_weights(untouched, None).weight, before)


def test_shipped_inference_config_loads_stage_weights_without_handlers():
    """The shipped inference.json gives the inferer trained stage-1 weights with no handler run."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "cac_orcascore_cascade_ct_segmentation"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    shipped = torch.load(bundle / "models" / "model_roi.pt", map_location="cpu", weights_only=True)
    shipped = shipped.get("model", shipped)
    roi = parser.get_parsed_content("inferer").roi_network
    for name, tensor in roi.state_dict().items():
        assert torch.equal(tensor, shipped[name]), name
    assert not any("model_roi" in str(h.get("load_path", "")) for h in parser.get("handlers"))
