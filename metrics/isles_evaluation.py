"""ISLES 2018 evaluation: Dice, Hausdorff distance, absolute volume difference, precision, recall.

The official ISLES 2018 metrics (challenge evaluation; REFERENCES.md section 3), per case and
averaged, with truth A and prediction B (binary masks on the same grid):

* Dice = |A and B| / ((|A| + |B|) / 2);
* Hausdorff distance (HD) = the maximum symmetric surface distance in mm (not HD95), computed with
  MONAI's ``compute_hausdorff_distance(percentile=None)`` on the voxel spacing;
* AVD = volume difference, signed (B - A) in mm^3 as the challenge code computes it, reported
  absolute in mL;
* precision = |A and B| / |B|, recall = |A and B| / |A|.

Empty masks, two conventions (``convention``):

* ``"isles2018"`` (the 2018 challenge code, default): two empty masks score Dice 0, precision 0 and
  recall 0; HD is the sentinel whenever a mask is empty.
* ``"isles2022"`` (the ISLES 2022 evaluation code): two empty masks score Dice 1.0 (and precision,
  recall 1.0, HD 0 mm, a perfect agreement).

In both, one empty mask gives Dice 0, the zero-denominator ratio 0, and HD = ``hd_sentinel``. The
sentinel default, 1e8 mm, is inferred from the leaderboard (MS-DCNN paper, Table 1): a mean HD of
about 1.94e7 with SD 3.95e7 fits 12 of the 62 test samples (19.4 %) scoring 1e8 and the rest a few
tens of mm (mean = f S, SD = S sqrt(f (1 - f)) gives f = 0.194, S = 1.0e8).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from ctbundles.errors import CTInputError

__all__ = ["CONVENTIONS", "HD_SENTINEL_MM", "METRIC_NAMES", "isles_case_metrics", "summarize_cases", "fold_split", "isles_datalist"]

CONVENTIONS = ("isles2018", "isles2022")
HD_SENTINEL_MM = 1e8
METRIC_NAMES = ("dice", "hd_mm", "avd_ml", "precision", "recall")


def _as_bool(mask: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if t.dtype != torch.bool:
        t = t > 0.5
    return t.detach().cpu()


def isles_case_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float],
    convention: str = "isles2018",
    hd_sentinel: float = HD_SENTINEL_MM,
) -> dict[str, Any]:
    """ISLES 2018 metrics of one case.

    Args:
        pred: predicted mask, spatial ``(X, Y, Z)`` or channel-first ``(1, X, Y, Z)``; > 0.5 is lesion.
        truth: reference mask, same shape.
        spacing: voxel size in mm along the spatial axes.
        convention: ``"isles2018"`` or ``"isles2022"`` (empty masks, see the module docstring).
        hd_sentinel: HD when a mask is empty.

    Returns:
        dict with ``dice``, ``hd_mm``, ``avd_mm3`` (signed, pred - truth), ``avd_ml`` (absolute),
        ``precision``, ``recall``, ``volume_pred_ml``, ``volume_truth_ml``, ``tp``, ``fp``, ``fn``,
        ``empty`` ("none", "pred", "truth" or "both") and ``convention``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    p, t = _as_bool(pred), _as_bool(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(t.shape)}")
    if p.ndim == len(spacing) + 1:
        p, t = p[0], t[0]
    if p.ndim != len(spacing):
        raise ValueError(f"spacing {tuple(spacing)} does not match mask shape {tuple(p.shape)}")
    voxel_mm3 = float(np.prod(spacing))
    tp = int((p & t).sum())
    n_pred, n_truth = int(p.sum()), int(t.sum())
    fp, fn = n_pred - tp, n_truth - tp
    empty = "both" if n_pred == n_truth == 0 else "pred" if n_pred == 0 else "truth" if n_truth == 0 else "none"
    both_empty_score = 1.0 if convention == "isles2022" else 0.0
    pb, tb = p[None, None].float(), t[None, None].float()
    if empty == "both":
        dice, precision, recall = both_empty_score, both_empty_score, both_empty_score
        hd = 0.0 if convention == "isles2022" else hd_sentinel
    else:
        dice = float(compute_dice(pb, tb, include_background=True, ignore_empty=False)[0, 0])
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_truth if n_truth else 0.0
        if empty == "none":
            hd = float(compute_hausdorff_distance(pb, tb, include_background=True, spacing=list(map(float, spacing)))[0, 0])
        else:
            hd = hd_sentinel
    avd_mm3 = (n_pred - n_truth) * voxel_mm3
    return {
        "dice": dice,
        "hd_mm": hd,
        "avd_mm3": avd_mm3,
        "avd_ml": abs(avd_mm3) / 1000.0,
        "precision": precision,
        "recall": recall,
        "volume_pred_ml": n_pred * voxel_mm3 / 1000.0,
        "volume_truth_ml": n_truth * voxel_mm3 / 1000.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "empty": empty,
        "convention": convention,
    }


def summarize_cases(cases: Iterable[Mapping[str, Any]], metrics: Sequence[str] = METRIC_NAMES) -> dict[str, Any]:
    """Mean and SD (population, ``ddof=0`` as numpy) of each metric over cases, as the leaderboard
    reports them ("mean (SD)"); ``n`` and the number of cases with an empty mask are included."""
    rows = list(cases)
    out: dict[str, Any] = {"n": len(rows), "n_empty": {k: sum(r.get("empty") == k for r in rows) for k in ("pred", "truth", "both")}}
    for name in metrics:
        values = np.asarray([float(r[name]) for r in rows], dtype=float)
        out[name] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "sd": float(values.std()) if len(values) else math.nan,
        }
    return out


def fold_split(items: Sequence[Mapping[str, Any]], fold: int, n_folds: int = 5) -> tuple[list, list]:
    """Split datalist items into (training, validation) for cross-validation fold ``fold``.

    Items carry the ``fold`` their datalist assigned (grouped by patient, so both slabs A/B of a
    patient land in the same fold). Items without ``fold`` are assigned by their ``patient`` (or
    ``image``) name through a stable hash, so the grouping holds there too.
    """
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
    train, val = [], []
    for item in items:
        f = item.get("fold")
        if f is None:
            key = str(item.get("patient") or item.get("image") or item.get("CBF"))
            f = zlib.crc32(key.encode()) % n_folds
        (val if int(f) == fold else train).append(item)
    return train, val


def isles_datalist(dataset_dir: str | os.PathLike, section: str = "training") -> list[dict[str, Any]]:
    """Datalist items of an ISLES 2018 dataset, with absolute paths.

    ``dataset_dir`` is a folder in the ISLES 2018 layout, read by
    ``ctbundles.datasets.isles2018.build_datalist`` (items with the four maps, ``label``,
    ``patient`` and a patient-grouped ``fold``), or a datalist JSON written by ``ctbundles datalist``
    (relative paths resolved against its ``base_dir``, else the JSON's folder).
    """
    path = Path(dataset_dir)
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        base = Path(data.get("base_dir") or path.parent)

        def absolute(v: Any) -> Any:
            if isinstance(v, list):
                return [absolute(x) for x in v]
            if isinstance(v, str) and (v.endswith(".nii") or v.endswith(".nii.gz")) and not os.path.isabs(v):
                return str(base / v)
            return v

        return [{k: absolute(v) for k, v in item.items()} for item in data[section]]
    if not path.is_dir():
        raise CTInputError(f"{path}: no ISLES 2018 folder or datalist JSON there")
    from ctbundles.datasets.isles2018 import build_datalist

    return list(build_datalist(str(path), relative=False)[section])
