"""orCaScore evaluation protocol (Wolterink et al., Med Phys 2016; ../shared/REFERENCES.md section 2)
and the pixel-level metrics of Araújo et al. (Sect. 4.2, Eqs. 1-3; Table 5 with / without stage 3).

* Lesions: 3D 6-connected groups of voxels above 130 HU that the reference or the prediction labels
  as calcium; each lesion takes the majority label of the reference and of the prediction over all its
  voxels, unlabelled ones (0) included, so a prediction that covers a minority of a reference lesion's
  voxels does not detect it. Per artery, a lesion is a true positive when both give it that artery, a
  false negative when only the reference does, a false positive when only the prediction does.
  Sensitivity and positive predictive value by count and by volume, F1 on volume. The looser vote over
  the labelled voxels only (any overlap detects; this module's rule before version 0.6.3 of the cascade
  bundle) stays available as ``count_unlabelled=False`` and as ``"lesions_any_overlap"`` in
  :func:`evaluate_cohort`, so figures measured with it can still be compared.
* Per patient: Agatston and volume scores, agreement by the two-way random, absolute-agreement,
  single-measure intraclass correlation ICC(A,1) (McGraw & Wong 1996, case 2A = Shrout & Fleiss ICC(2,1)).
* Risk categories (0, 1-10, 11-100, 101-400, >400): linearly weighted Cohen's kappa.
* Pixel level (the paper's Table 5): precision, recall and F1 of calcium voxels, pooled over the set.
* Stage-3 audit (not part of either protocol): what the false-positive stage (Araújo et al., Sect. 3.2.3)
  does to each lesion of the stage 1-2 output, with the lesion's size and peak HU, to see which lesions
  it wrongly removes or keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ctbundles.metrics.agreement import icc_absolute_agreement, weighted_kappa
from ctbundles.transforms.calcium_scoring import RISK_CATEGORIES, risk_category_index

__all__ = [
    "ORCASCORE_ARTERIES",
    "RISK_CATEGORIES",
    "orcascore_lesions",
    "lesion_detection",
    "icc_absolute_agreement",
    "weighted_kappa",
    "risk_category_index",
    "pixel_scores",
    "stage3_comparison",
    "stage3_lesion_audit",
    "stage3_audit_summary",
    "evaluate_cohort",
    "evaluate_predictions",
    "pool_evaluations",
]

#: orCaScore reference labels (REFERENCES.md section 1)
ORCASCORE_ARTERIES = {"LAD": 1, "LCX": 2, "RCA": 3}


def _majority_label(component_ids: np.ndarray, labels: np.ndarray, n: int, count_unlabelled: bool = True) -> np.ndarray:
    """Majority label of each component 1..n of ``component_ids`` (0 = background outside the components).

    ``count_unlabelled``: the vote runs over every voxel of the component, label 0 included (the orCaScore
    rule, REFERENCES.md section 2); otherwise over its labelled voxels only (0 only when none is labelled).
    Ties go to the smallest label, so a component half labelled and half not counts as unlabelled.
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.min(initial=0) < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {labels.min()}")
    sel = component_ids > 0 if count_unlabelled else (component_ids > 0) & (labels > 0)
    counts = np.zeros((n + 1, int(labels.max(initial=0)) + 1), np.int64)
    np.add.at(counts, (component_ids[sel], labels[sel]), 1)
    out = counts.argmax(axis=1)
    out[counts.sum(axis=1) == 0] = 0
    return out[1:]


def _lesion_groups(hu: np.ndarray, label_maps: Sequence[np.ndarray], spacing: Sequence[float], threshold_hu: float):
    """The orCaScore lesions over the voxels ``> threshold_hu`` that any of ``label_maps`` labels (value > 0):
    3D 6-connected component ids, their number and each lesion's volume in mm^3."""
    labelled = np.zeros(hu.shape, bool)
    for labels in label_maps:
        labelled |= labels > 0
    ids, n = ndimage.label((hu > threshold_hu) & labelled, structure=ndimage.generate_binary_structure(3, 1))
    volume = np.bincount(ids.ravel(), minlength=n + 1)[1:] * float(np.prod(spacing))
    return ids, n, volume


def orcascore_lesions(hu, reference, prediction, spacing: Sequence[float] = (1.0, 1.0, 1.0), threshold_hu: float = 130.0,
                      count_unlabelled: bool = True) -> dict:
    """Lesions of the orCaScore protocol: 3D 6-connected groups of voxels ``> threshold_hu``.

    Only voxels that the reference or the prediction labels (value > 0) are grouped; each group takes
    the majority label of the reference and of the prediction (:func:`_majority_label`; with
    ``count_unlabelled`` false, any labelled voxel decides). Returns ``{"reference_label",
    "predicted_label", "volume_mm3"}`` arrays, one entry per lesion.
    """
    hu, ref, pred = np.asarray(hu), np.asarray(reference), np.asarray(prediction)
    if not (hu.shape == ref.shape == pred.shape):
        raise ValueError(f"image {hu.shape}, reference {ref.shape} and prediction {pred.shape} must have the same shape")
    ids, n, volume = _lesion_groups(hu, (ref, pred), spacing, threshold_hu)
    return {
        "reference_label": _majority_label(ids, ref, n, count_unlabelled),
        "predicted_label": _majority_label(ids, pred, n, count_unlabelled),
        "volume_mm3": volume,
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def lesion_detection(lesion_sets: Sequence[Mapping], arteries: Mapping[str, int] = ORCASCORE_ARTERIES) -> dict:
    """Lesion-level detection per artery and for all calcium, pooled over the lesions of all patients.

    Each entry: ``tp``, ``fp``, ``fn`` (counts), ``tp_mm3``, ``fp_mm3``, ``fn_mm3``, ``sensitivity``,
    ``ppv``, ``f1`` (2 TP / (2 TP + FP + FN) of the counts), ``sensitivity_volume``, ``ppv_volume``,
    ``f1_volume``; a ratio with an empty denominator is NaN. ``"all"`` ignores the artery
    (calcium found anywhere vs. not).
    """
    ref = np.concatenate([np.asarray(s["reference_label"]) for s in lesion_sets]) if lesion_sets else np.zeros(0, int)
    pred = np.concatenate([np.asarray(s["predicted_label"]) for s in lesion_sets]) if lesion_sets else np.zeros(0, int)
    vol = np.concatenate([np.asarray(s["volume_mm3"]) for s in lesion_sets]) if lesion_sets else np.zeros(0)
    groups = {name: (ref == v, pred == v) for name, v in arteries.items()}
    groups["all"] = (ref > 0, pred > 0)
    out = {}
    for name, (r, p) in groups.items():
        tp, fp, fn = r & p, p & ~r, r & ~p
        out[name] = _detection_entry(int(tp.sum()), int(fp.sum()), int(fn.sum()),
                                     float(vol[tp].sum()), float(vol[fp].sum()), float(vol[fn].sum()))
    return out


def _detection_entry(tp: int, fp: int, fn: int, tp_mm3: float, fp_mm3: float, fn_mm3: float) -> dict:
    """One :func:`lesion_detection` entry: the counts and volumes with their ratios."""
    return {"tp": tp, "fp": fp, "fn": fn, "tp_mm3": tp_mm3, "fp_mm3": fp_mm3, "fn_mm3": fn_mm3,
            "sensitivity": _ratio(tp, tp + fn), "ppv": _ratio(tp, tp + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "sensitivity_volume": _ratio(tp_mm3, tp_mm3 + fn_mm3), "ppv_volume": _ratio(tp_mm3, tp_mm3 + fp_mm3),
            "f1_volume": _ratio(2 * tp_mm3, 2 * tp_mm3 + fp_mm3 + fn_mm3)}


def pixel_scores(references: Sequence, predictions: Sequence) -> dict:
    """Precision, recall and F1 of calcium voxels (label > 0), pooled over all cases (Araújo et al., Eqs. 1-3)."""
    tp = fp = fn = 0
    for r, p in zip(references, predictions):
        r, p = np.asarray(r) > 0, np.asarray(p) > 0
        if r.shape != p.shape:
            raise ValueError(f"reference {r.shape} and prediction {p.shape} differ")
        tp += int((r & p).sum())
        fp += int((~r & p).sum())
        fn += int((r & ~p).sum())
    return _pixel_entry(tp, fp, fn)


def _pixel_entry(tp: int, fp: int, fn: int) -> dict:
    """One :func:`pixel_scores` result: the counts with precision, recall and F1."""
    return {"tp": tp, "fp": fp, "fn": fn, "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def stage3_comparison(references: Sequence, without_stage3: Sequence, with_stage3: Sequence) -> dict:
    """The paper's Table 5: pixel precision, recall and F1 without and with false-positive removal."""
    return {"without_stage3": pixel_scores(references, without_stage3), "with_stage3": pixel_scores(references, with_stage3)}


def stage3_lesion_audit(hu, reference, without_stage3, with_stage3, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                        threshold_hu: float = 130.0) -> dict:
    """Every lesion of one case before and after stage 3 (Araújo et al., Sect. 3.2.3).

    Lesions are :func:`orcascore_lesions`' groups over the voxels that the reference, the stage 1-2 output
    (``without_stage3``) or the stage 1-2-3 output labels. Returns arrays, one entry per lesion:
    ``reference_label``, ``before_label``, ``after_label`` (majority labels, 0 = none), ``volume_mm3`` and
    ``peak_hu``; the labels are majorities over all the lesion's voxels, as :func:`orcascore_lesions`. A lesion
    with ``before_label > 0`` and ``after_label == 0`` is one that stage 3 removed (or cut below half of it).
    """
    hu, ref = np.asarray(hu), np.asarray(reference)
    before, after = np.asarray(without_stage3), np.asarray(with_stage3)
    if not (hu.shape == ref.shape == before.shape == after.shape):
        raise ValueError(f"image {hu.shape}, reference {ref.shape} and the predictions {before.shape}, {after.shape} "
                         "must have the same shape")
    ids, n, volume = _lesion_groups(hu, (ref, before, after), spacing, threshold_hu)
    peak = np.asarray(ndimage.maximum(hu, ids, np.arange(1, n + 1)), np.float64).reshape(n)
    return {"reference_label": _majority_label(ids, ref, n), "before_label": _majority_label(ids, before, n),
            "after_label": _majority_label(ids, after, n), "volume_mm3": volume, "peak_hu": peak}


def stage3_audit_summary(audits: Sequence[Mapping], arteries: Mapping[str, int] = ORCASCORE_ARTERIES) -> dict:
    """Pooled :func:`stage3_lesion_audit` results: what stage 3 did to the lesions stages 1-2 found.

    Groups, calcium found anywhere (the ``"all"`` of :func:`lesion_detection`): ``true_kept`` / ``true_removed``
    (reference lesions that stages 1-2 found and stage 3 kept / removed), ``false_kept`` / ``false_removed``
    (stage 1-2 false lesions), ``missed`` (reference lesions stages 1-2 did not find). Each group gives
    ``n`` and the median ``volume_mm3`` and ``peak_hu`` (NaN when empty); ``true_removed_by_artery``
    counts the removed reference lesions by their reference artery.
    """
    cat = {k: np.concatenate([np.asarray(a[k]) for a in audits]) if audits else np.zeros(0)
           for k in ("reference_label", "before_label", "after_label", "volume_mm3", "peak_hu")}
    ref, found, kept = cat["reference_label"] > 0, cat["before_label"] > 0, cat["after_label"] > 0
    groups = {"true_kept": ref & found & kept, "true_removed": ref & found & ~kept,
              "false_kept": ~ref & found & kept, "false_removed": ~ref & found & ~kept, "missed": ref & ~found}
    out = {name: {"n": int(sel.sum()),
                  "median_volume_mm3": float(np.median(cat["volume_mm3"][sel])) if sel.any() else float("nan"),
                  "median_peak_hu": float(np.median(cat["peak_hu"][sel])) if sel.any() else float("nan")}
           for name, sel in groups.items()}
    removed = groups["true_removed"]
    out["true_removed_by_artery"] = {name: int((removed & (cat["reference_label"] == v)).sum()) for name, v in arteries.items()}
    return out


def evaluate_cohort(cases: Sequence[Mapping]) -> dict:
    """The full protocol over cases ``{"hu", "reference", "prediction", "spacing", "agatston_reference",
    "agatston_predicted", "volume_reference", "volume_predicted"}`` (scores from the project's scoring).

    ``"lesions"`` follows the protocol's majority vote; ``"lesions_any_overlap"`` is the same count with
    the vote over labelled voxels only (:func:`orcascore_lesions` with ``count_unlabelled=False``).
    """
    lesions, loose = [], []
    for c in cases:
        args = (c["hu"], c["reference"], c["prediction"], c.get("spacing", (1, 1, 1)))
        lesions.append(orcascore_lesions(*args))
        loose.append(orcascore_lesions(*args, count_unlabelled=False))
    return {
        "lesions": lesion_detection(lesions),
        "lesions_any_overlap": lesion_detection(loose),
        **_score_agreement(cases),
        "pixels": pixel_scores([c["reference"] for c in cases], [c["prediction"] for c in cases]),
    }


def _score_agreement(cases: Sequence[Mapping]) -> dict:
    """Agatston and volume ICC(A,1), risk-category kappa and accuracy over per-case scores."""
    ag_r = [c["agatston_reference"] for c in cases]
    ag_p = [c["agatston_predicted"] for c in cases]
    return {
        "agatston_icc": icc_absolute_agreement(ag_r, ag_p) if len(cases) > 1 else float("nan"),
        "volume_icc": icc_absolute_agreement([c["volume_reference"] for c in cases], [c["volume_predicted"] for c in cases]) if len(cases) > 1 else float("nan"),
        "risk_kappa_linear": weighted_kappa([risk_category_index(s) for s in ag_r], [risk_category_index(s) for s in ag_p], len(RISK_CATEGORIES)),
        "risk_accuracy": float(np.mean([risk_category_index(r) == risk_category_index(p) for r, p in zip(ag_r, ag_p)])),
    }


def pool_evaluations(results: Sequence[Mapping]) -> dict:
    """Results of :func:`evaluate_predictions` on disjoint cohorts, pooled as one cohort would give them.

    Lesion counts and volumes per artery (``"lesions"``, and ``"lesions_any_overlap"`` when every result has
    it) and the pixel counts (``"pixels"`` and any other entry with
    ``tp`` / ``fp`` / ``fn``, e.g. ``"pixels_above_130hu"``) are summed and their ratios recomputed;
    ICC, kappa and risk accuracy are computed over the per-case scores (``"cases"``) of all cohorts.
    """
    if not results:
        raise ValueError("pool_evaluations: no results to pool")
    cases = [row for r in results for row in r["cases"]]
    pooled = {}
    for key in ("lesions", "lesions_any_overlap"):
        if not all(key in r for r in results):
            continue  # results written before the any-overlap entry existed
        pooled[key] = {}
        for name in results[0][key]:
            counts = [int(sum(r[key][name][k] for r in results)) for k in ("tp", "fp", "fn")]
            volumes = [float(sum(r[key][name][k] for r in results)) for k in ("tp_mm3", "fp_mm3", "fn_mm3")]
            pooled[key][name] = _detection_entry(*counts, *volumes)
    pooled.update(**_score_agreement(cases), cases=cases)
    for key, value in results[0].items():
        if isinstance(value, Mapping) and {"tp", "fp", "fn"} <= set(value):
            pooled[key] = _pixel_entry(*(sum(int(r[key][k]) for r in results) for k in ("tp", "fp", "fn")))
    return pooled


def evaluate_predictions(items: Sequence[Mapping], prediction_dir, postfix: str = "_seg", ext: str = ".nii.gz") -> dict:
    """The protocol for inference outputs: each datalist item ``{"image", "label"}`` is paired with
    ``<prediction_dir>/<image stem><postfix><ext>`` (what ``inference.json`` writes); scores by the
    project's :func:`~ctbundles.transforms.calcium_scoring.score_calcium` with the orCaScore artery labels.

    Returns :func:`evaluate_cohort`'s dict plus ``"cases"`` (per-case Agatston and volume, both sides).
    """
    from pathlib import Path

    from ctbundles.errors import CTInputError
    from ctbundles.transforms.calcium_scoring import CalciumScoreParams, score_calcium
    from ctbundles.transforms.calcium_transforms import geometry_from_meta
    from ctbundles.transforms.ct_io import load_ct, load_label

    params = CalciumScoreParams(artery_labels=dict(ORCASCORE_ARTERIES))
    cases, rows = [], []
    for item in items:
        image = load_ct(item["image"])
        stem = Path(item["image"]).name.split(".")[0]
        pred_path = Path(prediction_dir) / f"{stem}{postfix}{ext}"
        if not pred_path.is_file():
            raise CTInputError(f"{pred_path}: no prediction for {item['image']}")
        ref = np.asarray(load_label(item["label"], like=image)).astype(np.int64)
        ref[ref > 3] = 0  # orCaScore 4 = artery not determined: not an artery lesion
        pred = np.asarray(load_label(str(pred_path), like=image)).astype(np.int64)
        hu = np.asarray(image, np.float32)
        spacing, increment, _ = geometry_from_meta(image)
        s_ref = score_calcium(hu, ref, spacing, slice_increment_mm=increment, params=params)
        s_pred = score_calcium(hu, pred, spacing, slice_increment_mm=increment, params=params)
        cases.append({"hu": hu, "reference": ref, "prediction": pred, "spacing": spacing,
                      "agatston_reference": s_ref["agatston"], "agatston_predicted": s_pred["agatston"],
                      "volume_reference": s_ref["volume_mm3"], "volume_predicted": s_pred["volume_mm3"]})
        rows.append({"image": str(item["image"]), "agatston_reference": s_ref["agatston"], "agatston_predicted": s_pred["agatston"],
                     "volume_reference": s_ref["volume_mm3"], "volume_predicted": s_pred["volume_mm3"]})
    result = evaluate_cohort(cases)
    result["cases"] = rows
    return result
