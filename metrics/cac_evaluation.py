"""Evaluation of coronary calcium scoring as in DenseRAUnet (Ma and Zhang 2019, section 3, Tables 1
and 2) and the orCaScore protocol (REFERENCES.md section 2): pixel-level precision, recall and F1;
Agatston agreement by the two-way absolute-agreement intraclass correlation; risk-category accuracy
and linearly weighted Cohen's kappa.

Pure functions on numbers and arrays, so each is testable alone; :func:`summarize_cohort` combines
them for one cohort (chest or cardiac CT), with and without post-processing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ctbundles.metrics.agreement import icc_absolute_agreement, weighted_kappa
from ctbundles.transforms.calcium_scoring import RISK_CATEGORIES, risk_category_index

__all__ = [
    "RISK_CATEGORIES",
    "confusion_counts",
    "lesion_counts",
    "lesion_detection",
    "precision_recall_f1",
    "icc_absolute_agreement",
    "weighted_kappa",
    "category_accuracy",
    "risk_category_index",
    "summarize_cohort",
]

"""Classic Agatston risk categories in order (REFERENCES.md section 1)."""


def confusion_counts(pred, truth) -> tuple[int, int, int]:
    """(TP, FP, FN) pixel counts of two binary masks of the same shape (nonzero = positive)."""
    p = np.asarray(pred) > 0
    t = np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {t.shape}")
    return int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t))


def lesion_counts(pred, truth, connectivity: int = 1) -> tuple[int, int, int, int]:
    """Lesion-level counts of two binary 3D masks (orCaScore protocol, REFERENCES.md section 2):
    lesions are connected components (``connectivity`` 1 = 6-connected, 3 = 26-connected, in
    ``scipy.ndimage.generate_binary_structure`` terms). Returns ``(ref_detected, n_ref,
    pred_true, n_pred)``: reference lesions touched by the prediction, reference lesions,
    predicted lesions touching the reference, predicted lesions."""
    p = np.asarray(pred) > 0
    t = np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {t.shape}")
    structure = ndimage.generate_binary_structure(p.ndim, connectivity)
    lab_t, n_ref = ndimage.label(t, structure)
    lab_p, n_pred = ndimage.label(p, structure)
    ref_detected = len(np.unique(lab_t[p & t]))
    pred_true = len(np.unique(lab_p[p & t]))
    return int(ref_detected), int(n_ref), int(pred_true), int(n_pred)


def lesion_detection(ref_detected: int, n_ref: int, pred_true: int, n_pred: int) -> dict[str, float]:
    """Lesion sensitivity (detected / reference lesions), positive predictive value (true /
    predicted lesions) and their F1; empty sets count as perfect, as in :func:`precision_recall_f1`."""
    sens = ref_detected / n_ref if n_ref else 1.0
    ppv = pred_true / n_pred if n_pred else 1.0
    f1 = 2 * sens * ppv / (sens + ppv) if sens + ppv > 0 else 0.0
    return {"sensitivity": float(sens), "ppv": float(ppv), "f1": float(f1)}


def precision_recall_f1(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision TP/(TP+FP), recall TP/(TP+FN) and F1 = 2PR/(P+R) = 2TP/(2TP+FP+FN) (paper section 3).

    Conventions for empty sets: precision is 1 when nothing was predicted, recall is 1 when there
    is nothing to find, F1 is 1 when both masks are empty (and 0 when only one is).
    """
    precision = tp / (tp + fp) if tp + fp > 0 else 1.0
    recall = tp / (tp + fn) if tp + fn > 0 else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 1.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def category_accuracy(a: Sequence, b: Sequence) -> float:
    """Fraction of subjects put in the same category by both ratings (the paper's "CAC rate")."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("ratings differ in length")
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else float("nan")


def summarize_cohort(cases: Sequence[Mapping]) -> dict:
    """Cohort figures from per-case records.

    Each record holds ``agatston_ref`` and, for every ``variant`` in ("raw", "post") present,
    ``agatston_<variant>`` and pixel counts ``tp_<variant>``, ``fp_<variant>``, ``fn_<variant>``
    ("raw": the network mask thresholded at probability 0.5; "post": after the 130 HU rule and
    connected components, the paper's post-processing).

    Optional per-variant lesion counts ``lesions_detected_<v>``, ``lesions_ref_<v>``,
    ``lesions_true_<v>``, ``lesions_pred_<v>`` (:func:`lesion_counts`) add pooled lesion
    sensitivity, PPV and F1.

    Returns per variant: pooled pixel precision/recall/F1, mean per-case F1, Agatston ICC(A,1),
    risk-category accuracy and linearly weighted kappa, and ``n_cases``.
    """
    out: dict = {"n_cases": len(cases)}
    if not cases:
        return out
    ref = [float(c["agatston_ref"]) for c in cases]
    ref_cat = [risk_category_index(s) for s in ref]
    for variant in ("raw", "post"):
        if f"agatston_{variant}" not in cases[0]:
            continue
        tp = sum(int(c[f"tp_{variant}"]) for c in cases)
        fp = sum(int(c[f"fp_{variant}"]) for c in cases)
        fn = sum(int(c[f"fn_{variant}"]) for c in cases)
        pred = [float(c[f"agatston_{variant}"]) for c in cases]
        pred_cat = [risk_category_index(s) for s in pred]
        per_case = [
            precision_recall_f1(c[f"tp_{variant}"], c[f"fp_{variant}"], c[f"fn_{variant}"])["f1"] for c in cases
        ]
        lesions = {}
        if f"lesions_detected_{variant}" in cases[0]:
            lesions = lesion_detection(*(sum(int(c[f"{k}_{variant}"]) for c in cases)
                                         for k in ("lesions_detected", "lesions_ref", "lesions_true", "lesions_pred")))
        out[variant] = {
            **{f"pixel_{k}": v for k, v in precision_recall_f1(tp, fp, fn).items()},
            **{f"lesion_{k}": v for k, v in lesions.items()},
            "pixel_f1_mean_per_case": float(np.mean(per_case)),
            "agatston_icc": icc_absolute_agreement(np.column_stack([ref, pred])),
            "risk_category_accuracy": category_accuracy(ref_cat, pred_cat),
            "risk_category_kappa_linear": weighted_kappa(ref_cat, pred_cat, len(RISK_CATEGORIES)),
        }
    return out
