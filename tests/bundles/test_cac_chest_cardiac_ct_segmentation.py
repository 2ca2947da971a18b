"""Bundle cac_chest_cardiac_ct_segmentation: configs parse, network_def is the paper's network and is
scriptable, verify_net_in_out and ckpt_export succeed, and train / evaluate / inference run end to end
on tiny generated data (tiny network and in-plane size via config overrides; random weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from ctbundles.datasets.nifti_folder import write_case, write_datalist
from ctbundles.errors import CTInputError
from ctbundles.networks.blocks_dense_ra_unet import ResidualAtrousUnit
from ctbundles.networks.dense_ra_unet import DenseRAUnet
from ctbundles.synthetic.registry import generate

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "cac_chest_cardiac_ct_segmentation"
CONFIGS = BUNDLE / "configs"
TINY_KW = {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1, 1)}
TINY_NET = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY_KW.items()}
TINY_TRAIN = {
    **TINY_NET, "in_plane_size": [64, 64], "crop_min": 64, "crop_max": 64, "patch_size": [64, 64], "epochs": 1,
    "samples_per_epoch": 2, "positive_fraction": 0.5, "num_workers": 0, "cache_rate": 1.0,
}


def parser(*names: str) -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(CONFIGS / n) for n in names])
    p.read_meta(str(CONFIGS / "metadata.json"))
    return p


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three small synthetic chest cases (folds 0, 1, 2) in the NIfTI folder layout."""
    root = tmp_path_factory.mktemp("chest")
    for seed in range(3):
        write_case(generate("chest", seed, small=True, shape=(64, 64, 12), n_plaques=4), root)
    write_datalist(root, folds=3)
    return root


@pytest.mark.parametrize("config", ["inference.json", "train.json"])
def test_network_def_is_paper_network(config):
    net = parser(config).get_parsed_content("network_def")
    assert isinstance(net, DenseRAUnet)
    assert (net.in_channels, net.out_channels, net.block_config, net.growth_rate) == (9, 2, (6, 12, 24, 16), 32)
    assert isinstance(net.lateral1, ResidualAtrousUnit) and net.use_edb and net.use_scse


def test_switch_overrides_and_paper_hyperparameters():
    p = parser("train.json")
    p["use_rau"] = False
    p["use_scse"] = False
    net = p.get_parsed_content("network_def")
    assert isinstance(net.lateral1, torch.nn.Identity) and not net.use_scse and net.use_edb
    assert (p["learning_rate"], p["momentum"], p["lr_decay"], p["lr_step_iterations"]) == (0.001, 0.9, 0.99, 2000)
    assert (p["batch_size"], p["epochs"], p["slab_size"], p["calcium_threshold_hu"]) == (1, 25, 9, 130.0)
    loss = p.get_parsed_content("loss")
    assert (loss.bootstrap.threshold, loss.bootstrap.alpha, loss.bootstrap.beta) == (0.9, 5.0, 1.0)


def test_overlays_parse():
    p = parser("train.json", "evaluate.json")
    assert p["run"] == ["$@validate#evaluator.run()"]
    assert p["validate#inferer#_target_"].endswith("SlabInferer")
    m = parser("train.json", "multi_gpu_train.json")
    assert m["train#dataloader#sampler"] == "@train#sampler" and m["train#dataloader#shuffle"] is False


def test_default_network_scripts():
    net = parser("inference.json").get_parsed_content("network_def").eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 9, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-4)


def test_verify_net_in_out_in_process():
    verify_net_in_out("network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), n=1, device="cpu")


def test_ckpt_export_in_process(tmp_path):
    ckpt, ts = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(DenseRAUnet(**TINY_KW).state_dict(), ckpt)
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=str(CONFIGS / "metadata.json"),
                config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), **TINY_NET)
    loaded = torch.jit.load(str(ts))
    with torch.no_grad():
        assert loaded(torch.randn(1, 9, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.slow
def test_verify_net_in_out_and_ckpt_export_cli(tmp_path):
    """The Model Zoo's own commands, as subprocesses (about a minute on a loaded 2-core CPU)."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
           "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"), "--n", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / "model.pt"
    torch.save(DenseRAUnet(**TINY_KW).state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(ckpt), "--meta_file", str(CONFIGS / "metadata.json"),
           "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(BUNDLE),
           "--network_def#init_features", "8", "--network_def#growth_rate", "4",
           "--network_def#block_config", "[1,1,1,1]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.jit.load(str(ts))(torch.randn(1, 9, 32, 32)).shape == (1, 2, 32, 32)


def test_train_two_iterations(cohort, tmp_path):
    wf = ConfigWorkflow(str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(tmp_path),
                        dataset_dir=str(cohort), **TINY_TRAIN)
    wf.initialize()
    slabs = wf.parser.get_parsed_content("train#slab_dataset")
    assert len(slabs) == 2 and len(wf.parser.get_parsed_content("train#dataset")) == 2
    sample = slabs[0]
    assert sample["image"].shape == (9, 64, 64) and sample["label"].shape == (1, 64, 64)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and np.isfinite(float(trainer.state.output[0]["loss"]))
    assert (tmp_path / "models" / "model.pt").is_file()
    wf.finalize()


def test_evaluate_overlay(cohort, tmp_path):
    """Random weights: checks the evaluation plumbing and that the reference equals the generator truth."""
    ev = ConfigWorkflow([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], workflow_type="eval",
                        bundle_root=str(tmp_path), dataset_dir=str(cohort), cohort="chest", **TINY_TRAIN)
    ev.initialize()
    ev.run()
    summary = json.loads((tmp_path / "eval" / "cac_evaluation_chest.json").read_text())
    assert summary["n_cases"] == 3 and {"raw", "post"} <= set(summary)
    ref = {c["case"]: c["agatston_ref"] for c in summary["cases"]}
    for case_id, value in ref.items():
        truth = json.loads((cohort / "truth" / f"{case_id}.json").read_text())
        assert value == pytest.approx(truth["truth"]["agatston"], rel=1e-6)  # reference = generator truth
    written = sorted(p.name for p in (tmp_path / "eval" / "chest").glob("chest_*.json"))
    assert written == [f"{c}.json" for c in sorted(ref)]
    ev.finalize()


def run_inference(tmp_path, datalist, **extra):
    wf = ConfigWorkflow(str(CONFIGS / "inference.json"), workflow_type="infer", bundle_root=str(BUNDLE),
                        output_dir=str(tmp_path), datalist=datalist, num_workers=0, **TINY_NET, **extra)
    wf.initialize()
    wf.run()
    wf.finalize()


def test_inference_nifti_prediction_on_input_grid(cohort, tmp_path):
    image = cohort / "imagesTr" / "chest_0.nii.gz"
    run_inference(tmp_path, [str(image)], in_plane_size=[64, 64], slab_batch_size=5)
    pred = nib.load(tmp_path / "chest_0_seg.nii.gz")
    ref = nib.load(image)
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)
    seg = np.asarray(pred.dataobj)
    assert set(np.unique(seg)) <= {0, 1}
    assert np.all(np.asarray(ref.dataobj)[seg > 0] >= 130)  # the 130 HU rule was applied
    report = json.loads((tmp_path / "chest_0.json").read_text())
    assert {"agatston", "volume_mm3", "lesions", "risk_category", "cac_drs"} <= set(report)
    assert (tmp_path / "scores.csv").read_text().count("\n") == 2


def test_inference_on_real_dicom_phantom(shared_data, tmp_path):
    """QRM phantom DICOM series end to end (random weights: proves the pipeline runs, not accuracy)."""
    dicom = shared_data / "qrm_phantom" / "dicom"
    run_inference(tmp_path, [str(dicom)], in_plane_size=[64, 64], slab_batch_size=47)
    pred = nib.load(tmp_path / "dicom_seg.nii.gz")
    assert pred.shape == (512, 512, 47)
    assert np.allclose(pred.header.get_zooms(), (0.488, 0.488, 3.0), atol=1e-3)
    assert "agatston" in json.loads((tmp_path / "dicom.json").read_text())


def test_inference_refuses_contrast_enhanced(shared_data, tmp_path):
    cta = shared_data / "chest_cta" / "chest_cta_crop_b_ct_1.5mm.nii.gz"
    with pytest.raises(Exception) as err:
        run_inference(tmp_path, [str(cta)], in_plane_size=[64, 64])
    chain, e = [], err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(x, CTInputError) and "contrast" in str(x) for x in chain)
    assert not list(tmp_path.glob("*_seg.nii.gz"))


def test_monai_label_style_inference(cohort):
    """The path MONAI Label's bundle task takes: parsed preprocessing on a dict holding one image path
    plus the keys MONAI Label adds, the inferer on the batched image, postprocessing without
    SaveImaged, prediction under ``pred`` on the input grid."""
    from monai.data import decollate_batch, list_data_collate

    p = parser("inference.json")
    for k, v in TINY_NET.items():
        p[k] = v
    p["in_plane_size"] = [64, 64]
    p["refuse_findings"] = ["contrast"]  # the tiny 64 x 64 crop of this case holds no air ("not_hu")
    image = str(cohort / "imagesTr" / "chest_1.nii.gz")
    data = {"image": image, "image_path": image, "result_extension": ".nii.gz", "result_dtype": "uint8",
            "client_id": "user-xyz", "device": "cpu"}
    pre = p.get_parsed_content("preprocessing")
    post = p.get_parsed_content("postprocessing")
    post.transforms = [t for t in post.transforms if type(t).__name__ != "SaveImaged"]
    net = p.get_parsed_content("network_def").eval()
    d = pre(data)
    batch = list_data_collate([d])
    with torch.no_grad():
        batch["pred"] = p.get_parsed_content("inferer")(batch["image"], net)
    out = [post(i) for i in decollate_batch(batch)][0]
    shape = nib.load(image).shape
    assert tuple(out["pred"].shape) == (1, *shape)
    assert "agatston" in out["calcium_score"]


def test_synthetic_demo_overlay_is_a_reduced_network_on_paper_defaults():
    """configs/train_synthetic_demo.json only narrows the network and the sizes for a CPU run; the
    loss, the momentum and the DenseRAUnet modules stay the paper's (train.json) values."""
    p = parser("train.json", "train_synthetic_demo.json")
    net = p.get_parsed_content("network_def")
    assert isinstance(net, DenseRAUnet)
    assert (net.init_features, net.growth_rate, net.block_config) == (16, 8, (2, 2, 2, 2))
    assert net.use_rau and net.use_edb and net.use_scse
    assert sum(x.numel() for x in net.parameters()) < 500_000
    out = net.eval()(torch.zeros(1, 9, 128, 128))
    assert tuple(out.shape) == (1, 2, 128, 128)
    assert (p["loss_threshold"], p["loss_alpha"], p["loss_beta"], p["loss_iou_weight"], p["momentum"]) == (
        0.9, 5.0, 1.0, 1.0, 0.9)
    saver = p["validate"]["handlers"][1]
    assert saver["_target_"] == "CheckpointSaver" and saver["key_metric_filename"] == "model_demo.pt"


def test_demo_weights_load_into_the_demo_network():
    """models/model_demo.pt (CPU demo on synthetic chest CT) matches the overlay's reduced network
    exactly (strict load), and marks no calcium on uniform soft tissue (40 HU)."""
    weights = BUNDLE / "models" / "model_demo.pt"
    if not weights.exists():
        pytest.skip("no demo weights")
    net = parser("train.json", "train_synthetic_demo.json").get_parsed_content("network_def")
    net.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    x = torch.full((1, 9, 64, 64), (40.0 + 1000.0) / 3000.0)  # 40 HU everywhere
    with torch.no_grad():
        calcium = net.eval()(x).argmax(1)
    assert int(calcium.sum()) == 0
