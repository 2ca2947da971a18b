"""Whole-cascade evaluation of the shipped bundle on a held-out orCaScore-layout cohort (Araújo et al.,
Sect. 4; orCaScore protocol, Wolterink et al. 2016).

Runs ``configs/inference.json`` (the three stages with the shipped ``models/*.pt``) on every
``Training/Images/*.mhd`` of ``--dataset_dir``, once with and once without stage 3
(``use_fp_stage``), and scores the written segmentations against ``Training/Reference``:

* stage 1: Dice of the heart masks of the stage-1 network against the generator's heart masks (the
  same cohort in the NIfTI layout, ``--heart_dir``; optional), and the fraction of reference calcium
  voxels (> 130 HU) inside the patient's ROI box;
* stages 2 and 2 + 3: pixel precision / recall / F1 of the voxels > 130 HU (the paper's Table 5),
  orCaScore lesion detection per artery (sensitivity, PPV), lesion F1 (the protocol's majority vote; also
  ``lesion_f1_any_overlap``, the looser vote of versions before 0.6.3), Agatston and volume ICC(A,1),
  risk-category accuracy and linearly weighted kappa (``ctbundles.metrics.orcascore_evaluation``);
* stage 3 per lesion (``stage3_audit``): how many true and false lesions of the stage 1-2 output stage 3
  kept and removed, with their median volume and peak HU, and the removed true lesions by artery.

    python scripts/evaluate_cascade.py --dataset_dir HELDOUT_ORCASCORE --heart_dir HELDOUT_NIFTI --out eval/cascade.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from ctbundles.atomic_io import atomic_write_json
from ctbundles.datasets.orcascore import build_datalist
from ctbundles.metrics.orcascore_evaluation import (
    evaluate_predictions,
    pixel_scores,
    stage3_audit_summary,
    stage3_lesion_audit,
)
from ctbundles.transforms.calcium_transforms import geometry_from_meta
from ctbundles.transforms.ct_io import load_ct, load_label
from ctbundles.transforms.orcascore_cascade import heart_roi_box

BUNDLE = Path(__file__).resolve().parents[1]


def stage1_scores(items, heart_dir, overrides) -> dict:
    """Dice of the stage-1 heart masks (shipped ``model_roi.pt``, on the input of ``inference.json``'s
    ``preprocessing`` with ``overrides``) and the share of reference calcium inside the ROI box."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    net = inferer.roi_network
    net.load_state_dict(torch.load(BUNDLE / "models" / "model_roi.pt", map_location="cpu", weights_only=True))
    net.eval()
    inter = total = inside = calcium = 0
    for item in items:
        d = pre({"image": item["image"]})
        with torch.no_grad():
            mask = inferer.heart_masks(d["image"].as_tensor().cpu())
        hu = load_ct(item["image"]).numpy()
        ref = np.asarray(load_label(item["label"], like=load_ct(item["image"]))) > 0
        ref &= hu > 130
        box = heart_roi_box(mask, inferer.opening_size, margin=inferer.roi_box_margin)
        if box is not None:
            (x0, x1), (y0, y1) = box
            inside += int(ref[x0:x1, y0:y1].sum())
        calcium += int(ref.sum())
        if heart_dir:
            truth = json.load(open(item["truth"]))
            heart = np.asarray(load_label(os.path.join(heart_dir, "extrasTr", f"{truth['case_id']}_heart_mask.nii.gz"),
                                          like=load_ct(item["image"]))) > 0
            inter += int((mask & heart).sum())
            total += int(mask.sum() + heart.sum())
    return {"heart_dice": 2 * inter / total if total else float("nan"),
            "reference_calcium_inside_roi": inside / calcium if calcium else float("nan")}


def _segmentation(out_dir: Path, item, image) -> np.ndarray:
    """The label map ``inference.json`` wrote for ``item`` into ``out_dir``, on the image's grid."""
    return np.asarray(load_label(str(out_dir / f"{Path(item['image']).name.split('.')[0]}_seg.nii.gz"), like=image)).astype(np.int64)


def stage3_audit(items, work: Path) -> dict:
    """:func:`~ctbundles.metrics.orcascore_evaluation.stage3_audit_summary` of the segmentations in
    ``work/stages_1_2`` and ``work/stages_1_2_3``, one case in memory at a time."""
    audits = []
    for item in items:
        image = load_ct(item["image"])
        ref = np.asarray(load_label(item["label"], like=image)).astype(np.int64)
        ref[ref > 3] = 0  # orCaScore 4 = artery not determined, as evaluate_predictions
        spacing = geometry_from_meta(image)[0]
        audits.append(stage3_lesion_audit(image.numpy(), ref, _segmentation(work / "stages_1_2", item, image),
                                          _segmentation(work / "stages_1_2_3", item, image), spacing))
    return stage3_audit_summary(audits)


def _value(text: str):
    """A command-line value as ``monai.bundle run`` (python-fire) reads it: a Python literal (``0.5``,
    ``True``, ``None``, ``[64, 64]``), else the string (``both``, ``$None``). The same text goes to the
    ``monai.bundle run`` calls, so both read one value; JSON's ``true`` / ``null`` are strings to both."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset_dir", required=True, help="held-out cohort in the orCaScore layout")
    ap.add_argument("--heart_dir", default=None, help="the same cohort in the NIfTI layout (heart masks), for stage 1's Dice")
    ap.add_argument("--work_dir", default=None, help="where the segmentations go (default: <out folder>/cascade_work)")
    ap.add_argument("--override", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="an inference.json value for every run, as on the monai.bundle command line "
                         "(e.g. --override histogram_reference '$None' --override calcium_threshold 0.75)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    items = build_datalist(args.dataset_dir)["training"]
    work = Path(args.work_dir or Path(args.out).resolve().parent / "cascade_work")
    images = str(Path(args.dataset_dir) / "Training" / "Images")
    overrides = {key: _value(value) for key, value in args.override}
    result = {"cases": [i["case_id"] for i in items], "overrides": overrides,
              "stage1": stage1_scores(items, args.heart_dir, overrides)}
    for key, use_fp in (("stages_1_2", "$False"), ("stages_1_2_3", "$True")):
        out_dir = work / key
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
               "--bundle_root", str(BUNDLE), "--dataset_dir", images, "--output_dir", str(out_dir), "--use_fp_stage", use_fp]
        for name, value in args.override:
            cmd += [f"--{name}", value]
        t1 = time.time()
        subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        seconds = time.time() - t1
        ev = evaluate_predictions(items, out_dir)
        refs, preds = [], []
        for item in items:
            image = load_ct(item["image"])
            hu = image.numpy()
            ref = np.asarray(load_label(item["label"], like=image)).astype(np.int64)
            ref[(ref > 3) | (hu <= 130)] = 0
            pred = _segmentation(out_dir, item, image)
            pred[hu <= 130] = 0
            refs.append(ref)
            preds.append(pred)
        ev["pixels_above_130hu"] = pixel_scores(refs, preds)
        ev["lesion_f1"] = ev["lesions"]["all"]["f1"]
        ev["lesion_f1_any_overlap"] = ev["lesions_any_overlap"]["all"]["f1"]
        ev["inference_seconds"] = round(seconds, 1)
        result[key] = ev
    result["stage3_audit"] = stage3_audit(items, work)
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, result)
    short = {k: {"lesion_f1": v["lesion_f1"], "lesion_f1_any_overlap": v["lesion_f1_any_overlap"], "lesions": v["lesions"]["all"], "pixels": v["pixels_above_130hu"],
                 "agatston_icc": v["agatston_icc"], "risk_accuracy": v["risk_accuracy"], "kappa": v["risk_kappa_linear"]}
             for k, v in result.items() if k.startswith("stages")}
    print(json.dumps({"stage1": result["stage1"], **short, "stage3_audit": result["stage3_audit"]}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
