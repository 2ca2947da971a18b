"""Bundle `cac_orcascore_cascade_ct_segmentation`: configs, Model Zoo checks for every stage, tiny train and inference runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run, verify_net_in_out

from conftest import BUNDLES_DIR

BUNDLE = BUNDLES_DIR / "cac_orcascore_cascade_ct_segmentation"
CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
TRAIN = str(CONFIGS / "train.json")

# stage -> (config files, network id, output channels, FlexibleUNet backbone or None)
STAGES = {
    "roi": ([TRAIN, str(CONFIGS / "train_roi.json")], "network_def", 2, None),
    "calcium": ([TRAIN, str(CONFIGS / "train_calcium.json")], "network_def", 4, "efficientnet-b0"),
    "fp": ([TRAIN, str(CONFIGS / "train_fp.json")], "network_def", 2, "efficientnet-b0"),  # shipped (reduced) default
}
PAPER = str(CONFIGS / "paper_network.json")


def parser_for(files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files)
    parser.read_meta(META)
    parser.update(overrides)
    return parser


def test_paper_hyperparameters_per_stage():
    expected = {  # Araújo et al., Sect. 4.1: batch, lr, max epochs, early-stopping patience
        "roi": (2, 1e-4, 70, 7, "OrcaScoreDiceLoss"),
        "calcium": (4, 1e-4, 70, 5, "OrcaScoreFocalLoss"),
        "fp": (24, 1e-4, 50, 7, "OrcaScoreFocalLoss"),
    }
    for stage, (files, *_rest) in STAGES.items():
        p = parser_for(files)
        got = (p["batch_size"], p["learning_rate"], p["epochs"], p["patience"], p["loss"]["_target_"].rsplit(".", 1)[1])
        assert got == expected[stage], stage
        assert p["stage"] == stage
    # flips along both in-plane axes and rotations up to 45 degrees
    aug = parser_for(STAGES["calcium"][0])["augmentation"]
    assert [a.get("spatial_axis") for a in aug[:2]] == [0, 1]
    assert aug[2]["range_x"] == pytest.approx(np.pi / 4)


def test_shipped_widths_identical_in_training_and_inference_and_paper_overlay_restores_paper_widths():
    """Deviation 1: the shipped networks are reduced widths; train and inference configs agree, and
    paper_network.json restores Sects. 3.2.1-3.2.3 (64 ... 1024 filters, decoder 256 ... 16, EfficientNet-B5)."""
    inf = parser_for([str(CONFIGS / "inference.json")])
    roi, cal, fp = (parser_for(STAGES[s][0]) for s in ("roi", "calcium", "fp"))
    assert roi["roi_features"] == inf["roi_features"] == [8, 16, 32, 64, 128, 8]
    assert cal["decoder_channels"] == inf["decoder_channels"] == [32, 16, 16, 8, 8]
    assert fp.get_parsed_content("network_def").backbone == inf["fp_backbone"] == "efficientnet-b0"
    assert fp["fp_decoder_channels"] == inf["fp_decoder_channels"] == [32, 16, 16, 8, 8]
    paper_inf = parser_for([str(CONFIGS / "inference.json"), PAPER])
    paper_fp = parser_for(STAGES["fp"][0] + [PAPER])
    paper_roi = parser_for(STAGES["roi"][0] + [PAPER])
    assert paper_inf["roi_features"] == paper_roi["roi_features"] == [64, 128, 256, 512, 1024, 64]
    assert paper_inf["decoder_channels"] == parser_for(STAGES["calcium"][0] + [PAPER])["decoder_channels"] == [256, 128, 64, 32, 16]
    assert paper_inf["fp_backbone"] == paper_fp["backbone"].replace("@fp_backbone", paper_fp["fp_backbone"]) == "efficientnet-b5"
    assert paper_fp["fp_decoder_channels"] == [256, 128, 64, 32, 16]
    assert paper_roi["network_def"]["features"] == "@roi_features"
    # stage 2's input window: the synthetic recipe's 64 x 64 patches in the shipped inference, the paper's 256 restored
    assert inf["patch_size"] == 64 and inf["inferer"]["roi_size"] == ["@patch_size", "@patch_size"]
    assert paper_inf["patch_size"] == 256


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_network_from_config_scripts(stage):
    files, net_id, out_channels, backbone = STAGES[stage]
    overrides = {"backbone": "efficientnet-b0"} if stage == "fp" else {}  # B5 scripting: tests/networks (slow)
    net = parser_for(files, **overrides).get_parsed_content(net_id).eval()
    if backbone is not None:
        assert net.backbone == (overrides.get("backbone") or backbone)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        y = net(x)
        torch.testing.assert_close(torch.jit.script(net)(x), y)
    assert y.shape == (1, out_channels, 64, 64)


def test_verify_net_in_out_stage2_subprocess(tmp_path):
    """The Model Zoo's own check, as it runs it, on network_def of inference.json (stage 2)."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", META,
           "--config_file", str(CONFIGS / "inference.json"), "--n", "2"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified with no error" in res.stdout + res.stderr


@pytest.mark.parametrize("stage", ["roi", "fp"])
def test_verify_net_in_out_stages_1_and_3(stage):
    files, _, out_channels, _ = STAGES[stage]
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=files, n=3, backbone="efficientnet-b0",
                      **{"_meta_#network_data_format#outputs#pred#num_channels": out_channels})


def test_ckpt_export_torchscript(tmp_path):
    parser = parser_for([str(CONFIGS / "inference.json")])
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=META, config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE))
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    assert ts(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)


# ------------------------------------------------------------------ tiny synthetic cohort runs
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from ctbundles.datasets import nifti_folder, orcascore
    from ctbundles.synthetic.registry import generate

    root = tmp_path_factory.mktemp("orcascore")
    heart_items = []
    for i in range(2):
        case = generate("cardiac", i, small=True, shape=(64, 64, 6), spacing=(3.5, 3.5, 5.0), n_plaques=6)
        orcascore.write_case(case, root, vendor=1, patient=i + 1)
        paths = nifti_folder.write_case(case, root / "heart")
        heart_items.append({"image": str(paths["image"]), "label": str(paths["heart_mask"])})
    (root / "heart_datalist.json").write_text(json.dumps({"training": heart_items[:1], "validation": heart_items[1:]}))
    return root


def tiny_overrides(root: Path, bundle_root: Path) -> dict:
    dl = __import__("ctbundles.datasets.orcascore", fromlist=["build_datalist"]).build_datalist(root)["training"]
    return {
        "bundle_root": str(bundle_root), "dataset_dir": str(root), "epochs": 1, "num_workers": 0,
        "histogram_reference": "$None", "train_datalist": dl[:1], "val_datalist": dl[1:],
    }


@pytest.mark.slow  # about 1 minute on a shared 2-core CPU
def test_train_stage2_one_epoch_writes_checkpoint(cohort, tmp_path):
    run(run_id="run", config_file=TRAIN, logging_file=str(CONFIGS / "logging.conf"), patch_size=32, batch_size=2,
        **tiny_overrides(cohort, tmp_path))
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu")
    assert state["segmentation_head.0.weight"].shape[0] == 4


@pytest.mark.slow
@pytest.mark.parametrize("stage,extra", [
    ("roi", {"image_size": 32}),
    ("fp", {"crop_size": 32, "batch_size": 4, "backbone": "efficientnet-b0"}),
])
def test_train_stages_1_and_3_one_epoch(cohort, tmp_path, stage, extra):
    overrides = tiny_overrides(cohort, tmp_path)
    if stage == "roi":
        del overrides["train_datalist"], overrides["val_datalist"]
    run(run_id="run", config_file=STAGES[stage][0], **overrides, **extra)
    assert (tmp_path / "models" / ("model_roi.pt" if stage == "roi" else "model_fp.pt")).is_file()


def test_inference_cascade_writes_segmentation_on_input_grid_and_scores(cohort, tmp_path):
    parser = parser_for([str(CONFIGS / "inference.json")], fp_backbone="efficientnet-b0")
    models = tmp_path / "models"
    models.mkdir()
    for key, name in (("roi_network_def", "model_roi.pt"), ("network_def", "model.pt"), ("fp_network_def", "model_fp.pt")):
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content(key).state_dict(), models / name)
    out = tmp_path / "out"
    image = cohort / "Training" / "Images" / "TRV1P1CTI.mhd"
    single = tmp_path / "in"
    single.mkdir()
    for suffix in (".mhd", ".raw"):
        (single / f"TRV1P1CTI{suffix}").symlink_to(image.with_suffix(suffix))
    run(run_id="run", config_file=str(CONFIGS / "inference.json"), bundle_root=str(tmp_path), dataset_dir=str(single),
        output_dir=str(out), histogram_reference="$None", fp_backbone="efficientnet-b0")
    seg = nib.load(str(out / "TRV1P1CTI_seg.nii.gz"))
    assert seg.shape == (64, 64, 6)
    values = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert values <= {0, 1, 2, 3}
    report = json.loads((out / "TRV1P1CTI.json").read_text())
    for key in ("agatston", "volume_mm3", "per_artery", "risk_category", "cac_drs"):
        assert key in report
    assert (out / "scores.csv").read_text().startswith("case,")


def test_evaluate_overlay_builds_evaluator_with_checkpoint_loader(tmp_path):
    parser = parser_for([TRAIN, str(CONFIGS / "evaluate.json")], bundle_root=str(tmp_path), val_datalist=[], train_datalist=[],
                        histogram_reference=None)
    evaluator = parser.get_parsed_content("validate#evaluator")
    loaders = [h for h in parser.get_parsed_content("validate#handlers") if type(h).__name__ == "CheckpointLoader"]
    assert len(loaders) == 1 and loaders[0].load_path == os.path.join(str(tmp_path), "models", "model.pt")
    assert [r.replace("::", "#") for r in parser["run"]] == ["$@validate#evaluator.run()"]
    assert type(evaluator).__name__ == "SupervisedEvaluator"


def test_multi_gpu_overlay_wraps_network_and_keeps_early_stopping_on_all_ranks():
    parser = parser_for([TRAIN, str(CONFIGS / "multi_gpu_train.json")])
    assert parser["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser["train#dataloader#sampler"] == "@train#sampler"
    assert "@validate#early_stopping" in parser["validate#evaluator#val_handlers"].replace("::", "#")
    assert "$@validate#early_stopping.set_trainer(trainer=@train#trainer)" in [i.replace("::", "#") for i in parser["initialize"]]


def test_shipped_histogram_reference_is_the_default_and_loads():
    from ctbundles.transforms.orcascore_cascade import HistogramMatch

    for files in ([str(CONFIGS / "inference.json")], [TRAIN]):
        path = Path(parser_for(files, bundle_root=str(BUNDLE)).get_parsed_content("histogram_reference"))
        assert path == BUNDLE / "models" / "histogram_reference.npy" and path.is_file()
    record = json.loads((BUNDLE / "models" / "histogram_reference.json").read_text())
    assert record["f1"] > 0 and "provenance" in record
    matcher = HistogramMatch(BUNDLE / "models" / "histogram_reference.npy")
    ref = matcher.reference
    assert ref.ndim == 2 and ref.min() >= -1100 and ref.max() > 130  # a HU slice with some calcium-range values
    out = np.asarray(matcher(np.linspace(-1000, 1000, 1000, dtype=np.float32)))
    assert ref.min() <= out.min() < out.max() <= ref.max() and (np.diff(out) >= 0).all()  # monotone, in the reference range


def test_inference_stage1_sees_the_unmatched_scan_and_stages_2_3_the_matched_one():
    """Version 0.5.0 (docs/training_log.md, "Version 0.5.0"): stage 1 was trained without histogram matching, so
    ``inference.json`` gives it the scan only scaled from [-1000, 1500] HU to [0, 1]; ``calcium_input``
    (the inferer's ``calcium_input_transform``) undoes that scaling, matches the volume to the reference
    and scales again, which equals the matching-then-scaling that stages 2-3 were trained on
    (train.json's ``intensity``) for every voxel inside (-1000, 1500) HU."""
    from monai.transforms import Compose

    from ctbundles.transforms.orcascore_cascade import HistogramMatch

    p = parser_for([str(CONFIGS / "inference.json")], bundle_root=str(BUNDLE))
    targets = [t["_target_"].rsplit(".", 1)[-1] for t in p["preprocessing"]["transforms"]]
    assert targets == ["LoadCTd", "EnsureChannelFirstd", "CopyItemsd", "ScaleIntensityRanged", "EnsureTyped"]
    assert p["inferer"]["calcium_input_transform"] == "@calcium_input"
    calcium_input = p.get_parsed_content("calcium_input")
    rng = np.random.default_rng(0)
    hu = np.clip(rng.normal(40, 25, (1, 48, 48, 6)), -1200, 3000).astype(np.float32)
    hu[0, :6] = -1000.0 + rng.normal(0, 30, (6, 48, 6))  # air, partly below -1000 (clipped by the scaling)
    hu[0, 40:44, 10:20] = rng.uniform(200, 1400, (4, 10, 6))  # bone
    hu[0, 20, 20, 3] = 175.0  # a faint lesion
    hu = np.round(hu)  # integer HU, as CT stores them (rescaled values keep their order and ties)
    stage1 = Compose(p.get_parsed_content("preprocessing").transforms[3:4])({"image": hu})["image"]
    np.testing.assert_allclose(np.asarray(stage1), np.clip((hu + 1000) / 2500, 0, 1), atol=1e-6)
    train = parser_for([TRAIN], bundle_root=str(BUNDLE))
    trained_on = np.asarray(Compose(train.get_parsed_content("intensity"))({"image": hu})["image"])
    got = np.asarray(calcium_input(np.asarray(stage1)))
    inside = (hu > -1000) & (hu < 1500)
    np.testing.assert_allclose(got[inside], trained_on[inside], atol=1e-5)
    assert inside.sum() > 0.9 * hu.size and got.min() >= 0 and got.max() <= 1
    matched_175 = float(np.asarray(HistogramMatch(BUNDLE / "models" / "histogram_reference.npy")(hu))[0, 20, 20, 3])
    assert got[0, 20, 20, 3] == pytest.approx((matched_175 + 1000) / 2500, abs=1e-5)


def test_training_crops_pad_scans_smaller_than_the_patch():
    """train.json alone (as MONAI Label runs it, without overlays) pads a 128 x 128 scan to the
    256 x 256 training patch before the positive/negative crop instead of failing on it."""
    p = parser_for([str(CONFIGS / "train.json")])
    sampler = p.get_parsed_content("sampler")
    image = torch.rand(1, 128, 128, 4)
    label = torch.zeros(1, 128, 128, 4)
    label[0, 60:64, 60:64, 2] = 1
    from monai.transforms import Compose

    out = Compose(sampler)({"image": image, "label": label})
    assert len(out) == p.get_parsed_content("batch_size")
    for sample in out:
        assert tuple(sample["image"].shape) == (1, 256, 256)  # one axial slice, z squeezed
        assert tuple(sample["label"].shape) == (1, 256, 256)
    assert sum(float(s["label"].sum()) for s in out) > 0  # the positive crops keep the calcium


def test_synthetic_recipe_stage2_label_sampling_and_schedule(cohort):
    """train_synthetic.json (Deviations 12): the whole reference plaque is the label (no 130 HU rule), 4 of
    5 patches on calcium, 4 patches from each of 2 cases, Adam lr 1e-3 halved every 1000 iterations."""
    from monai.transforms import Compose

    from ctbundles.transforms.ct_io import load_ct, load_label

    p = parser_for([TRAIN, str(CONFIGS / "train_synthetic.json")], bundle_root=str(BUNDLE), dataset_dir=str(cohort))
    assert p.get_parsed_content("label_rule") == []
    item = p.get_parsed_content("datalist")[0]
    lab = Compose(p.get_parsed_content("load") + p.get_parsed_content("label_rule"))(dict(item))["label"][0].numpy()
    raw = np.asarray(load_label(item["label"], like=load_ct(item["image"])))
    np.testing.assert_array_equal(lab, np.where(raw == 4, 0, raw))  # the rim below 130 HU stays labelled
    crop = p.get_parsed_content("sampler")[0].cropper
    assert (tuple(crop.spatial_size), crop.num_samples) == ((64, 64, 1), 4) and crop.pos_ratio == pytest.approx(0.8)
    assert p.get_parsed_content("train#dataloader#batch_size") == 2
    sched = p.get_parsed_content("lr_scheduler")
    assert (sched.step_size, sched.gamma, sched.optimizer.param_groups[0]["lr"]) == (1000, 0.5, 1e-3)


def test_lesion_balanced_overlay_samples_every_lesion_and_keeps_the_schedule(cohort):
    """train_lesion_balanced.json (0.4.0 stage 2, Deviations 12): patch centres per reference lesion
    (RCA twice), bright unlabelled voxels 1 in 5, 64 x 64 patches, Adam lr 3e-4 halved every 1000
    iterations, no in-training pixel-F1 validation, a checkpoint every 10 epochs."""
    from monai.transforms import Compose
    from scipy import ndimage

    files = [TRAIN, str(CONFIGS / "train_synthetic.json"), str(CONFIGS / "train_lesion_balanced.json")]
    p = parser_for(files, bundle_root=str(BUNDLE), dataset_dir=str(cohort), histogram_reference="$None")
    weights_t, crop, *_ = p.get_parsed_content("sampler")
    assert weights_t.class_weights == [0.0, 1.0, 1.0, 2.0] and weights_t.negative_fraction == 0.2
    assert tuple(crop.cropper.spatial_size) == (64, 64, 1) and crop.cropper.num_samples == 4
    item = p.get_parsed_content("datalist")[0]
    d = Compose(p.get_parsed_content("deterministic_transforms"))(dict(item))
    w = weights_t(d)["sample_weight"][0].numpy()
    lab = np.rint(d["label"][0].numpy()).astype(int)
    ids, n = ndimage.label(lab > 0, ndimage.generate_binary_structure(3, 1))
    assert n > 0
    # every lesion's weight is its class weight (up to the move onto reachable centres), negatives 1/5
    expected_pos = sum([0.0, 1.0, 1.0, 2.0][np.bincount(lab[ids == i]).argmax()] for i in range(1, n + 1))
    assert w.sum() == pytest.approx(expected_pos / 0.8, rel=1e-5)
    patches = Compose(p.get_parsed_content("sampler"))(d)
    assert len(patches) == 4 and all(tuple(x["image"].shape) == (1, 64, 64) and "sample_weight" not in x for x in patches)
    sched = p.get_parsed_content("lr_scheduler")
    assert (sched.step_size, sched.gamma, sched.optimizer.param_groups[0]["lr"]) == (1000, 0.5, 3e-4)
    handlers = [type(h).__name__ for h in p.get_parsed_content("train#handlers")]
    assert handlers == ["LrScheduleHandler", "CheckpointSaver", "StatsHandler"]
    assert p.get_parsed_content("train#handlers")[1].save_interval == 10


def test_synthetic_recipe_stage3_windows_on_stage2_candidates_from_whole_slice(cohort, tmp_path):
    """train_fp_synthetic.json: candidates = the stage-2 network's predictions > 130 HU plus the reference
    calcium > 130 HU (paper Sect. 3.1), on the whole slice (no ROI crop); 96 x 96 windows as in inference."""
    from monai.transforms import Compose

    from ctbundles.transforms.ct_io import load_ct, load_label

    stage2 = parser_for([str(CONFIGS / "inference.json")]).get_parsed_content("network_def")
    torch.manual_seed(0)
    torch.save(stage2.state_dict(), tmp_path / "stage2.pt")
    files = [TRAIN, str(CONFIGS / "train_fp.json"), str(CONFIGS / "train_synthetic.json"), str(CONFIGS / "train_fp_synthetic.json")]
    p = parser_for(files, bundle_root=str(BUNDLE), dataset_dir=str(cohort), histogram_reference="$None",
                   init_checkpoint=str(tmp_path / "stage2.pt"))
    item = p.get_parsed_content("datalist")[0]
    d = Compose(p.get_parsed_content("deterministic_transforms"))(dict(item))
    image = load_ct(item["image"])
    hu = image.numpy()
    ref = np.asarray(load_label(item["label"], like=image))
    cand = d["candidates"][0].numpy() > 0
    assert d["image"].shape[1:] == hu.shape and "image_hu" not in d  # whole slices, HU copy dropped
    assert (hu[cand] > 130).all()
    assert cand[(ref > 0) & (ref < 4) & (hu > 130)].all()
    windows = Compose(p.get_parsed_content("sampler"))(d)
    assert 1 <= len(windows) <= p["batch_size"] and windows[0]["image"].shape == (1, 96, 96)


def _bundle_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BUNDLE / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_false_positive_kinds_reads_generator_centres_as_lps():
    """The generator's hard negatives are in LPS mm; the NIfTI affine is RAS (x and y negated). Grid of
    1 mm voxels, voxel (0, 0, 0) at LPS (2, 3, 0): RAS affine diag(-1, -1, 1), translation (-2, -3, 0).
    A valve calcification centred on voxel (6, 7, 1) has LPS centre (8, 10, 1)."""
    fpk = _bundle_script("evaluate_stage2").false_positive_kinds
    affine = np.array([[-1.0, 0, 0, -2.0], [0, -1.0, 0, -3.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    hu = np.zeros((10, 10, 3), np.float32)
    ref = np.zeros((10, 10, 3), np.int64)
    pred = np.zeros((10, 10, 3), np.int64)
    hu[6, 7, 1] = hu[1, 1, 1] = 500.0
    pred[6, 7, 1] = pred[1, 1, 1] = 1  # two one-voxel false positives: on the valve calcification and far from it
    negatives = [{"kind": "aortic_valve", "center_mm": [8.0, 10.0, 1.0], "size_mm": [1.0, 1.0, 1.0]}]
    assert fpk(hu, ref, pred, negatives, affine, (1.0, 1.0, 1.0)) == ["other", "aortic_valve"]  # component order (x first)


def test_fp_cascade_candidates_config_matches_inference():
    """train_fp_cascade.json builds stage 3's training candidates with inference.json's stages 1-2: same
    calcium_threshold, stage-2 window, stage-1 network and weights, and the same histogram matching."""
    files = [TRAIN] + [str(CONFIGS / f"{n}.json") for n in ("train_fp", "train_synthetic", "train_fp_synthetic", "train_fp_cascade")]
    train = parser_for(files, bundle_root=str(BUNDLE))
    infer = parser_for([str(CONFIGS / "inference.json")], bundle_root=str(BUNDLE))
    cascade = train.get_parsed_content("candidate_cascade")
    assert cascade.calcium_threshold == infer["calcium_threshold"] == 0.65
    assert list(cascade.roi_size) == [infer["patch_size"]] * 2 == [64, 64]
    assert cascade.use_fp_stage is False and cascade.opening_size == infer["inferer"]["opening_size"]
    assert train["candidate_calcium_input"] == infer["calcium_input"]
    assert train["roi_features"] == infer["roi_features"]
    assert train.get_parsed_content("roi_weights") == infer.get_parsed_content("roi_weights")
    # stage 2 of the candidates = the shipped stage 2; stage 3 starts from the shipped stage 3
    assert train.get_parsed_content("candidate_checkpoint") == os.path.join(str(BUNDLE), "models", "model.pt")
    assert train.get_parsed_content("init_checkpoint") == os.path.join(str(BUNDLE), "models", "model_fp.pt")
    t = train.get_parsed_content("fp_candidates")[0]
    assert t.cascade is not None and t.cascade_input_key == "image_cascade"


def test_heart_box_overlay_trains_stage2_on_the_crop_inference_makes(tmp_path):
    """train_heart_box.json: each training case is cropped to the box of inference.json's stage 1 (the shipped
    model_roi.pt on the scaled unmatched scan, 7 x 7 opening, no margin), starting from the shipped stage 2."""
    from monai.transforms import Compose

    from ctbundles.datasets import orcascore
    from ctbundles.synthetic.registry import generate
    from ctbundles.transforms.orcascore_cascade import heart_roi_box

    cohort = tmp_path / "orcascore"  # one case of the shipped weights' grid (128 x 128 x 40, 1.2 mm)
    orcascore.write_case(generate("cardiac", 7, small=True), cohort, vendor=1, patient=1)

    files = [TRAIN] + [str(CONFIGS / f"{n}.json") for n in ("train_synthetic", "train_lesion_balanced", "train_heart_box")]
    train = parser_for(files, bundle_root=str(BUNDLE), dataset_dir=str(cohort))
    infer = parser_for([str(CONFIGS / "inference.json")], bundle_root=str(BUNDLE))
    assert train["roi_features"] == infer["roi_features"]
    assert train.get_parsed_content("roi_weights") == infer.get_parsed_content("roi_weights")
    assert train.get_parsed_content("init_checkpoint") == os.path.join(str(BUNDLE), "models", "model.pt")
    item = train.get_parsed_content("datalist")[0]
    d = Compose(train.get_parsed_content("deterministic_transforms"))(dict(item))
    assert not {"image_stage1", "roi_mask", "roi_box"} & set(d)
    inferer = infer.get_parsed_content("inferer")
    inferer.roi_network.eval()
    with torch.no_grad():
        masks = inferer.heart_masks(infer.get_parsed_content("preprocessing")({"image": item["image"]})["image"].as_tensor())
    (x0, x1), (y0, y1) = heart_roi_box(masks, infer["inferer"]["opening_size"])
    assert 64 < x1 - x0 < 128 and 64 < y1 - y0 < 128  # a heart box, not the whole slice nor widened
    assert tuple(d["image"].shape[1:3]) == tuple(d["label"].shape[1:3]) == (x1 - x0, y1 - y0)
    whole = Compose(train.get_parsed_content("load"))(dict(item))["label"]
    assert int((whole > 0).sum()) > 0
    assert torch.equal(torch.as_tensor(d["label"]), torch.as_tensor(whole)[:, x0:x1, y0:y1])


def test_pool_cascade_results_script_pools_cohorts_and_names_a_wrong_file(tmp_path):
    """scripts/pool_cascade_results.py: two evaluate_cascade.py outputs -> one pooled result (counts summed, ICC
    over all cases); a file that is not such an output is refused by name."""
    script = _bundle_script("pool_cascade_results")

    def result(tp, fp, fn, rows):
        entry = {"tp": tp, "fp": fp, "fn": fn, "tp_mm3": 10.0 * tp, "fp_mm3": 10.0 * fp, "fn_mm3": 10.0 * fn}
        stage = {"lesions": {"all": entry}, "pixels_above_130hu": {"tp": 3 * tp, "fp": 3 * fp, "fn": 3 * fn},
                 "cases": [dict(zip(("agatston_reference", "agatston_predicted", "volume_reference", "volume_predicted"), r)) for r in rows]}
        return {"stage1": {"heart_dice": 0.9}, "stages_1_2": stage, "stages_1_2_3": stage}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result(3, 1, 2, [(0, 0, 0, 0), (50, 60, 40, 45)])))
    b.write_text(json.dumps(result(5, 0, 1, [(500, 300, 300, 250)])))
    out = tmp_path / "pooled.json"
    assert script.main([str(a), str(b), "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())["stages_1_2_3"]
    assert (pooled["lesions"]["all"]["tp"], pooled["lesions"]["all"]["fp"], pooled["lesions"]["all"]["fn"]) == (8, 1, 3)
    assert pooled["lesion_f1"] == pytest.approx(16 / 20)
    assert pooled["pixels_above_130hu"]["precision"] == pytest.approx(24 / 27)
    assert pooled["risk_accuracy"] == pytest.approx(2 / 3) and len(pooled["cases"]) == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stages_1_2": {}}))
    with pytest.raises(SystemExit, match="bad.json: not an evaluate_cascade.py result"):
        script.main([str(a), str(bad), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_evaluate_cascade_stage3_audit_reads_both_runs_segmentations(tmp_path):
    """scripts/evaluate_cascade.py's stage-3 audit: the stage 1-2 and stage 1-2-3 segmentations of a case are
    paired with its scan and reference (orCaScore label 4 dropped); the summary counts each lesion once."""
    import SimpleITK as sitk

    script = _bundle_script("evaluate_cascade")
    hu = np.full((2, 16, 16), -100, np.int16)  # SimpleITK order (z, y, x)
    ref, before = np.zeros(hu.shape, np.uint8), np.zeros(hu.shape, np.uint8)
    hu[0, 2, 2:4] = 400; ref[0, 2, 2:4] = 1; before[0, 2, 2:4] = 1  # LAD: found, kept
    hu[1, 8, 8] = 250; ref[1, 8, 8] = 3; before[1, 8, 8] = 3  # RCA: found, removed by stage 3
    hu[1, 12, 3] = 900; before[1, 12, 3] = 2  # false LCX: removed
    hu[0, 14, 14] = 300; ref[0, 14, 14] = 4  # label 4 (artery not determined): not a reference lesion
    after = before.copy()
    after[1, 8, 8] = after[1, 12, 3] = 0

    def write(array, path):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.5, 0.5, 3.0))
        sitk.WriteImage(img, str(path))

    write(hu, tmp_path / "C1CTI.mhd")
    write(ref, tmp_path / "C1R.mhd")
    for stage, seg in (("stages_1_2", before), ("stages_1_2_3", after)):
        (tmp_path / stage).mkdir()
        write(seg, tmp_path / stage / "C1CTI_seg.nii.gz")
    item = {"image": str(tmp_path / "C1CTI.mhd"), "label": str(tmp_path / "C1R.mhd")}
    summary = script.stage3_audit([item], tmp_path)
    assert {k: summary[k]["n"] for k in ("true_kept", "true_removed", "false_kept", "false_removed", "missed")} == {
        "true_kept": 1, "true_removed": 1, "false_kept": 0, "false_removed": 1, "missed": 0}
    assert summary["true_kept"]["median_volume_mm3"] == pytest.approx(1.5)  # 2 voxels of 0.75 mm^3
    assert summary["true_removed"]["median_peak_hu"] == 250.0 and summary["false_removed"]["median_peak_hu"] == 900.0
    assert summary["true_removed_by_artery"] == {"LAD": 0, "LCX": 0, "RCA": 1}


def test_evaluate_cascade_overrides_read_as_monai_bundle_run_reads_them():
    """``--override KEY VALUE`` goes both to the script's own parse of inference.json (stage 1's Dice) and to
    the ``monai.bundle run`` calls (python-fire): both must read one value, e.g. ``True`` for
    ``fp_whole_lesions``, which the inferer accepts only as a bool."""
    import fire.parser

    script = _bundle_script("evaluate_cascade")
    for text, value in (("True", True), ("0.5", 0.5), ("[64, 64]", [64, 64]), ("both", "both"), ("$None", "$None"),
                        ("true", "true"), ("/tmp/fp_model_epoch=20.pt", "/tmp/fp_model_epoch=20.pt")):
        assert script._value(text) == value and type(script._value(text)) is type(value), text
        assert fire.parser.DefaultParseValue(text) == value, text
