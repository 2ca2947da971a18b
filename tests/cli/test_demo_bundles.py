"""`ctbundles demo`, steps 2-3: each bundle's inference through `python -m monai.bundle run` on its
synthetic cohort, and the comparison of the prediction files with the generator's ground truth.

The bundles here are temporary copies with randomly initialised weights (and reduced widths, so a
run takes seconds), saved where each ``configs/inference.json`` loads them; the numbers compared
are therefore those of untrained networks, and the tests check the plumbing and the arithmetic.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctbundles.bundle_runner import missing_weights, prediction_file, required_weights, written_segmentations
from ctbundles.cli import main
from ctbundles.commands import demo
from tests_support.random_bundle import BUNDLES, make_random_bundle

#: reduced widths / sizes of each bundle's config for fast CPU runs (the networks are the bundles' own)
FAST = {
    "isles2018_ctp_stroke_segmentation": {
        "network_def#init_features": 8, "network_def#growth_rate": 4, "network_def#block_config": [2, 2, 2, 2],
        "network_def#bn_size": 2, "network_def#up_channels": [8, 8, 8, 8], "network_def#head_channels": 8,
        "roi_size": [32, 32],
    },
    "cac_chest_cardiac_ct_segmentation": {
        "network_def#init_features": 8, "network_def#growth_rate": 4, "network_def#block_config": [1, 1, 1, 1],
        "in_plane_size": [64, 64], "slab_batch_size": 8, "refuse_findings": [],
    },
    "cac_orcascore_cascade_ct_segmentation": {
        "decoder_channels": [16, 8, 8, 8, 8], "roi_network_def#features": [4, 8, 16, 32, 64, 4],
        "fp_backbone": "efficientnet-b0", "crop_size": 32,
    },
    "icac_ct_segmentation": {
        "features": [4, 8, 16], "register_to_reference": False, "frame_shape": [64, 64, 24], "patch_size": [146, 146, 60],
    },
}
KIND_OF = {spec["bundle"]: kind for kind, spec in demo.KINDS.items()}


def _grid(kind, path):
    if kind == "ctp":
        img = nib.load(str(path))
        return tuple(img.shape[:3]), img.affine
    from ctbundles.transforms.ct_io import load_ct

    img = load_ct(path)
    return tuple(img.shape[-3:]), np.asarray(img.affine)


@pytest.mark.slow  # 13-23 s per bundle on the shared 2-core CPU (35-60 s under load): python -m monai.bundle run
@pytest.mark.parametrize("bundle", sorted(FAST))
def test_bundle_inference_writes_predictions_on_the_input_grid(tmp_path, bundle):
    kind = KIND_OF[bundle]
    root = tmp_path / "bundles"
    make_random_bundle(bundle, root, FAST[bundle])
    assert missing_weights(root / bundle) == []
    cohort = demo.make_cohort(kind, tmp_path / "out", 1, seed=0, small=True)
    result = demo.run_bundle(kind, cohort, tmp_path / "out", root, threads=1)
    assert result["status"] == "ok", result.get("message") or Path(result["log"]).read_text()[-3000:]
    assert len(result["cases"]) == len(cohort["cases"]) >= 1
    for case, row in zip(cohort["cases"], result["cases"]):
        pred = Path(row["prediction"])
        assert pred.is_file() and pred.parent == Path(cohort["folder"]) / "predictions"
        shape, affine = _grid(kind, case["image"])
        pshape, paffine = _grid(kind, pred) if kind == "ctp" else _grid(kind, case["image"])
        assert pshape == shape
        if kind != "ctp":  # the prediction loads as a label on the image grid (shape and affine checked)
            from ctbundles.transforms.ct_io import load_ct, load_label

            assert tuple(load_label(pred, like=load_ct(case["image"])).shape[-3:]) == shape
        else:
            assert np.allclose(paffine, affine, atol=1e-3)
        # the figures of the summary are those of the files
        mask = demo.load_mask(kind, case["image"], str(pred))
        assert row["dice"] == pytest.approx(demo.dice(mask, demo.load_mask(kind, case["image"], case["label"])))
        assert row["predicted"] == pytest.approx(demo.score_files(kind, case["image"], str(pred))[demo.KINDS[kind]["figure"]])
        assert row["bundle_reported"] == pytest.approx(row["predicted"], rel=1e-6, abs=1e-9)


def test_required_weights_follow_the_checkpoint_loaders(tmp_path):
    cascade = required_weights(BUNDLES / "cac_orcascore_cascade_ct_segmentation")
    assert [p.name for p in cascade] == ["model.pt", "model_roi.pt", "model_fp.pt"]  # use_fp_stage is on as shipped (since 0.3.0)
    # the chest bundle's loader turns itself off when model.pt is missing: it is still required
    assert [p.name for p in required_weights(BUNDLES / "cac_chest_cardiac_ct_segmentation")] == ["model.pt"]
    copy = tmp_path / "cascade"
    shutil.copytree(BUNDLES / "cac_orcascore_cascade_ct_segmentation", copy)
    cfg = json.loads((copy / "configs" / "inference.json").read_text())
    cfg["use_fp_stage"] = False
    (copy / "configs" / "inference.json").write_text(json.dumps(cfg))
    assert [p.name for p in required_weights(copy)] == ["model.pt", "model_roi.pt"]


def _perfect_prediction(kind, case, folder):
    """Write the ground-truth label where the bundle writes its prediction (NIfTI, image grid)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(case["image"]).name.split(".")[0]
    path = out / f"{stem}_seg.nii.gz"
    if kind == "cardiac":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.ReadImage(case["label"]), str(path))
    else:
        lab = nib.load(case["label"])
        nib.save(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.uint8), lab.affine), str(path))
    return path


@pytest.mark.parametrize("kind", ["cardiac", "chest", "head", "ctp"])
def test_comparison_of_a_perfect_and_an_empty_prediction(tmp_path, kind):
    cohort = demo.make_cohort(kind, tmp_path, 1, seed=0, small=True)  # seed 0: calcium / lesion in every kind
    case = cohort["cases"][0]
    pred = _perfect_prediction(kind, case, tmp_path / "pred")
    assert prediction_file(case["image"], tmp_path / "pred") == pred
    row = demo.compare_prediction(kind, case, str(pred))
    assert row["dice"] == 1.0
    assert row["truth"] > 0
    assert row["predicted"] == pytest.approx(row["truth"], rel=1e-6)  # float32 voxel sizes in the headers
    assert row["difference"] == pytest.approx(0.0, abs=1e-6 * row["truth"])
    if kind in ("chest", "cardiac"):
        assert row["risk_category_agrees"] and row["risk_category"] == row["truth_risk_category"]

    # half the true foreground (whole slices removed): Dice 2|B| / (|A| + |B|), with B inside A
    img = nib.load(str(pred))
    data = np.asarray(img.dataobj).copy()
    a = int((data > 0).sum())
    zs = np.nonzero(data.reshape(data.shape[0], data.shape[1], -1).any(axis=(0, 1)))[0]
    data[..., zs[: max(1, len(zs) // 2)]] = 0
    nib.save(nib.Nifti1Image(data, img.affine), str(pred))
    b = int((data > 0).sum())
    assert 0 < b < a
    row = demo.compare_prediction(kind, case, str(pred))
    assert row["dice"] == pytest.approx(2 * b / (a + b))
    assert row["predicted"] < row["truth"]

    nib.save(nib.Nifti1Image(np.zeros_like(data), img.affine), str(pred))
    row = demo.compare_prediction(kind, case, str(pred))
    assert row["dice"] == 0.0 and row["predicted"] == 0.0 and row["relative_difference"] == -1.0


def test_the_bundle_reports_warnings_reach_the_summary(tmp_path, capsys):
    """The warnings of a bundle's per-case JSON (e.g. the ICAC scan not covering the network frame) are
    carried into the comparison row and printed under the case."""
    cohort = demo.make_cohort("head", tmp_path, 1, seed=0, small=True)
    case = cohort["cases"][0]
    pred = _perfect_prediction("head", case, tmp_path / "pred")
    warning = "segmentation: the scan covers 76.0 % of the network frame"
    (pred.parent / (Path(case["image"]).name.split(".")[0] + ".json")).write_text(
        json.dumps({"total_mm3": case["truth"], "warnings": [warning]}))
    row = demo.compare_prediction("head", case, str(pred))
    assert row["bundle_warnings"] == [warning] and row["bundle_reported"] == pytest.approx(case["truth"])
    summary = {"seconds": 1.0, "read_back": [{"agrees": True}],
               "inference": {"status": "ok", "inference_seconds": 1.0, "output_files": [str(pred)], "output_dir": str(pred.parent),
                             "cases": [row], "mean_dice": row["dice"]}}
    demo._print_summary("head", summary)
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(case["case"]))
    assert lines[at + 1].strip() == f"the bundle's report warns: {warning}"


def test_a_bundle_without_weights_is_reported_and_the_demo_fails(tmp_path, capsys):
    root = tmp_path / "bundles"
    shutil.copytree(BUNDLES / "isles2018_ctp_stroke_segmentation", root / "isles2018_ctp_stroke_segmentation")
    (root / "isles2018_ctp_stroke_segmentation" / "models" / "model.pt").unlink(missing_ok=True)
    assert main(["demo", "--out", str(tmp_path / "out"), "--cases", "1", "--kinds", "ctp", "--bundles", str(root), "--small"]) == 1
    out, err = capsys.readouterr()
    assert "NO WEIGHTS" in out and "model.pt" in out and "NOT run" in out
    assert "NOT COMPLETE: ctp (no_weights)" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (entry,) = summary["kinds"]
    assert entry["inference"]["status"] == "no_weights"
    assert entry["inference"]["missing"] == [str(root / "isles2018_ctp_stroke_segmentation" / "models" / "model.pt")]
    assert not (tmp_path / "out" / "ctp" / "predictions").exists()
    assert all(r["agrees"] for r in entry["read_back"])


@pytest.mark.slow  # 16 s on the shared 2-core CPU (50 s under load): one ISLES run through monai.bundle
def test_demo_summary_structure_with_a_random_weight_bundle(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "PROGRESS_EVERY_S", 0.5)  # the run takes seconds: several progress lines
    root = tmp_path / "bundles"
    make_random_bundle("isles2018_ctp_stroke_segmentation", root, FAST["isles2018_ctp_stroke_segmentation"])
    assert main(["demo", "--out", str(tmp_path / "out"), "--cases", "1", "--kinds", "ctp", "--bundles", str(root), "--threads", "1", "--small"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) >= {"seconds", "cases_per_bundle", "seed", "kinds"}
    (entry,) = summary["kinds"]
    assert entry["kind"] == "ctp" and entry["bundle"] == "isles2018_ctp_stroke_segmentation"
    inf = entry["inference"]
    assert inf["status"] == "ok" and inf["inference_seconds"] > 0
    assert inf["command"][1:4] == ["-m", "monai.bundle", "run"]
    truth = {r["case_id"]: float(r["lesion_volume_ml"]) for r in __import__("csv").DictReader(open(tmp_path / "out" / "ctp" / "truth.csv"))}
    assert {c["case"] for c in inf["cases"]} == set(truth)
    for c in inf["cases"]:
        assert c["truth"] == truth[c["case"]]
        assert c["prediction"] in inf["output_files"]
        assert c["difference"] == pytest.approx(c["predicted"] - c["truth"])
    assert inf["mean_dice"] == pytest.approx(np.mean([c["dice"] for c in inf["cases"]]))
    captured = capsys.readouterr()
    out = captured.out
    assert "lesion_volume_ml pred" in out and "mean Dice" in out
    # progress while the bundle runs: elapsed seconds rise, segmentations written never exceed the cases
    ticks = [(int(s), int(w), int(n)) for s, w, n in re.findall(r"\[ctp\] inference running: (\d+) s, (\d+)/(\d+) segmentation", captured.err)]
    assert len(ticks) >= 2
    assert [t[0] for t in ticks] == sorted(t[0] for t in ticks) and all(w <= n == len(truth) for _, w, n in ticks)


def test_written_segmentations_counts_only_finished_seg_files(tmp_path):
    assert written_segmentations(tmp_path / "missing") == []
    for name in ("a_seg.nii.gz", "b_seg.mhd", "b_seg.raw", "c.nii.gz", "d_seg.nii.gz.tmp", "e.json"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in written_segmentations(tmp_path)] == ["a_seg.nii.gz", "b_seg.mhd"]
