"""Evaluation of ICAC segmentations as reported by Bortsova et al., MICCAI 2017 (Sec. 4, Table 1, Fig. 2).

- per-image Dice, mean and standard deviation;
- absolute Dice: "the overlap between the network segmentations and the ground truth without
  averaging over the images", i.e. 2 sum|A and B| / (sum|A| + sum|B|) pooled over the images;
- mean Dice per quarter: images ordered by increasing reference ICAC volume and partitioned into
  four equally sized groups;
- intraclass correlation and Pearson correlation of predicted versus reference ICAC volumes;
- a scatter plot of predicted versus reference volume (the paper's Fig. 2, left, is a 2D
  histogram; the bundle draws the scatter on the same axes).

The paper does not name its ICC form; this module uses ICC(A,1), the two-way, absolute-agreement,
single-measure ICC (McGraw and Wong 1996; Shrout and Fleiss ICC(2,1)), the form the project uses
for calcium scores (REFERENCES.md section 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctbundles.atomic_io import atomic_write
from ctbundles.metrics.agreement import icc_absolute_agreement

__all__ = [
    "dice_counts",
    "dice_score",
    "pooled_dice",
    "quarter_means",
    "icc_absolute_agreement",
    "pearson",
    "summarize",
    "save_volume_scatter",
]


def dice_counts(pred, ref) -> tuple[int, int, int]:
    """(|A and B|, |A|, |B|) of two binary masks (nonzero = foreground) of the same shape."""
    a = np.asarray(pred) != 0
    b = np.asarray(ref) != 0
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from reference shape {b.shape}")
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b))


def dice_score(pred, ref, empty: float = 1.0) -> float:
    """Dice = 2 |A and B| / (|A| + |B|); ``empty`` when both masks are empty."""
    inter, na, nb = dice_counts(pred, ref)
    return float(empty) if na + nb == 0 else 2.0 * inter / (na + nb)


def pooled_dice(counts: Sequence[Sequence[int]]) -> float:
    """Absolute (pooled) Dice from per-image (|A and B|, |A|, |B|): 2 sum|A and B| / (sum|A| + sum|B|)."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    denom = c[:, 1].sum() + c[:, 2].sum()
    return float("nan") if denom == 0 else float(2.0 * c[:, 0].sum() / denom)


def quarter_means(dice: Sequence[float], ref_volume: Sequence[float], groups: int = 4) -> list[float]:
    """Mean Dice per group of images ordered by increasing reference volume (paper Table 1).

    The images are sorted by ``ref_volume`` (stable, ties keep input order) and split into
    ``groups`` groups as equal as possible (``numpy.array_split``: the first groups get the extra
    images). Returns one mean per group (NaN for an empty group).
    """
    d = np.asarray(dice, dtype=np.float64)
    v = np.asarray(ref_volume, dtype=np.float64)
    if d.shape != v.shape:
        raise ValueError(f"{d.size} Dice values but {v.size} volumes")
    order = np.argsort(v, kind="stable")
    return [float(np.mean(d[g])) if g.size else float("nan") for g in np.array_split(order, groups)]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation coefficient (NaN when either variable is constant or n < 2)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarize(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Cohort summary of per-case records.

    Each record holds ``dice``, ``intersection``, ``n_pred``, ``n_ref`` (voxel counts),
    ``pred_volume_mm3`` and ``ref_volume_mm3``. Returns the paper's figures: ``n_cases``,
    ``dice_mean``, ``dice_sd`` (sample SD, ddof=1), ``absolute_dice``, ``dice_per_quarter`` (4
    means, by increasing reference volume), ``volume_icc`` (ICC(A,1)), ``volume_pearson``.
    """
    if not cases:
        raise ValueError("no cases to summarize")
    dice = np.array([c["dice"] for c in cases], dtype=np.float64)
    pred_v = [float(c["pred_volume_mm3"]) for c in cases]
    ref_v = [float(c["ref_volume_mm3"]) for c in cases]
    counts = [(c["intersection"], c["n_pred"], c["n_ref"]) for c in cases]
    return {
        "n_cases": len(cases),
        "dice_mean": float(dice.mean()),
        "dice_sd": float(dice.std(ddof=1)) if dice.size > 1 else 0.0,
        "absolute_dice": _nan_to_none(pooled_dice(counts)),
        "dice_per_quarter": [_nan_to_none(v) for v in quarter_means(dice, ref_v)],
        "volume_icc": _nan_to_none(icc_absolute_agreement(pred_v, ref_v)),
        "volume_pearson": _nan_to_none(pearson(pred_v, ref_v)),
        "icc_form": "ICC(A,1): two-way random, absolute agreement, single measure",
    }


def save_volume_scatter(pred_volume: Sequence[float], ref_volume: Sequence[float], path: str | os.PathLike,
                        title: str = "ICAC volume") -> Path:
    """PNG scatter of predicted (y) versus reference (x) ICAC volume with the identity line.

    Written atomically (temporary file in the same folder, then ``os.replace``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(ref_volume, dtype=np.float64)
    y = np.asarray(pred_volume, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.scatter(x, y, s=12, alpha=0.8)
    top = float(max(x.max(initial=0.0), y.max(initial=0.0), 1.0)) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=1)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("reference ICAC volume (mm$^3$)")
    ax.set_ylabel("predicted ICAC volume (mm$^3$)")
    ax.set_title(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path
