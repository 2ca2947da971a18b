"""Checks on a loaded CT for the inputs that silently ruin a calcium score.

``../shared/REFERENCES.md`` section 1 lists them, from the issue trackers of published tools:
contrast-enhanced scans (blood pool far above the 130 HU calcium threshold), slices thicker than
the 3 mm Agatston et al. (JACC 1990) defined the score on, missing rescale tags (values that are not
HU), a label mask on another grid than the image; and, from the slice geometry, non-uniform spacing,
missing slices and gantry tilt. :func:`check_ct` returns one :class:`Finding` per problem, each a
readable sentence with the numbers; :func:`assert_same_grid` refuses a label on another grid.

Severities: "error" means a score computed on this image is meaningless as it stands (not HU,
contrast, missing slices, spacing left non-uniform); "warning" means the input differs from the
protocol the methods assume, or the loader had to resample it; "info" is context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from ctbundles.errors import CTInputError

__all__ = [
    "AGATSTON_SLICE_THICKNESS_MM",
    "CONTRAST_MIN_VOLUME_ML",
    "CONTRAST_RANGE_HU",
    "Finding",
    "assert_same_grid",
    "check_ct",
    "detect_contrast",
    "head_foot_axis",
    "errors",
    "hu_summary",
]

SEVERITIES = ("error", "warning", "info")

#: Agatston et al. (JACC 1990) defined the score on 3 mm slices
AGATSTON_SLICE_THICKNESS_MM = 3.0
#: smoothed HU range of an iodine-enhanced blood pool (non-contrast blood is about 40 HU)
CONTRAST_RANGE_HU = (250.0, 600.0)
#: the smallest connected blood pool volume counted as contrast: heart chambers and aorta of even a
#: small cardiac field of view hold far more; a phantom's bone insert or a vertebral body far less
CONTRAST_MIN_VOLUME_ML = 100.0
#: grid (mm) the contrast search works on (the image is subsampled to about this spacing)
CONTRAST_GRID_MM = 2.0
#: with no voxel below this, there is no air or lung in the image: not HU, or a tight crop
NOT_HU_MAX_MINIMUM = -200.0


@dataclass(frozen=True)
class Finding:
    """One problem found in a CT.

    Attributes:
        code: short identifier ("not_hu", "contrast", "thick_slices", "nonuniform_spacing",
            "missing_slices", "gantry_tilt", "missing_rescale").
        severity: "error", "warning" or "info".
        message: one readable sentence with the numbers.
    """

    code: str
    severity: str
    message: str

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def errors(findings) -> list[Finding]:
    """The findings of severity "error"."""
    return [f for f in findings if f.severity == "error"]


def _name(x) -> str:
    meta = getattr(x, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory array>"))


def _array(image) -> np.ndarray:
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    arr = np.asarray(arr)
    while arr.ndim > 3 and arr.shape[0] == 1:  # a channel-first (1, X, Y, Z) image
        arr = arr[0]
    return arr


def _meta(image) -> dict:
    return dict(getattr(image, "meta", None) or {})


def _spacing(image) -> np.ndarray:
    meta = _meta(image)
    if "spacing" in meta:
        return np.asarray(meta["spacing"], dtype=float).reshape(-1)[-3:]
    aff = np.asarray(getattr(image, "affine", np.eye(4)), dtype=float)
    return np.sqrt((aff[:3, :3] ** 2).sum(axis=0))


def _num(meta: dict, key: str) -> float | None:
    v = meta.get(key)
    if v is None:
        return None
    try:
        v = float(np.asarray(v).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return None if math.isnan(v) else v


def head_foot_axis(affine) -> int:
    """The array axis whose world direction (affine column) is closest to head-foot: 2 for axial slices stacked
    along the last axis, as Agatston scoring and the 2.5D slabs assume; oblique (gantry tilt) stacks still give 2."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(direction, axis=0)
    if not np.all(norms > 0):
        raise ValueError(f"the image affine has a zero column: {direction.tolist()}")
    return int(np.argmax(np.abs(direction[2] / norms)))


def hu_summary(image) -> dict:
    """Minimum, maximum and the 1/5/50/95/99th percentiles of the finite values (HU; NaN when there are none)."""
    a = _array(image)
    a = a[np.isfinite(a)]
    if not a.size:
        return dict.fromkeys(("min", "p1", "p5", "p50", "p95", "p99", "max"), float("nan"))
    p = np.percentile(a, [1, 5, 50, 95, 99])
    return {
        "min": float(a.min()),
        "p1": float(p[0]),
        "p5": float(p[1]),
        "p50": float(p[2]),
        "p95": float(p[3]),
        "p99": float(p[4]),
        "max": float(a.max()),
    }


def detect_contrast(
    image,
    hu_range: tuple[float, float] = CONTRAST_RANGE_HU,
    min_volume_ml: float = CONTRAST_MIN_VOLUME_ML,
    grid_mm: float = CONTRAST_GRID_MM,
) -> dict:
    """Look for an iodine-enhanced blood pool: a large connected soft-tissue region in ``hu_range``.

    The image is subsampled to about ``grid_mm``, smoothed by a 3-voxel box filter (noise), the
    voxels whose smoothed value lies in ``hu_range`` are opened by a 3x3x3 cube (removes thin bone
    cortex and partial-volume rims) and the largest 26-connected region is measured.

    Returns:
        ``{"enhanced": bool, "volume_ml": float, "median_hu": float, "threshold_ml": float}``.
    """
    a = _array(image).astype(np.float32, copy=False)
    spacing = _spacing(image)
    step = [max(1, int(round(grid_mm / s))) if s > 0 else 1 for s in spacing]
    sub = a[:: step[0], :: step[1], :: step[2]]
    voxel_ml = float(np.prod(spacing * np.asarray(step))) / 1000.0
    smooth = ndi.uniform_filter(sub, size=3, mode="nearest")
    cand = (smooth >= hu_range[0]) & (smooth <= hu_range[1])
    cand = ndi.binary_opening(cand, structure=np.ones((3, 3, 3), dtype=bool))
    labels, n = ndi.label(cand, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return {"enhanced": False, "volume_ml": 0.0, "median_hu": float("nan"), "threshold_ml": min_volume_ml}
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    volume = float(sizes[largest - 1]) * voxel_ml
    median = float(np.median(sub[labels == largest]))
    return {"enhanced": volume >= min_volume_ml, "volume_ml": volume, "median_hu": median, "threshold_ml": min_volume_ml}


def _not_hu(a: np.ndarray) -> Finding | None:
    lo, hi = float(a.min()), float(a.max())
    sample = a.ravel()[:: max(1, a.size // 200000)]
    integral = bool(np.all(sample == np.round(sample)))
    if hi - lo <= 2.0 + 1e-6 and lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6:
        return Finding(
            "not_hu",
            "error",
            f"Values range from {lo:.3g} to {hi:.3g}, an already-normalized image (0..1 or -1..1), not CT in HU "
            "(air is -1000 HU, water 0 HU).",
        )
    if integral and lo >= 0 and hi <= 255:
        return Finding(
            "not_hu",
            "error",
            f"Values are whole numbers from {lo:.0f} to {hi:.0f}, an 8-bit (0..255) image such as a screenshot or "
            "windowed export, not CT in HU.",
        )
    if lo > NOT_HU_MAX_MINIMUM:
        return Finding(
            "not_hu",
            "error",
            f"The lowest value is {lo:.0f} and the median {float(np.median(a)):.0f}, so there is no air or lung "
            f"(about -1000 HU) anywhere: this looks like MR, CT stored without its rescale intercept, or a crop "
            "with no air, not CT in HU.",
        )
    return None


def check_ct(image) -> list[Finding]:
    """Every problem the input layer can see in a loaded CT (see the module docstring).

    Args:
        image: a (X, Y, Z) or (1, X, Y, Z) MetaTensor as :func:`ctbundles.transforms.ct_io.load_ct`
            returns it (its meta gives the slice geometry and acquisition facts), or a plain array
            (only the value checks then apply).

    Returns:
        The findings, errors first.
    """
    meta = _meta(image)
    a = _array(image)
    findings: list[Finding] = []

    finite = np.isfinite(a)
    if not finite.all():
        n_bad = int(a.size - np.count_nonzero(finite))
        findings.append(Finding("non_finite", "error", f"{n_bad} voxel(s) are NaN or infinite: no HU value there, so "
                                "thresholds, scores and the network input would be wrong."))
        a = a[finite] if finite.any() else np.zeros(1, np.float32)  # the value checks below look at the rest

    modality = str(meta.get("modality", "") or "").upper()
    not_hu = _not_hu(a)
    if modality and modality != "CT":
        not_hu = Finding(
            "not_hu", "error", f"The DICOM Modality is {modality}, not CT, so the values are not Hounsfield units."
        )
    if not_hu is not None:
        findings.append(not_hu)
    else:
        c = detect_contrast(image)
        if c["enhanced"]:
            findings.append(
                Finding(
                    "contrast",
                    "error",
                    f"A connected region of {c['volume_ml']:.0f} mL at a median {c['median_hu']:.0f} HU "
                    f"(more than {c['threshold_ml']:.0f} mL between {CONTRAST_RANGE_HU[0]:.0f} and "
                    f"{CONTRAST_RANGE_HU[1]:.0f} HU) looks like a contrast-enhanced blood pool, far above the "
                    "130 HU calcium threshold.",
                )
            )

    if any("RescaleSlope/RescaleIntercept" in str(w) for w in meta.get("ct_warnings", []) or []):
        findings.append(
            Finding(
                "missing_rescale",
                "warning",
                "The DICOM slices have no RescaleSlope/RescaleIntercept tags, so the stored values were taken as HU "
                "unchanged.",
            )
        )

    geo = dict(meta.get("slice_geometry") or {})
    increment = _num(meta, "slice_increment_mm")
    if increment is None and a.ndim >= 3:
        increment = float(_spacing(image)[2])
    thickness = _num(meta, "slice_thickness_mm")
    limit = AGATSTON_SLICE_THICKNESS_MM + 0.01
    if thickness is not None and thickness > limit:
        findings.append(
            Finding(
                "thick_slices",
                "warning",
                f"Slices are {thickness:.2f} mm thick (SliceThickness), thicker than the "
                f"{AGATSTON_SLICE_THICKNESS_MM:.0f} mm Agatston scoring is defined on, so small calcifications "
                "are blurred below 130 HU.",
            )
        )
    elif thickness is None and increment is not None and increment > limit:
        findings.append(
            Finding(
                "thick_slices",
                "warning",
                f"Slices are {increment:.2f} mm apart and their thickness is not recorded, so they are likely "
                f"thicker than the {AGATSTON_SLICE_THICKNESS_MM:.0f} mm Agatston scoring is defined on.",
            )
        )

    if geo:
        median = geo.get("increment_median_mm", float("nan"))
        n_missing = int(geo.get("n_missing_slices", 0) or 0)
        n_missing_gaps = len([g for g in str(geo.get("missing_gaps", "")).split(", ") if g])
        resampled = bool(geo.get("resampled_uniform", False))
        if n_missing:
            findings.append(
                Finding(
                    "missing_slices",
                    "error",
                    f"About {n_missing} slice(s) are missing: gap(s) of {geo.get('missing_gaps')} where the usual "
                    f"increment is {median:.2f} mm"
                    + (" (interpolated by the loader, not measured)." if resampled else "."),
                )
            )
        n_irregular = int(geo.get("n_irregular_gaps", 0) or 0) - n_missing_gaps
        if n_irregular > 0:
            findings.append(
                Finding(
                    "nonuniform_spacing",
                    "warning" if resampled else "error",
                    f"Slice spacing is not uniform: increments from {geo.get('increment_min_mm', float('nan')):.2f} "
                    f"to {geo.get('increment_max_mm', float('nan')):.2f} mm (median {median:.2f} mm) over "
                    f"{geo.get('n_slices')} slices, {n_irregular} irregular gap(s)"
                    + (
                        "; the loader resampled to a uniform increment."
                        if resampled
                        else "; the affine cannot describe it, load with nonuniform='resample'."
                    ),
                )
            )
        if geo.get("tilted"):
            corrected = bool(geo.get("gantry_tilt_corrected", False))
            findings.append(
                Finding(
                    "gantry_tilt",
                    "warning",
                    f"The slices were acquired with a gantry tilt of {float(geo.get('gantry_tilt_deg', 0.0)):.1f} "
                    "degrees"
                    + (
                        "; the loader resampled them onto an untilted grid."
                        if corrected
                        else "; they are kept on a sheared grid (the affine holds the tilt)."
                    ),
                )
            )
    aff = np.asarray(getattr(image, "affine", np.eye(4)), dtype=float)
    if aff.shape == (4, 4) and _array(image).ndim >= 3 and head_foot_axis(aff) != 2:
        findings.append(
            Finding(
                "slice_axis",
                "warning",
                f"The head-foot direction lies along array axis {head_foot_axis(aff)}, not axis 2: the file is stored "
                "sagittal or coronal first. Agatston scoring refuses it (its 2D lesions are axial); reorient it to "
                "axial slices along the last axis (e.g. MONAI Orientationd to RAS) first.",
            )
        )
    if aff.shape == (4, 4) and not geo.get("tilted"):
        from ctbundles.transforms.ct_io import tilt_from_affine

        angle = tilt_from_affine(aff)
        if angle > 0.1:
            findings.append(
                Finding(
                    "gantry_tilt",
                    "warning",
                    f"The affine is sheared: slices are stacked {angle:.1f} degrees off their normal (gantry tilt).",
                )
            )

    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: order[f.severity])


def assert_same_grid(image, label, atol: float = 1e-3) -> None:
    """Raise CTInputError unless ``label`` has ``image``'s shape and affine (within ``atol`` mm).

    The message names both files, both shapes and both affines, so a user can see which mask was
    exported on which grid (e.g. a label saved after resampling, or with flipped slice order).
    """
    img_shape, lab_shape = tuple(image.shape[-3:]), tuple(label.shape[-3:])
    img_aff = np.asarray(getattr(image, "affine", np.eye(4)), dtype=float)
    lab_aff = np.asarray(getattr(label, "affine", np.eye(4)), dtype=float)
    if img_shape == lab_shape and np.allclose(img_aff, lab_aff, atol=atol):
        return

    def fmt(a):
        return np.array2string(a, precision=4, suppress_small=True, separator=", ").replace("\n", "")

    raise CTInputError(
        f"label {_name(label)} is not on the grid of image {_name(image)}: "
        f"image shape {img_shape}, label shape {lab_shape}; "
        f"image affine {fmt(img_aff)}, label affine {fmt(lab_aff)}"
    )
