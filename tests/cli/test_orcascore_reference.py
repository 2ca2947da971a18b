"""`ctbundles orcascore-reference` (Araújo et al., Sect. 3.2.1): stores the best-F1 slice as the histogram reference."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from ctbundles.commands.orcascore_reference import main
from ctbundles.networks.orcascore_heart_unet import OrcaScoreHeartUNet


def test_command_writes_reference_slice_and_record(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        img = rng.normal(0, 50, size=(32, 32, 3)).astype(np.float32)
        heart = np.zeros((32, 32, 3), np.uint8)
        heart[8:24, 8:24, :] = 1
        nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / f"ct{i}.nii.gz")
        nib.save(nib.Nifti1Image(heart, np.eye(4)), tmp_path / f"heart{i}.nii.gz")
        items.append({"image": f"ct{i}.nii.gz", "label": f"heart{i}.nii.gz"})
    (tmp_path / "dl.json").write_text(json.dumps({"training": items}))
    torch.manual_seed(0)
    torch.save(OrcaScoreHeartUNet(features=(4, 8, 16, 32, 64, 4)).state_dict(), tmp_path / "roi.pt")
    out = tmp_path / "models" / "histogram_reference.npy"
    rc = main(["--datalist", str(tmp_path / "dl.json"), "--checkpoint", str(tmp_path / "roi.pt"), "--out", str(out),
               "--features", "4,8,16,32,64,4"])
    assert rc == 0
    ref = np.load(out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert ref.shape == (32, 32) and record["n_slices"] == 6 and 0.0 <= record["f1"] <= 1.0
    source = np.asarray(nib.load(record["case"]).dataobj)
    np.testing.assert_allclose(ref, np.asarray(source)[:, :, record["slice"]], atol=1e-4)


def test_command_missing_datalist_exit_2(tmp_path, capsys):
    assert main(["--datalist", str(tmp_path / "none.json"), "--checkpoint", "x.pt", "--out", str(tmp_path / "r.npy")]) == 2
    assert "none.json" in capsys.readouterr().err
