"""Each bundle's configs/multi_gpu_train.json under `torchrun --nproc_per_node 2` on CPU (gloo backend):
a few iterations of train.json on tiny generated data, then both ranks hold the same trained
parameters (DDP averages the gradients; rank 0's initial weights are broadcast).

A test-only overlay replaces ``run`` so every rank saves its network's parameters before and after
training. Batch-norm running statistics are not compared: DDP broadcasts rank 0's buffers at each
forward pass, then each rank updates them from its own batch, so they differ by design."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai.bundle import ConfigParser

from tests_support.ctp_cases import write_isles_case

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"

SAVE_PARAMS = (
    "$torch.save({k: v.detach().cpu() for k, v in @network.module.named_parameters()}, "
    "os.path.join(@bundle_root, 'params_STAGE_rank' + os.environ['RANK'] + '.pt'))"
)
RUN = ["$import os", SAVE_PARAMS.replace("STAGE", "init"), "$@train#trainer.run()", SAVE_PARAMS.replace("STAGE", "final")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chest_data(root: Path) -> dict:
    from ctbundles.datasets.nifti_folder import build_datalist, write_case
    from ctbundles.synthetic.registry import generate

    for seed in range(4):
        write_case(generate("chest", seed, small=True, shape=(64, 64, 12), n_plaques=4), root)
    items = build_datalist(root)["training"]
    for i, item in enumerate(items):
        item["fold"] = i % 2
    return {
        "dataset_dir": str(root), "datalist": items, "network_def#init_features": 8, "network_def#growth_rate": 4, "network_def#block_config": [1, 1, 1, 1],
        "in_plane_size": [64, 64], "crop_min": 64, "crop_max": 64, "patch_size": [64, 64], "epochs": 1, "samples_per_epoch": 4,
        "positive_fraction": 0.5, "num_workers": 0, "cache_rate": 1.0,
    }


def _isles_data(root: Path) -> dict:
    items = [write_isles_case(root, i, seed=i, shape=(40, 40, 3)) for i in range(1, 5)]
    for i, it in enumerate(items):
        it["patient"], it["fold"] = f"p{i}", i % 2
    return {
        "network_def#init_features": 8, "network_def#growth_rate": 4, "network_def#block_config": [2, 2, 2, 2], "network_def#bn_size": 2,
        "network_def#up_channels": [8, 8, 8, 8], "network_def#head_channels": 8, "roi_size": [32, 32], "num_workers": 0,
        "sw_batch_size": 4, "epochs": 1, "val_interval": 1, "datalist": items, "n_folds": 2, "fold": 0,
    }


def _icac_data(root: Path) -> dict:
    """Tiny head-like volumes: a 'bone' slab (800 HU) and one labelled calcification (400 HU)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    shape = (30, 28, 22)
    for i in range(6):
        img = rng.normal(30.0, 10.0, shape).astype(np.float32)
        img[3:6, 3:25, :] = 800.0
        lab = np.zeros(shape, np.uint8)
        c = (12 + 2 * (i % 3), 14, 11)
        img[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 400.0
        lab[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 1 + i % 2
        affine = np.diag([0.5, 0.5, 1.0, 1.0])
        nib.save(nib.Nifti1Image(img, affine), str(root / f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(root / f"lab{i}.nii.gz"))
        items.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "fold": 0 if i >= 4 else 1, "patient": f"p{i}"})
    (root / "datalist.json").write_text(json.dumps({"training": items}))
    return {
        "dataset_dir": str(root), "epochs": 1, "num_workers": 0, "cache_rate": 0.0, "patch_size": [97, 97, 56], "features": [1, 2, 2],
        "overlap": 0.0, "register_to_reference": False, "frame_shape": [30, 28, 22], "frame_spacing": [0.5, 0.5, 1.0],
        "frame_centre_mm": [7.25, 6.75, 10.5],
    }


def _orcascore_data(root: Path) -> dict:
    from ctbundles.datasets import orcascore
    from ctbundles.synthetic.registry import generate

    for i in range(4):
        case = generate("cardiac", i, small=True, shape=(64, 64, 6), spacing=(3.5, 3.5, 5.0), n_plaques=6)
        orcascore.write_case(case, root, vendor=1, patient=i + 1)
    dl = orcascore.build_datalist(root)["training"]
    return {"dataset_dir": str(root), "epochs": 1, "num_workers": 0, "histogram_reference": "$None", "train_datalist": dl[:2],
            "val_datalist": dl[2:], "patch_size": 32, "batch_size": 2}


# every validation set holds at least 2 cases: MONAI's DistributedSampler refuses fewer cases than ranks
CASES = {
    "cac_chest_cardiac_ct_segmentation": _chest_data,
    "isles2018_ctp_stroke_segmentation": _isles_data,
    "icac_ct_segmentation": _icac_data,
    "cac_orcascore_cascade_ct_segmentation": _orcascore_data,
}


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_overlay_falls_back_to_cpu_and_gloo(bundle, monkeypatch):
    """Without CUDA the overlay's device is the CPU, DDP gets no device_ids, the backend is gloo."""
    configs = BUNDLES / bundle / "configs"
    raw = json.loads((configs / "multi_gpu_train.json").read_text())
    parser = ConfigParser({"imports": ["$import os", "$import torch"], **{k: v for k, v in raw.items() if k in ("device",)}})
    monkeypatch.setenv("LOCAL_RANK", "0")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(parser.get_parsed_content("device")) == expected
    assert "if torch.cuda.is_available() else None" in raw["network"]["device_ids"]
    init = " ".join(raw["initialize"])
    assert "'nccl' if torch.cuda.is_available() else 'gloo'" in init
    assert "torch.cuda.is_available() and torch.cuda.set_device(@device)" in init


@pytest.mark.slow  # two processes of a few training iterations: 30 s to a few minutes on a shared 2-core CPU
@pytest.mark.parametrize("bundle", sorted(CASES))
def test_torchrun_two_ranks_train_the_same_model(bundle, tmp_path):
    configs = BUNDLES / bundle / "configs"
    overrides = CASES[bundle](tmp_path / "data")
    root = tmp_path / "bundle"
    root.mkdir()
    overlay = tmp_path / "test_overlay.json"
    overlay.write_text(json.dumps({"bundle_root": str(root), **overrides, "run": RUN}))
    files = [str(configs / "train.json"), str(configs / "multi_gpu_train.json"), str(overlay)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "monai.bundle", "run", "--config_file", json.dumps(files),
           "--meta_file", str(configs / "metadata.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    init = [torch.load(root / f"params_init_rank{r}.pt") for r in (0, 1)]
    final = [torch.load(root / f"params_final_rank{r}.pt") for r in (0, 1)]
    assert set(final[0]) == set(final[1]) and len(final[0]) > 0
    for name in final[0]:
        assert torch.equal(init[0][name], init[1][name]), f"{name}: rank 0's initial weights were not broadcast"
        assert torch.equal(final[0][name], final[1][name]), f"{name}: ranks ended with different parameters"
    changed = [n for n in final[0] if not torch.equal(final[0][n], init[0][n])]
    assert len(changed) > len(final[0]) // 2  # the model trained
