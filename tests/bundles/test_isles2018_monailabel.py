"""The ISLES 2018 bundle's inference through MONAI Label's own bundle code path (skipped without monailabel).

The bundle is used as shipped: ``configs/inference.json`` unchanged and ``models/model.pt``, on one stacked
4-channel slab of a synthetic patient that neither the training nor the held-out cohort contains."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests_support.ctp_cases import write_synthetic_stacked

bundle_task = pytest.importorskip("monailabel.tasks.infer.bundle", reason="monailabel is not installed")

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "isles2018_ctp_stroke_segmentation"


def test_monailabel_bundle_infer_task(tmp_path):
    bundle = tmp_path / "isles2018_ctp_stroke_segmentation"
    shutil.copytree(BUNDLE, bundle)
    assert (bundle / "models" / "model.pt").is_file()
    src, label = write_synthetic_stacked(tmp_path / "data", seed=4243)

    task = bundle_task.BundleInferTask(str(bundle), {})
    assert task.is_valid()
    assert task.labels == {"lesion": 1}
    _, data = task({"image": src, "device": "cpu", "skip_writer": True})
    pred = data["pred"]
    pred = pred.numpy() if hasattr(pred, "numpy") else np.asarray(pred)
    pred = pred.squeeze()
    assert pred.shape == nib.load(src).shape[:3] == label.shape
    assert set(np.unique(pred)) <= {0, 1}
    assert "lesion_volume" in data and data["lesion_volume"]["n_voxels"] == int(pred.sum())
    p, t = pred.astype(bool), label.astype(bool)
    assert 2.0 * (p & t).sum() / (p.sum() + t.sum()) >= 0.7
