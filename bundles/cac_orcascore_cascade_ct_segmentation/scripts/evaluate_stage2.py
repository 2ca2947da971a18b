"""Pixel- and lesion-level scores of a trained stage-2 (calcium) network on the validation fold.

Stage 2 runs inside the heart ROI of the case's heart mask (stage 1 replaced by the reference heart
mask: the ROI of Sect. 3.2.1 from the generator's ``extrasTr/<case>_heart_mask.nii.gz`` of the same
cohort written in the NIfTI layout), then voxels below 130 HU are removed, as ``inference.json`` does.
Scores: pixel precision / recall / F1 (Araujo et al., Eqs. 1-3) against the reference voxels > 130 HU,
and the orCaScore lesion-level detection (3D 6-connected > 130 HU lesions), per artery and for all.
Optional stage 3 (``--fp_ckpt``): every predicted component's 96 x 96 window is re-segmented and the
kept voxels keep stage 2's artery (with and without stage 3, the paper's Table 5).
``--calcium_threshold t``: a voxel is calcium when ``1 - p(background) > t`` (``calcium_labels``, as
``inference.json``'s ``calcium_threshold``) instead of the argmax; ``--sweep t1,t2,...`` adds the stage-2
scores at each of these thresholds (the validation-fold choice of ``calcium_threshold``).
``--fp_threshold`` / ``--fp_sweep``: the same for stage 3's p(calcium) (``fp_threshold`` of ``inference.json``).

    python scripts/evaluate_stage2.py --config "['configs/train.json','configs/train_cpu_small.json']" \
        --dataset_dir COHORT_ORCASCORE --heart_dir COHORT_NIFTI --ckpt models/model.pt --out eval/stage2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer
from monai.transforms import Compose

from ctbundles.networks.orcascore_cascade import calcium_labels
from ctbundles.metrics.orcascore_evaluation import lesion_detection, orcascore_lesions, pixel_scores
from ctbundles.transforms.ct_io import load_ct, load_label
from ctbundles.transforms.orcascore_cascade import component_crop_boxes, extract_crops, heart_roi_box, paste_crops, widen_range


def false_positive_kinds(hu, ref, pred, negatives, affine, spacing, near_mm: float = 3.0, bone_voxels: int = 200) -> list[str]:
    """Diagnostic: where each false-positive lesion (3D 6-connected predicted > 130 HU voxels without a
    reference voxel) lies. ``aortic_valve`` / ``aortic_wall`` / ``bone_touching``: within ``near_mm`` of
    the ellipsoid of one of the generator's unlabelled calcifications (``hard_negatives``: ``center_mm`` in
    the generator's LPS mm, turned into RAS by negating x and y, then into voxels with ``affine``, the RAS
    affine of the NIfTI twin); ``bone``: inside a > 130 HU structure of more than ``bone_voxels``
    voxels without reference calcium (ribs, vertebrae, sternum); ``lesion_rim``: within ``near_mm`` of a
    reference lesion; ``other``: anywhere else (noise above 130 HU in soft tissue or blood)."""
    bright = hu > 130
    six = ndimage.generate_binary_structure(3, 1)
    ids, n = ndimage.label(bright & ((pred > 0) | (ref > 0)), six)
    big_ids, _ = ndimage.label(bright, six)
    big_size = np.bincount(big_ids.ravel())
    ref_dist = ndimage.distance_transform_edt(ref == 0, sampling=spacing) if ref.any() else np.full(hu.shape, np.inf)
    inv = np.linalg.inv(affine)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])  # up to session 6 the LPS centres went in as RAS: every aortic FP read as "other"
    centres = [(neg["kind"], inv[:3, :3] @ (np.asarray(neg["center_mm"]) * lps_to_ras) + inv[:3, 3], max(neg["size_mm"]) / 2) for neg in negatives]
    kinds = []
    for i, sl in enumerate(ndimage.find_objects(ids), start=1):
        comp = ids[sl] == i
        if (ref[sl][comp] > 0).any() or not (pred[sl][comp] > 0).any():
            continue
        vox = np.argwhere(comp) + [s.start for s in sl]
        kind = "other"
        for name, c, r in centres:
            if np.min(np.linalg.norm((vox - c) * np.asarray(spacing), axis=1)) <= r + near_mm:
                kind = name
                break
        else:
            if big_size[big_ids[tuple(vox[0])]] > bone_voxels:
                kind = "bone"
            elif ref_dist[tuple(vox.T)].min() <= near_mm:
                kind = "lesion_rim"
        kinds.append(kind)
    return kinds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--heart_dir", required=True, help="the same cohort in the NIfTI layout (heart masks in extrasTr)")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--fp_ckpt", default=None, help="stage-3 checkpoint (optional)")
    ap.add_argument("--fp_config", default=None, help="config list of the stage-3 network")
    ap.add_argument("--items", choices=("val", "all"), default="val", help="the validation fold (val) or every training item of the cohort (all: a held-out cohort)")
    ap.add_argument("--breakdown", action="store_true", help="sort the false-positive lesions by where they lie (diagnostic)")
    ap.add_argument("--calcium_threshold", type=float, default=None, help="1 - p(background) above which a voxel is calcium (default: argmax)")
    ap.add_argument("--sweep", default="", help="comma-separated thresholds: stage-2 scores at each")
    ap.add_argument("--fp_threshold", type=float, default=None, help="p(calcium) of stage 3 above which a voxel is kept (default: argmax)")
    ap.add_argument("--fp_sweep", default="", help="comma-separated stage-3 thresholds: stage 2 + 3 scores at each")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    bundle_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = ConfigParser()
    parser.read_config(json.loads(args.config.replace("'", '"')))
    parser["bundle_root"], parser["dataset_dir"] = bundle_root, args.dataset_dir
    items = parser.get_parsed_content("val_datalist" if args.items == "val" else "datalist")
    load = Compose(parser.get_parsed_content("load") + parser.get_parsed_content("intensity"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(args.ckpt, map_location="cpu"))
    net.eval()
    patch = int(parser.get_parsed_content("patch_size"))
    inferer = SliceInferer(roi_size=(patch, patch), spatial_dim=2, sw_batch_size=8, progress=False)
    fp_net = None
    if args.fp_ckpt:
        fp_parser = ConfigParser()
        fp_parser.read_config(json.loads(args.fp_config.replace("'", '"')))
        fp_net = fp_parser.get_parsed_content("network_def")
        fp_net.load_state_dict(torch.load(args.fp_ckpt, map_location="cpu"))
        fp_net.eval()
    sweep = [float(t) for t in args.sweep.split(",") if t.strip()]
    swept = {t: ([], []) for t in sweep}
    fp_sweep = [float(t) for t in args.fp_sweep.split(",") if t.strip()]
    fp_swept = {}
    refs, preds2, preds3, les2, les3, breakdown = [], [], [], [], [], {}
    for item in items:
        truth = json.load(open(item["truth"]))
        heart_file = os.path.join(args.heart_dir, "extrasTr", f"{truth['case_id']}_heart_mask.nii.gz")
        d = load(dict(item))
        scan = load_ct(item["image"])
        hu = scan.numpy()
        heart = load_label(heart_file, like=scan).numpy() > 0
        twin = load_ct(os.path.join(args.heart_dir, "imagesTr", f"{truth['case_id']}.nii.gz")).numpy()
        if not np.allclose(twin, hu, atol=1.0):
            raise SystemExit(f"{heart_file}: the NIfTI cohort is not the same cohort as {item['image']}")
        box = heart_roi_box(heart, opening_size=7)
        size = hu.shape[:2]
        box = tuple(widen_range(lo, hi, patch, n) for (lo, hi), n in zip(box, size))
        (x0, x1), (y0, y1) = box
        image = d["image"][None, :, x0:x1, y0:y1].float()
        with torch.no_grad():
            logits = inferer(image.as_tensor() if hasattr(image, "as_tensor") else image, net)
        probs = torch.softmax(logits, dim=1)

        def labels_at(threshold):
            full = np.zeros(hu.shape, np.int64)
            full[x0:x1, y0:y1] = calcium_labels(probs, threshold)[0].numpy()
            full[hu < 130] = 0
            return full

        pred = labels_at(args.calcium_threshold)
        ref = d["label"][0].numpy().astype(np.int64)
        ref[hu <= 130] = 0
        refs.append(ref)
        preds2.append(pred)
        spacing = [float(s) for s in d["image"].meta["spacing"]]
        for t in sweep:
            p_t = labels_at(t)
            swept[t][0].append(p_t)
            swept[t][1].append(orcascore_lesions(hu, ref, p_t, spacing))
        les2.append(orcascore_lesions(hu, ref, pred, spacing))
        if args.breakdown:
            affine = nib.load(os.path.join(args.heart_dir, "imagesTr", f"{truth['case_id']}.nii.gz")).affine
            negatives = truth["truth_native_labels"]["generator"]["hard_negatives"]
            for kind in false_positive_kinds(hu, ref, pred, negatives, affine, spacing):
                breakdown[kind] = breakdown.get(kind, 0) + 1
        if fp_net is not None:
            keeps = {t: np.zeros(hu.shape, bool) for t in [args.fp_threshold] + fp_sweep}
            img = d["image"][0].numpy()
            for z in range(hu.shape[2]):
                corners = component_crop_boxes(pred[:, :, z] > 0, 96)
                if not corners:
                    continue
                crops = torch.as_tensor(extract_crops(img[:, :, z], corners, 96))[:, None]
                with torch.no_grad():
                    fp_probs = torch.softmax(fp_net(crops), dim=1)
                for t, keep in keeps.items():
                    out = (calcium_labels(fp_probs, t) > 0).float().numpy()
                    keep[:, :, z] = paste_crops(out, corners, hu.shape[:2]) > 0
            for t, keep in keeps.items():
                p3 = np.where(keep, pred, 0)
                fp_swept.setdefault(t, ([], []))
                fp_swept[t][0].append(p3)
                fp_swept[t][1].append(orcascore_lesions(hu, ref, p3, spacing))
            preds3.append(fp_swept[args.fp_threshold][0][-1])
            les3.append(fp_swept[args.fp_threshold][1][-1])
    result = {
        "cases": [i["case_id"] for i in items],
        "calcium_threshold": args.calcium_threshold,
        "without_stage3": {"pixel": pixel_scores(refs, preds2), "lesion": lesion_detection(les2)},
        "seconds": round(time.time() - t0, 1),
    }
    if args.breakdown:
        result["false_positive_lesions_by_kind"] = breakdown
    if sweep:
        result["sweep"] = {}
        for t in sweep:
            result["sweep"][str(t)] = {"pixel": pixel_scores(refs, swept[t][0]), "lesion": lesion_detection(swept[t][1])}
    if fp_net is not None:
        result["fp_threshold"] = args.fp_threshold
        result["with_stage3"] = {"pixel": pixel_scores(refs, preds3), "lesion": lesion_detection(les3)}
        if fp_sweep:
            result["fp_sweep"] = {}
            for t in fp_sweep:
                result["fp_sweep"][str(t)] = {"pixel": pixel_scores(refs, fp_swept[t][0]), "lesion": lesion_detection(fp_swept[t][1])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: (v["pixel"], v["lesion"]["all"]) if isinstance(v, dict) and "pixel" in v else v for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
