"""Bundle `cac_orcascore_cascade_ct_segmentation`: the shipped weights of all three stages.

`inference.json` loads `models/model_roi.pt`, `models/model.pt` and `models/model_fp.pt` as shipped
(CheckpointLoader, strict) and segments fresh synthetic cardiac cases whose seeds no training cohort
used; every stage's network passes `verify_net_in_out` and TorchScript export with its shipped weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run, verify_net_in_out

from conftest import BUNDLES_DIR

BUNDLE = BUNDLES_DIR / "cac_orcascore_cascade_ct_segmentation"
CONFIGS = BUNDLE / "configs"
MODELS = BUNDLE / "models"
META = str(CONFIGS / "metadata.json")
INFERENCE = str(CONFIGS / "inference.json")
# network id in inference.json -> (shipped file, output channels)
SHIPPED = {
    "roi_network_def": ("model_roi.pt", 2),
    "network_def": ("model.pt", 4),
    "fp_network_def": ("model_fp.pt", 2),
}
FRESH_SEEDS = (2026, 2027)  # cohort cases are drawn from master seeds 1 (training) and 2 (held-out)


def inference_parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.read_meta(META)
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


@pytest.mark.parametrize("net_id", list(SHIPPED))
def test_shipped_files_under_25_mb_and_load_strictly(net_id):
    name, channels = SHIPPED[net_id]
    path = MODELS / name
    assert path.stat().st_size < 25 * 1024 * 1024
    net = inference_parser().get_parsed_content(net_id)
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 64, 64)).shape == (1, channels, 64, 64)


def test_inference_with_shipped_weights_segments_fresh_cases(tmp_path):
    """The cascade as shipped (stages 1-2-3; stage 3 is on by default since 0.3.0, docs/README.md) on two unseen
    small cardiac cases: pooled orCaScore lesion F1 (3D 6-connected > 130 HU lesions, any artery, majority vote over
    all of a lesion's voxels) at least 0.75, and at least 0.85 when any labelled voxel decides (the looser vote the
    figures below were measured with). Measured 0.791 (17 TP, 1 FP, 8 FN; 2026-11-23, version 0.6.3's vote) and,
    with the looser vote, 0.894 with version 0.6.0 (21 TP, 1 FP, 4 FN; 2-core CPU, 2026-11-23); 0.818 with 0.5.0 (18 / 1 / 7;
    stage 1 on the unmatched scan, calcium_threshold 0.65); 0.70 with 0.4.0 (14 / 1 / 11, the same with 0.3.0;
    0.2.0: 0.42). Two cases are no measure of the issue's 0.8 (docs/README.md, Performance: the 48 held-out
    cases)."""
    from ctbundles.datasets import orcascore
    from ctbundles.metrics.orcascore_evaluation import lesion_detection, orcascore_lesions
    from ctbundles.synthetic.registry import generate
    from ctbundles.transforms.ct_io import load_ct, load_label

    root = tmp_path / "cohort"
    for i, seed in enumerate(FRESH_SEEDS):
        orcascore.write_case(generate("cardiac", seed, small=True), root, vendor=1, patient=i + 1)
    out = tmp_path / "out"
    torch.set_num_threads(1)
    run(run_id="run", config_file=INFERENCE, bundle_root=str(BUNDLE), dataset_dir=str(root / "Training" / "Images"),
        output_dir=str(out))
    lesions, loose = [], []
    for i in range(len(FRESH_SEEDS)):
        image = load_ct(root / "Training" / "Images" / f"TRV1P{i + 1}CTI.mhd")
        hu = image.numpy()
        ref = np.asarray(load_label(root / "Training" / "Reference" / f"TRV1P{i + 1}R.mhd", like=image)).astype(np.int64)
        ref[ref > 3] = 0
        seg = nib.load(str(out / f"TRV1P{i + 1}CTI_seg.nii.gz"))
        pred = np.asarray(seg.dataobj).astype(np.int64)
        assert pred.shape == hu.shape and set(np.unique(pred).tolist()) <= {0, 1, 2, 3}
        assert (hu[pred > 0] >= 130).all()
        spacing = [float(s) for s in image.meta["spacing"]]
        lesions.append(orcascore_lesions(hu, ref, pred, spacing))
        loose.append(orcascore_lesions(hu, ref, pred, spacing, count_unlabelled=False))
        report = json.loads((out / f"TRV1P{i + 1}CTI.json").read_text())
        assert report["agatston"] >= 0
    det, det_loose = lesion_detection(lesions)["all"], lesion_detection(loose)["all"]
    assert det["tp"] + det["fn"] == det_loose["tp"] + det_loose["fn"] == 25  # the generator's lesions of the two cases
    assert det["tp"] >= 16 and det["f1"] >= 0.75, det
    assert det_loose["tp"] >= 19 and det_loose["f1"] >= 0.85, det_loose


def test_opt_in_stage3_mode_from_inference_json_with_shipped_weights(tmp_path):
    """``--fp_views both --fp_whole_lesions True`` (docs/README.md, Deviations 14) reach the inferer from
    inference.json. On a fresh case with the shipped weights: whole lesions are the default's kept voxels grown
    through the 6-connected stage-2 foreground, so every 3D lesion is in or out as a whole, and nothing outside the
    default's lesions is added; the two views change which lesions stage 3 keeps."""
    from scipy import ndimage

    from ctbundles.datasets import orcascore
    from ctbundles.synthetic.registry import generate

    orcascore.write_case(generate("cardiac", FRESH_SEEDS[0], small=True), tmp_path, vendor=1, patient=1)
    torch.set_num_threads(1)
    masks = {}
    for views, whole in (("calcium_input", False), ("calcium_input", True), ("both", True)):
        parser = inference_parser(fp_views=views, fp_whole_lesions=whole)
        inferer = parser.get_parsed_content("inferer")
        assert (inferer.fp_views, inferer.fp_whole_lesions) == (views, whole)
        data = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "Training" / "Images" / "TRV1P1CTI.mhd")})
        stage2 = parser.get_parsed_content("network").eval()
        stage2.load_state_dict(torch.load(MODELS / "model.pt", map_location="cpu", weights_only=True))
        with torch.no_grad():  # the inferer puts the stage networks in eval mode, then stage2_labels reads its fg
            masks[views, whole] = inferer(data["image"][None], stage2).argmax(1)[0].numpy() > 0
            label, _, _, _ = inferer.stage2_labels(data["image"].as_tensor(), stage2)
    fg = label.numpy() > 0
    comp, n = ndimage.label(fg)
    default, whole, both = masks["calcium_input", False], masks["calcium_input", True], masks["both", True]
    assert default.sum() > 0 and (default <= whole).all() and whole.sum() > default.sum()
    assert np.array_equal(whole, np.isin(comp, np.unique(comp[default])) & fg)
    for m in (whole, both):  # every stage-2 lesion is kept or removed whole
        kept = np.unique(comp[m])
        assert np.array_equal(m, np.isin(comp, kept[kept > 0]))
    # measured (2-core CPU, 2026-11-23): 46 stage-2 lesions; whole lesions keep 26, the two views 22 of them
    kept_whole, kept_both = set(np.unique(comp[whole])), set(np.unique(comp[both]))
    assert kept_both != kept_whole and 0 < len(kept_both) < n and 0 < len(kept_whole) < n


@pytest.mark.slow  # about 1 minute per stage on a shared 2-core CPU
@pytest.mark.parametrize("net_id", list(SHIPPED))
def test_every_stage_verify_net_in_out_and_torchscript_export_with_shipped_weights(net_id, tmp_path):
    name, channels = SHIPPED[net_id]
    verify_net_in_out(net_id=net_id, meta_file=META, config_file=INFERENCE, n=2, bundle_root=str(BUNDLE),
                      **{"_meta_#network_data_format#outputs#pred#num_channels": channels})
    ckpt_export(net_id=net_id, filepath=str(tmp_path / "stage.ts"), ckpt_file=str(MODELS / name), meta_file=META,
                config_file=INFERENCE, bundle_root=str(BUNDLE))
    ts = torch.jit.load(str(tmp_path / "stage.ts"))
    net = inference_parser().get_parsed_content(net_id)
    net.load_state_dict(torch.load(MODELS / name, map_location="cpu", weights_only=True))
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net.eval()(x), rtol=1e-4, atol=1e-4)
