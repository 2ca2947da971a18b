"""Coronary and intracranial calcium scores from a CT in HU and a calcium label.

Implements ``REFERENCES.md`` section 1 exactly:

* Agatston score (Agatston et al., "Quantification of coronary artery calcium using ultrafast
  computed tomography", JACC 1990; SCCT guidance): candidate voxels are inside the label AND at
  least 130 HU (the threshold is re-applied to any mask); lesions are 8-connected 2D components
  per axial slice; a lesion below 1 mm^2 is dropped; each lesion is weighted by its peak HU in that
  slice (1: 130-199, 2: 200-299, 3: 300-399, 4: >= 400); the score is the sum of
  ``area_mm2 x weight x (slice_increment_mm / 3)``. The slice increment is the distance between
  consecutive slice positions (ImagePositionPatient), never SliceThickness.
* Options used by published systems: 4-connectivity, a minimum size in pixels instead of mm^2, a
  3D-lesion mode (26-connected lesions of at least 1.5 mm^3, no per-slice area minimum, scored
  slice by slice with that slice's peak HU), a strict ``> threshold`` (orCaScore wording) and any
  threshold (kV-dependent thresholds).
* Volume score (retained voxels x voxel volume), mass score (McCollough et al., Radiology 2007:
  calibration factor x sum of lesion volume x mean HU), per-artery scores (majority label), the
  classic risk categories, CAC-DRS (Hecht et al., SCCT 2018) and the chest-CT categories of
  Lessmann et al. (IEEE TMI 2018).
* ICAC volume (Bos et al., Rotterdam Study practice): voxels >= 130 HU inside the ICAC label x
  voxel volume, with ``ln(volume + 1)``.

Arrays are indexed (X, Y, Z) with axis 2 the axial slice axis, as the project's loader returns
them. All functions here are pure numpy / scipy; the MONAI transforms live in
:mod:`ctbundles.transforms.calcium_transforms`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "AGATSTON_SLICE_MM",
    "CalciumScoreParams",
    "agatston_weight",
    "cac_drs",
    "chest_ct_category",
    "icac_volume",
    "parse_label_mapping",
    "risk_category",
    "score_calcium",
]

AGATSTON_SLICE_MM = 3.0
"""Agatston's reference slice increment (mm): scores are scaled by ``increment / 3``."""

_DEFAULT_MIN_AREA_MM2 = 1.0
_AREA_TOLERANCE = 1e-9  # relative, so that 4 pixels of 0.5 x 0.5 mm count as exactly 1 mm^2


@dataclass
class CalciumScoreParams:
    """Every choice that changes an Agatston score (defaults: the Agatston 1990 definition).

    Args:
        threshold_hu: calcium threshold in HU (130; lower values model kV-dependent thresholds).
        strict: use ``HU > threshold`` (orCaScore wording) instead of ``HU >= threshold``.
        connectivity: in-plane connectivity of 2D lesions, 8 (default) or 4. In ``mode="3d"``,
            8 means 26-connected 3D lesions and 4 means 6-connected (face neighbours only).
        min_area_mm2: a 2D lesion smaller than this (mm^2) is dropped (1.0).
        min_pixels: minimum lesion size in pixels instead of mm^2 (2D: pixels of the slice
            lesion; 3D: voxels of the lesion). Mutually exclusive with a non-default
            ``min_area_mm2``; when given it replaces the mm^2 (or mm^3) minimum.
        mode: ``"2d"`` (per-slice lesions, the default) or ``"3d"`` (3D lesions).
        min_volume_mm3: minimum volume of a 3D lesion (1.5 mm^3, used in ``mode="3d"`` only).
        calibration_factor: hydroxyapatite calibration factor c_HA in mg/cm^3 per HU; the mass
            score is only computed when it is given.
        artery_labels: mapping artery name -> label value (e.g. orCaScore
            ``{"LAD": 1, "LCX": 2, "RCA": 3}``); lesions are assigned by majority label.
    """

    threshold_hu: float = 130.0
    strict: bool = False
    connectivity: int = 8
    min_area_mm2: float = _DEFAULT_MIN_AREA_MM2
    min_pixels: int | None = None
    mode: str = "2d"
    min_volume_mm3: float = 1.5
    calibration_factor: float | None = None
    artery_labels: dict[str, int] | None = field(default=None)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter for any invalid or contradictory value."""
        if not isinstance(self.threshold_hu, (int, float)) or not math.isfinite(self.threshold_hu):
            raise ValueError(f"threshold_hu must be a finite number of HU, got {self.threshold_hu!r}")
        self.threshold_hu = float(self.threshold_hu)
        self.strict = bool(self.strict)
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity!r}")
        self.connectivity = int(self.connectivity)
        if self.mode not in ("2d", "3d"):
            raise ValueError(f"mode must be '2d' or '3d', got {self.mode!r}")
        if not math.isfinite(self.min_area_mm2) or self.min_area_mm2 < 0:
            raise ValueError(f"min_area_mm2 must be >= 0 mm^2, got {self.min_area_mm2!r}")
        self.min_area_mm2 = float(self.min_area_mm2)
        if not math.isfinite(self.min_volume_mm3) or self.min_volume_mm3 < 0:
            raise ValueError(f"min_volume_mm3 must be >= 0 mm^3, got {self.min_volume_mm3!r}")
        self.min_volume_mm3 = float(self.min_volume_mm3)
        if self.min_pixels is not None:
            if isinstance(self.min_pixels, bool) or int(self.min_pixels) != self.min_pixels or self.min_pixels < 1:
                raise ValueError(f"min_pixels must be a positive integer, got {self.min_pixels!r}")
            self.min_pixels = int(self.min_pixels)
            if self.min_area_mm2 != _DEFAULT_MIN_AREA_MM2:
                raise ValueError(
                    f"min_pixels ({self.min_pixels}) and min_area_mm2 ({self.min_area_mm2}) are mutually exclusive: "
                    "give one minimum lesion size"
                )
        if self.calibration_factor is not None:
            c = self.calibration_factor
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
                raise ValueError(f"calibration_factor must be a positive number (mg/cm^3 per HU), got {c!r}")
            self.calibration_factor = float(c)
        if self.artery_labels is not None:
            self.artery_labels = _validate_mapping(self.artery_labels, "artery_labels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _validate_mapping(mapping: Mapping[str, int], what: str) -> dict[str, int]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"{what} must be a non-empty mapping name -> label value, got {mapping!r}")
    out: dict[str, int] = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{what}: label names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or int(value) != value or int(value) <= 0:
            raise ValueError(f"{what}: the value of {name!r} must be a positive integer label, got {value!r}")
        out[name.strip()] = int(value)
    values = list(out.values())
    if len(set(values)) != len(values):
        raise ValueError(f"{what}: two names share one label value in {out}")
    return out


def parse_label_mapping(text: str) -> dict[str, int]:
    """Parse ``"LAD=1,LCX=2,RCA=3"`` into ``{"LAD": 1, "LCX": 2, "RCA": 3}`` (ValueError if malformed)."""
    mapping: dict[str, int] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"label mapping {text!r}: expected NAME=VALUE pairs separated by commas, got {part!r}")
        try:
            mapping[name.strip()] = int(value.strip())
        except ValueError:
            raise ValueError(f"label mapping {text!r}: the value of {name.strip()!r} is not an integer: {value!r}") from None
    return _validate_mapping(mapping, "label mapping")


# --------------------------------------------------------------------------------------------
# Weights and categories


def agatston_weight(peak_hu, threshold_hu: float = 130.0):
    """Agatston density weight of a lesion from its peak HU (Agatston 1990).

    0 below ``threshold_hu``, 1 for [threshold, 200), 2 for [200, 300), 3 for [300, 400) and 4 for
    >= 400 HU. Accepts a scalar (returns int) or an array (returns an int array).
    """
    peak = np.asarray(peak_hu, dtype=np.float64)
    weight = 1 + (peak >= 200).astype(np.int64) + (peak >= 300) + (peak >= 400)
    weight = np.where(peak >= threshold_hu, weight, 0)
    return int(weight) if weight.ndim == 0 else weight


RISK_CATEGORIES = ("0", "1-10", "11-100", "101-400", ">400")


def risk_category(score: float) -> str:
    """Classic Agatston risk category: "0", "1-10", "11-100", "101-400", ">400".

    Scores are real numbers: any score > 0 and <= 10 is "1-10", > 10 and <= 100 is "11-100",
    > 100 and <= 400 is "101-400", above 400 is ">400".
    """
    score = _check_score(score)
    if score == 0:
        return "0"
    if score <= 10:
        return "1-10"
    if score <= 100:
        return "11-100"
    if score <= 400:
        return "101-400"
    return ">400"


def risk_category_index(score: float) -> int:
    """Ordinal index (0..4) of :func:`risk_category` in :data:`RISK_CATEGORIES`, for kappa statistics."""
    return RISK_CATEGORIES.index(risk_category(score))


def cac_drs(score: float, n_vessels: int | None = None) -> str:
    """CAC-DRS category (Hecht et al., SCCT 2018): A0 = 0, A1 = 1-99, A2 = 100-299, A3 >= 300.

    String format: ``"A0"`` for a zero score; otherwise ``"A<k>/N<n>"`` where ``n`` is the number of
    vessels with calcium (LM, LAD, LCX, RCA), or ``"A<k>"`` when the vessel count is unknown
    (``n_vessels=None``, e.g. a binary calcium label). Real scores: 0 < s < 100 is A1,
    100 <= s < 300 is A2.
    """
    score = _check_score(score)
    if score == 0:
        return "A0"
    grade = 1 if score < 100 else 2 if score < 300 else 3
    if n_vessels is None:
        return f"A{grade}"
    if isinstance(n_vessels, bool) or int(n_vessels) != n_vessels or n_vessels < 0:
        raise ValueError(f"n_vessels must be a non-negative integer, got {n_vessels!r}")
    return f"A{grade}/N{int(n_vessels)}"


def chest_ct_category(score: float) -> str:
    """Chest-CT risk category (Lessmann et al., IEEE TMI 2018): "0-10", "11-100", "101-1000", ">1000"."""
    score = _check_score(score)
    if score <= 10:
        return "0-10"
    if score <= 100:
        return "11-100"
    if score <= 1000:
        return "101-1000"
    return ">1000"


def _check_score(score) -> float:
    value = float(score)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a calcium score must be a finite number >= 0, got {score!r}")
    return value


# --------------------------------------------------------------------------------------------
# Inputs


def _as_array(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor / MetaTensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a 3D (X, Y, Z) array, got shape {arr.shape}")
    return arr


def _as_label(label, shape) -> np.ndarray:
    lab = _as_array(label, "label")
    if lab.shape != shape:
        raise ValueError(f"label shape {lab.shape} differs from image shape {shape}: the label is on another grid")
    if lab.dtype == bool:
        return lab.view(np.uint8)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)):
            raise ValueError("label holds NaN or infinite values")
        rounded = np.rint(lab)
        if not np.array_equal(rounded, lab):
            raise ValueError("label holds non-integer values: give a discrete label map (threshold probabilities first)")
        if rounded.size and rounded.min() < 0:
            raise ValueError("label holds negative values")
        lab = rounded.astype(np.min_scalar_type(int(rounded.max(initial=0))))  # uint8 for a usual label
    elif not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"label must hold integer class values, got dtype {lab.dtype}")
    if np.issubdtype(lab.dtype, np.signedinteger) and lab.min(initial=0) < 0:
        raise ValueError("label holds negative values")
    return lab  # integer dtype kept as is (no copy of a large volume)


def _check_finite_inside(hu: np.ndarray, lab: np.ndarray) -> None:
    """NaN or infinite HU under the label would drop out of every ``>= 130 HU`` test and give a silently low
    score: refuse them."""
    inside = hu[lab > 0]
    if inside.size and not np.all(np.isfinite(inside)):
        bad = int(np.count_nonzero(~np.isfinite(inside)))
        raise ValueError(f"the image holds {bad} NaN or infinite HU value(s) under the label: the score would be wrong")


def _check_spacing(spacing: Sequence[float], slice_increment_mm: float | None) -> tuple[float, float, float]:
    sp = [float(s) for s in np.asarray(spacing, dtype=np.float64).ravel()]
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive numbers in mm (X, Y, slice), got {spacing!r}")
    inc = sp[2] if slice_increment_mm is None else float(slice_increment_mm)
    if not math.isfinite(inc) or inc <= 0:
        raise ValueError(f"slice_increment_mm must be a positive number of mm, got {slice_increment_mm!r}")
    return sp[0], sp[1], inc


def _candidates(hu: np.ndarray, label: np.ndarray, threshold: float, strict: bool) -> np.ndarray:
    above = hu > threshold if strict else hu >= threshold
    return above & (label > 0)


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a boolean volume (None when empty), to label a small crop only."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _group_max(ids: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, ids, values)
    return out


def _majority(ids: np.ndarray, label_values: np.ndarray, n: int) -> np.ndarray:
    """Majority label value per group (ties go to the smallest label value)."""
    uniq, inv = np.unique(label_values, return_inverse=True)
    counts = np.bincount(ids * len(uniq) + inv, minlength=n * len(uniq)).reshape(n, len(uniq))
    return uniq[np.argmax(counts, axis=1)]


# --------------------------------------------------------------------------------------------
# Agatston, volume, mass


def score_calcium(
    hu,
    label,
    spacing: Sequence[float],
    slice_increment_mm: float | None = None,
    params: CalciumScoreParams | None = None,
    affine=None,
) -> dict[str, Any]:
    """Agatston, volume and mass scores of the calcium inside ``label`` (REFERENCES.md section 1).

    Args:
        hu: CT in HU, shape (X, Y, Z), axis 2 the axial slices (numpy array or tensor).
        label: calcium label on the same grid; 0 is background, any other integer a class.
        spacing: voxel spacing in mm (X, Y, Z); ``spacing[2]`` is used as the slice increment when
            ``slice_increment_mm`` is not given.
        slice_increment_mm: distance between consecutive slice positions (the loader's
            ImagePositionPatient increment, meta ``slice_increment_mm``), NOT the slice thickness.
            It sets the ``increment / 3`` factor and the voxel volume.
        params: :class:`CalciumScoreParams` (the Agatston defaults when None).
        affine: optional 4x4 index-to-world matrix; when given, lesion centroids are world
            coordinates (RAS mm, MONAI convention), otherwise they are ``index x spacing`` in mm
            from voxel (0, 0, 0) of the grid ("voxel_mm"). ``parameters["centroid_frame"]`` says which.

    Returns:
        A JSON-serialisable dict with ``agatston``, ``volume_mm3``, ``mass_mg`` (None without a
        calibration factor), ``per_artery`` (name -> {agatston, volume_mm3, mass_mg, n_lesions}),
        ``lesions`` (list of per-lesion dicts), ``n_lesions``, ``n_vessels``, ``risk_category``,
        ``cac_drs``, ``chest_ct_category``, ``warnings`` and ``parameters``.

    In ``mode="2d"`` a lesion is one connected component in one slice; in ``mode="3d"`` a lesion is
    a 3D component, scored per slice with that slice's area and peak HU.
    """
    params = CalciumScoreParams() if params is None else params
    if not isinstance(params, CalciumScoreParams):
        raise TypeError(f"params must be a CalciumScoreParams, got {type(params).__name__}")
    params.validate()
    hu = _as_array(hu, "hu")
    lab = _as_label(label, hu.shape)
    _check_finite_inside(hu, lab)
    sx, sy, inc = _check_spacing(spacing, slice_increment_mm)
    pixel_area = sx * sy
    voxel_volume = pixel_area * inc
    slice_factor = inc / AGATSTON_SLICE_MM
    affine_arr = None
    if affine is not None:
        affine_arr = np.asarray(affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine, dtype=np.float64)
        if affine_arr.shape != (4, 4):
            raise ValueError(f"affine must be a 4x4 matrix, got shape {affine_arr.shape}")

    warnings: list[str] = []
    if not math.isclose(inc, float(np.asarray(spacing, dtype=np.float64).ravel()[2]), rel_tol=1e-3):
        warnings.append(
            f"slice increment {inc:g} mm differs from the grid's slice spacing {float(np.ravel(spacing)[2]):g} mm; "
            "the increment is used for the Agatston factor and the voxel volume"
        )
    if inc > AGATSTON_SLICE_MM + 1e-6:
        warnings.append(f"slice increment {inc:g} mm is above the 3 mm Agatston reference: calcium may be missed")

    in_label = lab > 0
    candidates = _candidates(hu, lab, params.threshold_hu, params.strict)
    n_label = int(np.count_nonzero(in_label))
    n_cand = int(np.count_nonzero(candidates))
    if n_label > n_cand:
        op = ">" if params.strict else ">="
        warnings.append(
            f"{n_label - n_cand} label voxels are not {op} {params.threshold_hu:g} HU and were not counted "
            "(the threshold is re-applied to the label)"
        )

    lesions, retained_hu_sum, retained_voxels, per_label_values, n_dropped = _lesions(
        hu, lab, candidates, (sx, sy, inc), params, affine_arr
    )
    if n_dropped:
        warnings.append(f"{n_dropped} candidate lesions below the minimum size were dropped")

    agatston = float(sum(les["agatston"] for les in lesions))
    volume = retained_voxels * voxel_volume
    mass = None
    if params.calibration_factor is not None:
        mass = params.calibration_factor * retained_hu_sum * voxel_volume / 1000.0  # mm^3 -> cm^3

    # Per artery (majority label of each lesion).
    names = _label_names(params.artery_labels, per_label_values)
    per_artery: dict[str, dict[str, Any]] = {
        name: {"label_value": value, "agatston": 0.0, "volume_mm3": 0.0, "mass_mg": None if mass is None else 0.0, "n_lesions": 0}
        for name, value in names.items()
    }
    for les in lesions:
        entry = per_artery[les["label"]]
        entry["agatston"] += les["agatston"]
        entry["volume_mm3"] += les["volume_mm3"]
        if mass is not None:
            entry["mass_mg"] += les["mass_mg"]
        entry["n_lesions"] += 1
    n_vessels = None
    if params.artery_labels is not None:
        n_vessels = sum(1 for name in params.artery_labels if per_artery[name]["n_lesions"] > 0)

    parameters = params.to_dict()
    parameters.update(
        {
            "definition": "Agatston 1990 (REFERENCES.md section 1)",
            "threshold_rule": f"HU {'>' if params.strict else '>='} {params.threshold_hu:g} inside label",
            "lesion_connectivity": _connectivity_name(params),
            "min_size_rule": _min_size_rule(params),
            "pixel_spacing_mm": [sx, sy],
            "pixel_area_mm2": pixel_area,
            "slice_increment_mm": inc,
            "slice_factor": slice_factor,
            "voxel_volume_mm3": voxel_volume,
            "centroid_frame": "world_ras_mm" if affine_arr is not None else "voxel_mm",
            "image_shape": list(hu.shape),
        }
    )
    return {
        "agatston": agatston,
        "volume_mm3": float(volume),
        "mass_mg": None if mass is None else float(mass),
        "per_artery": per_artery,
        "lesions": lesions,
        "n_lesions": len(lesions),
        "n_vessels": n_vessels,
        "risk_category": risk_category(agatston),
        "cac_drs": cac_drs(agatston, n_vessels),
        "chest_ct_category": chest_ct_category(agatston),
        "warnings": warnings,
        "parameters": parameters,
    }


def _connectivity_name(params: CalciumScoreParams) -> str:
    if params.mode == "2d":
        return f"2D {params.connectivity}-connected per axial slice"
    return f"3D {26 if params.connectivity == 8 else 6}-connected"


def _min_size_rule(params: CalciumScoreParams) -> str:
    if params.mode == "2d":
        if params.min_pixels is not None:
            return f"2D lesion >= {params.min_pixels} pixels"
        return f"2D lesion >= {params.min_area_mm2:g} mm^2"
    if params.min_pixels is not None:
        return f"3D lesion >= {params.min_pixels} voxels"
    return f"3D lesion >= {params.min_volume_mm3:g} mm^3"


def _label_names(artery_labels: dict[str, int] | None, present_values: Sequence[int]) -> dict[str, int]:
    """Names of the per-artery entries: the mapping's names, then ``label_<v>`` for unmapped values."""
    names = dict(artery_labels) if artery_labels else {}
    mapped = set(names.values())
    for v in sorted(set(int(v) for v in present_values)):
        if v not in mapped:
            names[_unmapped_name(v, artery_labels)] = v
    return names


def _unmapped_name(value: int, artery_labels: dict[str, int] | None) -> str:
    if artery_labels:
        for name, v in artery_labels.items():
            if v == value:
                return name
    return f"label_{value}"


def _structure(params: CalciumScoreParams) -> np.ndarray:
    if params.mode == "2d":
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[:, :, 1] = ndimage.generate_binary_structure(2, 1 if params.connectivity == 4 else 2)
        return structure
    return ndimage.generate_binary_structure(3, 1 if params.connectivity == 4 else 3)


def _lesions(hu, lab, candidates, spacing, params: CalciumScoreParams, affine):
    """Connected lesions of the candidate voxels, filtered by size, with their scores (vectorised)."""
    sx, sy, inc = spacing
    pixel_area, voxel_volume, slice_factor = sx * sy, sx * sy * inc, inc / AGATSTON_SLICE_MM
    box = _bbox(candidates)
    if box is None:
        return [], 0.0, 0, [], 0
    offset = np.array([b.start for b in box])
    components, n = ndimage.label(candidates[box], structure=_structure(params))
    coords = np.nonzero(components)
    ids = components[coords] - 1  # 0-based component id per candidate voxel
    values = hu[box][coords].astype(np.float64)
    labels = lab[box][coords].astype(np.int64)
    z = coords[2] + offset[2]
    counts = np.bincount(ids, minlength=n)

    if params.mode == "2d":
        if params.min_pixels is not None:
            keep = counts >= params.min_pixels
        else:
            keep = counts * pixel_area >= params.min_area_mm2 * (1 - _AREA_TOLERANCE)
    else:
        if params.min_pixels is not None:
            keep = counts >= params.min_pixels
        else:
            keep = counts * voxel_volume >= params.min_volume_mm3 * (1 - _AREA_TOLERANCE)
    n_dropped = int(np.count_nonzero(~keep))

    # Renumber retained components 0..m-1 in order of first appearance along (z, x, y) scan order
    # so lesion ids are stable and slice-ordered.
    voxel_keep = keep[ids]
    ids, values, labels, z = ids[voxel_keep], values[voxel_keep], labels[voxel_keep], z[voxel_keep]
    xyz = np.stack([c[voxel_keep] + o for c, o in zip(coords, offset)], axis=1).astype(np.float64)
    if ids.size == 0:
        return [], 0.0, 0, [], n_dropped
    order = np.lexsort((xyz[:, 1], xyz[:, 0], z))
    first_ids = ids[order]
    _, first_pos = np.unique(first_ids, return_index=True)
    kept_old = first_ids[np.sort(first_pos)]
    remap = np.full(n, -1, dtype=np.int64)
    remap[kept_old] = np.arange(kept_old.size)
    ids = remap[ids]
    m = kept_old.size

    n_vox = np.bincount(ids, minlength=m)
    hu_sum = np.bincount(ids, weights=values, minlength=m)
    peak = _group_max(ids, values, m)
    majority = _majority(ids, labels, m)
    centroid_idx = np.stack([np.bincount(ids, weights=xyz[:, a], minlength=m) for a in range(3)], axis=1) / n_vox[:, None]
    if affine is not None:
        centroid = (affine[:3, :3] @ centroid_idx.T).T + affine[:3, 3]
    else:
        centroid = centroid_idx * np.array([sx, sy, inc])

    # Per (lesion, slice) parts: area and peak of the lesion in that slice, the Agatston unit.
    n_slices = int(lab.shape[2])
    part_key = ids * n_slices + z
    part_uniq, part_inv = np.unique(part_key, return_inverse=True)
    part_lesion, part_slice = part_uniq // n_slices, part_uniq % n_slices
    part_area = np.bincount(part_inv, minlength=part_uniq.size) * pixel_area
    part_peak = _group_max(part_inv, values, part_uniq.size)
    part_weight = agatston_weight(part_peak, -np.inf)
    part_score = part_area * part_weight * slice_factor
    lesion_score = np.bincount(part_lesion, weights=part_score, minlength=m)

    name_of = {v: _unmapped_name(int(v), params.artery_labels) for v in np.unique(majority)}
    c = params.calibration_factor
    lesions = []
    slice_lists = np.split(part_slice, np.flatnonzero(np.diff(part_lesion)) + 1)
    for i in range(m):
        slices = [int(s) for s in slice_lists[i]]
        entry = {
            "id": i + 1,
            "slices": slices,
            "centroid_mm": [float(v) for v in centroid[i]],
            "n_voxels": int(n_vox[i]),
            "volume_mm3": float(n_vox[i] * voxel_volume),
            "peak_hu": float(peak[i]),
            "mean_hu": float(hu_sum[i] / n_vox[i]),
            "label": name_of[majority[i]],
            "label_value": int(majority[i]),
            "agatston": float(lesion_score[i]),
            "mass_mg": None if c is None else float(c * hu_sum[i] * voxel_volume / 1000.0),
        }
        if params.mode == "2d":
            entry["area_mm2"] = float(n_vox[i] * pixel_area)
            entry["weight"] = int(part_weight[i])
        lesions.append(entry)
    return lesions, float(hu_sum.sum()), int(n_vox.sum()), [int(v) for v in np.unique(majority)], n_dropped


# --------------------------------------------------------------------------------------------
# ICAC


def icac_volume(
    hu,
    label,
    spacing: Sequence[float],
    label_names: Mapping[str, int] | None = None,
    threshold_hu: float = 130.0,
) -> dict[str, Any]:
    """Intracranial carotid artery calcification volume (Bos et al.; Rotterdam Study practice).

    Voxels >= ``threshold_hu`` inside the ICAC label x voxel volume (``spacing`` in mm, third value
    the slice increment), in total and per label value, with ``ln(volume + 1)`` (the usual analysis
    scale). ``label_names`` maps names to label values (e.g. ``{"ICA_left": 1, "ICA_right": 2}``);
    without it the entries are named ``label_<v>``.

    Returns a JSON-serialisable dict: ``total_mm3``, ``ln_total``, ``n_voxels``, ``per_label``
    (name -> {label_value, volume_mm3, ln_volume, n_voxels}), ``warnings``, ``parameters``.
    """
    if not isinstance(threshold_hu, (int, float)) or not math.isfinite(threshold_hu):
        raise ValueError(f"threshold_hu must be a finite number of HU, got {threshold_hu!r}")
    names = None if label_names is None else _validate_mapping(label_names, "label_names")
    hu = _as_array(hu, "hu")
    lab = _as_label(label, hu.shape)
    _check_finite_inside(hu, lab)
    sx, sy, inc = _check_spacing(spacing, None)
    voxel_volume = sx * sy * inc
    candidates = _candidates(hu, lab, float(threshold_hu), False)
    values = lab[candidates].astype(np.int64)
    present = np.unique(lab[lab > 0])
    all_names = _label_names(names, [int(v) for v in present])
    per_label = {}
    for name, value in all_names.items():
        n = int(np.count_nonzero(values == value))
        vol = n * voxel_volume
        per_label[name] = {"label_value": value, "n_voxels": n, "volume_mm3": float(vol), "ln_volume": math.log(vol + 1.0)}
    n_total = int(values.size)
    total = n_total * voxel_volume
    warnings = []
    n_label = int(np.count_nonzero(lab > 0))
    if n_label > n_total:
        warnings.append(f"{n_label - n_total} label voxels are below {threshold_hu:g} HU and were not counted")
    return {
        "total_mm3": float(total),
        "ln_total": math.log(total + 1.0),
        "n_voxels": n_total,
        "per_label": per_label,
        "warnings": warnings,
        "parameters": {
            "definition": "ICAC volume (REFERENCES.md section 1)",
            "threshold_hu": float(threshold_hu),
            "threshold_rule": f"HU >= {float(threshold_hu):g} inside label",
            "label_names": names,
            "spacing_mm": [sx, sy, inc],
            "voxel_volume_mm3": voxel_volume,
            "image_shape": list(hu.shape),
        },
    }
