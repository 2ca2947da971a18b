"""The ISLES 2018 bundle's inference through MONAI Label's own bundle code path (skipped without monailabel)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests_support.ctp_cases import write_stacked

bundle_task = pytest.importorskip("monailabel.tasks.infer.bundle", reason="monailabel is not installed")

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "isles2018_ctp_stroke_segmentation"
TINY = {"init_features": 8, "growth_rate": 4, "block_config": [2, 2, 2, 2], "bn_size": 2, "up_channels": [8, 8, 8, 8],
        "head_channels": 8}


def test_monailabel_bundle_infer_task(tmp_path):
    bundle = tmp_path / "isles2018_ctp_stroke_segmentation"
    shutil.copytree(BUNDLE, bundle)
    cfg_path = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["network_def"].update(TINY)
    cfg["roi_size"] = [32, 32]
    cfg_path.write_text(json.dumps(cfg))
    from ctbundles.networks.ms_dcnn import MSDCNN

    torch.manual_seed(0)
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(MSDCNN(**TINY).state_dict(), bundle / "models" / "model.pt")
    src, _ = write_stacked(tmp_path / "case5.nii.gz", seed=5, shape=(44, 36, 3))

    task = bundle_task.BundleInferTask(str(bundle), {})
    assert task.is_valid()
    assert task.labels == {"lesion": 1}
    _, data = task({"image": src, "device": "cpu", "skip_writer": True})
    pred = data["pred"]
    pred = pred.numpy() if hasattr(pred, "numpy") else np.asarray(pred)
    assert pred.squeeze().shape == nib.load(src).shape[:3]
    assert set(np.unique(pred)) <= {0, 1}
    assert "lesion_volume" in data and data["lesion_volume"]["n_voxels"] == int(pred.sum())
