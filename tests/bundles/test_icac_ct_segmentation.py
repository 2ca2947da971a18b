"""ICAC bundle: configs parse, network_def verifies and scripts, a short training and an inference run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from ctbundles.networks.icac_fcn import ICACFCN

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "icac_ct_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = {"patch_size": [97, 97, 56], "features": [1, 2, 2], "overlap": 0.0}


def _parser(*names, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(overrides)
    return parser


def _write_cohort(root: Path, n: int = 2, shape=(30, 28, 22)) -> Path:
    """Tiny head-like volumes: a 'bone' slab (800 HU) and one labelled calcification (400 HU)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        img = rng.normal(30.0, 10.0, shape).astype(np.float32)
        img[3:6, 3:25, :] = 800.0
        lab = np.zeros(shape, np.uint8)
        c = (12 + 4 * i, 14, 11)
        img[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 400.0
        lab[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 1 + i % 2
        affine = np.diag([0.5, 0.5, 1.0, 1.0])
        nib.save(nib.Nifti1Image(img, affine), str(root / f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(root / f"lab{i}.nii.gz"))
        items.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "fold": i % 2, "patient": f"p{i}"})
    (root / "datalist.json").write_text(json.dumps({"training": items}))
    return root


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_configs_instantiate_network_def(config):
    parser = _parser(config)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, ICACFCN)
    assert net.receptive_field == (85, 85, 37) and net.border_lo == (41, 41, 18)
    for key in ("bundle_root", "device", "network", "inferer", "output_dir"):
        assert key in parser.config or f"validate#{key}" in parser, key


def test_train_switches_reach_the_objects():
    parser = _parser("train.json", residual=False, dropout_position="first_conv", deep_supervision=False,
                     supervise_above_130hu=False, **TINY)
    net = parser.get_parsed_content("network_def")
    assert not net.block1.residual and net.block4.dropout_position == "first_conv" and len(net.heads) == 0
    assert parser.get_parsed_content("aux_decay_epochs") == 0
    mask = [t for t in parser.get_parsed_content("train#deterministic_transforms") if type(t).__name__ == "SupervisionMaskd"]
    assert len(mask) == 1 and mask[0].op.enabled is False
    flips = [t for t in parser.get_parsed_content("train#random_transforms") if type(t).__name__ == "RandFlipd"]
    assert len(flips) == 1 and flips[0].flipper.spatial_axis == 0
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.1 and optimizer.defaults["momentum"] == 0.9


def test_evaluate_and_multi_gpu_are_overlays():
    for overlay in ("evaluate.json", "multi_gpu_train.json"):
        keys = set(json.loads((CONFIGS / overlay).read_text()))
        assert "network_def" not in keys and "train#deterministic_transforms" not in keys
    parser = _parser("train.json", "evaluate.json")
    assert parser["run"] == ["$@validate#evaluator.run()"]


def test_network_def_scripts():
    net = _parser("inference.json", features=[1, 2, 2]).get_parsed_content("network_def")
    scripted = torch.jit.script(net.eval())
    x = torch.randn(1, 1, 97, 97, 40)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.slow
def test_verify_net_in_out(tmp_path):
    """verify_net_in_out on the shipped network (inference.json defaults) at the metadata's patch size."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
           "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"),
           "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_train_one_epoch_and_infer(tmp_path):
    data = _write_cohort(tmp_path / "data")
    bundle_root = tmp_path / "bundle"
    frame = dict(register_to_reference=False, frame_shape=[30, 28, 22], frame_spacing=[0.5, 0.5, 1.0],
                 frame_centre_mm=[7.25, 6.75, 10.5])  # the toy grid itself: no registration
    overrides = dict(bundle_root=str(bundle_root), dataset_dir=str(data), epochs=1, num_workers=0, cache_rate=0.0,
                     **TINY, **frame)
    parser = _parser("train.json", **overrides)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert np.isfinite(float(trainer.state.output[0]["loss"]))
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert "val_loss" in evaluator.state.metrics and 0.0 <= evaluator.state.metrics["val_mean_dice"] <= 1.0
    assert (bundle_root / "models" / "model.pt").is_file()  # selected by the validation loss

    # evaluate.json overlay: the best checkpoint on the validation fold, the paper's figures written
    ev = _parser("train.json", "evaluate.json", **overrides)
    ev.get_parsed_content("validate#evaluator").run()
    summary = json.loads((bundle_root / "eval" / "icac_evaluation.json").read_text())
    assert summary["n_cases"] == 1 and len(summary["cases"]) == 1 and 0.0 <= summary["dice_mean"] <= 1.0
    assert summary["cases"][0]["ref_volume_mm3"] == pytest.approx(64 * 0.25)  # 4 x 4 x 4 voxels of 0.25 mm^3
    assert (bundle_root / "eval" / "icac_volume_scatter.png").is_file()
    assert (bundle_root / "eval" / "metrics.csv").is_file()

    images = data / "test"
    images.mkdir()
    (images / "img0.nii.gz").write_bytes((data / "img0.nii.gz").read_bytes())
    out = tmp_path / "out"
    inf = _parser("inference.json", bundle_root=str(bundle_root), dataset_dir=str(images), output_dir=str(out),
                  midline_x_mm=None, **TINY, **frame)
    inf.get_parsed_content("evaluator").run()
    seg = nib.load(str(out / "img0_seg.nii.gz"))
    src = nib.load(str(images / "img0.nii.gz"))
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    hu = src.get_fdata()
    assert not np.any(seg.get_fdata()[hu < 130] > 0)  # voxels below 130 HU removed
    report = json.loads((out / "img0.json").read_text())
    assert "total_mm3" in report and (out / "icac_volumes.csv").is_file()


def _run_real_head_ct(shared_data, tmp_path, register: bool) -> float:
    """Inference with the shipped models/model.pt on the real head CT; returns the ICAC volume (mm^3)."""
    src = sorted((shared_data / "head_ct").glob("*.nii.gz"))
    if not src:
        pytest.skip("no NIfTI in ../shared/data/head_ct")
    images = tmp_path / "images"
    images.mkdir()
    (images / src[0].name).symlink_to(src[0])
    ref = nib.load(str(src[0]))
    if register:  # the paper's pipeline: registration, the 240 x 240 x 100 frame in one window
        overlays, small = (), {"patch_size": [325, 325, 136], "overlap": 0.0}
    else:  # no registration, a frame centred on the scan in its own world coordinates; smaller than
        # inference_synthetic.json's 240 x 240 x 100 (same spacing) to keep this test short
        centre = ref.affine @ np.append((np.array(ref.shape) - 1) / 2, 1.0)
        overlays, small = ("inference_synthetic.json",), {"frame_centre_mm": centre[:3].tolist(), "midline_x_mm": None,
                                                          "frame_shape": [176, 144, 76], "patch_size": [261, 229, 112]}
    out = tmp_path / "out"
    parser = _parser("inference.json", *overlays)
    parser.update(dict(bundle_root=str(BUNDLE), dataset_dir=str(images), output_dir=str(out), **small))
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluator").run()
    stem = src[0].name[: -len(".nii.gz")]
    seg = nib.load(str(out / f"{stem}_seg.nii.gz"))
    assert seg.shape == ref.shape == (209, 227, 56)
    assert np.allclose(seg.affine, ref.affine, atol=1e-3)
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values).tolist()) <= {0, 1, 2}
    assert not np.any(values[ref.get_fdata() < 130] > 0)  # voxels below 130 HU removed
    report = json.loads((out / f"{stem}.json").read_text())
    assert set(report["per_label"]) <= {"ICA_left", "ICA_right"}
    voxel_mm3 = float(np.prod(ref.header.get_zooms()[:3]))
    assert report["total_mm3"] == pytest.approx(float((values > 0).sum()) * voxel_mm3, rel=1e-4)
    assert (out / "icac_volumes.csv").is_file()
    print(f"ICAC volume of {src[0].name} (register={register}): {report['total_mm3']:.1f} mm3")
    return report["total_mm3"]


@pytest.mark.shared_data
def test_inference_on_real_head_ct(shared_data, tmp_path):
    """The real head CT (no reference label), shipped weights: inference completes on its grid."""
    _run_real_head_ct(shared_data, tmp_path, register=False)


@pytest.mark.slow
@pytest.mark.shared_data
def test_inference_on_real_head_ct_registered(shared_data, tmp_path):
    """The paper's pipeline on the real head CT with the shipped weights: registration, frame, back."""
    _run_real_head_ct(shared_data, tmp_path, register=True)


@pytest.mark.slow
def test_ckpt_export_torchscript(tmp_path):
    """ckpt_export of the shipped models/model.pt with inference.json; TorchScript equals the eager network."""
    weights = BUNDLE / "models" / "model.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
           "--ckpt_file", str(weights), "--meta_file", str(CONFIGS / "metadata.json"),
           "--config_file", str(CONFIGS / "inference.json")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    net = _parser("inference.json").get_parsed_content("network_def")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state), strict=True)
    loaded = torch.jit.load(str(tmp_path / "model.ts")).eval()
    x = torch.rand(1, 1, 97, 97, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
