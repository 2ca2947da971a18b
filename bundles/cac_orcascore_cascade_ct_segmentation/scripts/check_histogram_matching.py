"""What the histogram matching of ``inference.json`` does to calcium: raw against matched peak HU per lesion.

Araújo et al. (Sect. 3.2.1) match every scan to a reference slice so that scans look alike and calcium stands
out. ``HistogramMatch`` matches the whole volume (flattened) to the 2D reference; this script measures, on
a cohort in the orCaScore layout, per reference lesion (orCaScore: 3D 6-connected voxels > 130 HU, labels
1-3) its raw peak HU and its peak after matching the whole volume and after matching each slice alone, and
per case the matching map at fixed raw HU values and the case's fraction of voxels above 130 HU (against
the reference's). Use it on validation cohorts only.

    python scripts/check_histogram_matching.py --dataset_dir COHORT --items val --out eval/hm_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy import ndimage
from skimage.exposure import match_histograms

from ctbundles.atomic_io import atomic_write_json
from ctbundles.datasets.orcascore import build_datalist
from ctbundles.transforms.ct_io import load_ct, load_label
from ctbundles.transforms.orcascore_cascade import load_histogram_reference

ARTERIES = {1: "LAD", 2: "LCX", 3: "RCA"}
RAW_HU = (40, 130, 175, 200, 300, 400)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset_dir", required=True, action="append", help="cohort(s) in the orCaScore layout")
    ap.add_argument("--items", choices=("val", "all"), action="append", help="per cohort: fold 0 (val) or every case (all)")
    ap.add_argument("--reference", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "histogram_reference.npy"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.time()
    ref = load_histogram_reference(args.reference)
    six = ndimage.generate_binary_structure(3, 1)
    lesions, cases = [], []
    for root, sel in zip(args.dataset_dir, args.items or ["val"] * len(args.dataset_dir)):
        items = build_datalist(root)["training"]
        items = [d for d in items if d["fold"] == 0] if sel == "val" else items
        for item in items:
            scan = load_ct(item["image"])
            hu = scan.numpy().astype(np.float32)
            lab = np.asarray(load_label(item["label"], like=scan))
            by_volume = match_histograms(hu.ravel(), ref.ravel()).reshape(hu.shape)
            by_slice = np.stack([match_histograms(hu[..., k].ravel(), ref.ravel()).reshape(hu.shape[:2]) for k in range(hu.shape[2])], -1)
            order = np.argsort(hu.ravel())
            cases.append({"case": item["case_id"], "fraction_above_130": float((hu > 130).mean()),
                          "matched_at_raw_hu": {str(t): float(np.interp(t, hu.ravel()[order], by_volume.ravel()[order])) for t in RAW_HU}})
            ids, n = ndimage.label((hu > 130) & (lab > 0) & (lab < 4), six)
            for i in range(1, n + 1):
                c = ids == i
                lesions.append({"case": item["case_id"], "artery": ARTERIES[int(np.bincount(lab[c].astype(np.int64)).argmax())],
                                "voxels": int(c.sum()), "raw_peak": float(hu[c].max()),
                                "matched_peak_volume": float(by_volume[c].max()), "matched_peak_slice": float(by_slice[c].max())})
    summary = {"reference_fraction_above_130": float((ref > 130).mean()), "lesions": len(lesions)}
    for art in ("LAD", "LCX", "RCA", None):
        sel = [x for x in lesions if art is None or x["artery"] == art]
        summary[art or "all"] = {
            "lesions": len(sel),
            "median_raw_peak": float(np.median([x["raw_peak"] for x in sel])) if sel else None,
            "median_matched_peak_volume": float(np.median([x["matched_peak_volume"] for x in sel])) if sel else None,
            "matched_peak_volume_at_most_130": sum(x["matched_peak_volume"] <= 130 for x in sel),
            "matched_peak_slice_at_most_130": sum(x["matched_peak_slice"] <= 130 for x in sel),
        }
    fr = np.array([c["fraction_above_130"] for c in cases])
    summary["cases"] = {"fraction_above_130_min_median_max": [float(fr.min()), float(np.median(fr)), float(fr.max())]}
    for t in RAW_HU:
        v = np.array([c["matched_at_raw_hu"][str(t)] for c in cases])
        summary["cases"][f"matched_at_{t}_min_median_max"] = [float(v.min()), float(np.median(v)), float(v.max())]
    summary["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, {"summary": summary, "cases": cases, "lesions": lesions})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
