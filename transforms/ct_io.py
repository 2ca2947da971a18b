"""CT input layer: load a CT in Hounsfield units from a DICOM series folder, NIfTI or MetaImage.

Every loader returns a MONAI :class:`~monai.data.MetaTensor` shaped (X, Y, Z), float32 HU, axis 2
the slice-stacking axis, with ``meta["affine"]`` the true 4x4 voxel-to-world affine in MONAI's RAS
convention, exactly as :class:`monai.transforms.LoadImage` gives it for a NIfTI file. The slice
increment (the distance between consecutive slice planes, from DICOM ImagePositionPatient projected
on the slice normal) is what Agatston scoring weights by, not the SliceThickness tag
(``../shared/REFERENCES.md`` section 1, step 5).

Formats:

- NIfTI (``.nii``/``.nii.gz``): read by MONAI's ``NibabelReader`` through ``LoadImage``.
- MetaImage (``.mhd``/``.mha``): read by SimpleITK (MONAI's ``ITKReader`` needs the ``itk`` package,
  which is not a dependency); the LPS affine is converted to RAS as ``ITKReader`` does.
- DICOM series folder (or one ``.dcm`` file of it): read with pydicom by hand, because MONAI's
  ``PydicomReader`` stacks slices by InstanceNumber, averages the z-distance and picks no series.
  Slices are sorted by ImagePositionPatient projected on the slice normal (the cross product of
  the ImageOrientationPatient row and column cosines), ascending, which is the order dcm2niix and
  ITK use, so a folder and its dcm2niix NIfTI give the same array and affine. A folder with several
  series needs ``series_uid``; without it the loader refuses and lists the series found.

Geometry problems, and what the loader does about them (the choice is a keyword argument):

- Gantry tilt (slice origins not moving along the slice normal; a sheared affine). Default
  ``tilt="resample"``: resampled (trilinear, MONAI ``SpatialResample``) onto an orthogonal grid
  whose slices are perpendicular to the table direction, in-plane spacing kept, with a warning in
  ``ct_warnings``. ``tilt="error"`` refuses with :class:`CTInputError`; ``tilt="keep"`` returns the
  tilted slices with their true, sheared affine.
- Non-uniform slice spacing (including missing slices). Default ``nonuniform="resample"``: slices
  are linearly interpolated onto a uniform grid at the median increment, with a warning.
  ``nonuniform="error"`` refuses; ``nonuniform="keep"`` stacks the slices as they are, with an
  affine at the median increment that is wrong for the irregular part (a warning says so).
- A DICOM without RescaleSlope/RescaleIntercept: the stored values are used unchanged and a warning
  says so (never a silent guess); :func:`ctbundles.transforms.ct_checks.check_ct` then tells
  whether the values look like HU.

Unknown acquisition facts are stored as NaN (numbers) or ``""`` (strings), not None, so that the
meta dict stays collatable by MONAI's ``list_data_collate``; :func:`acquisition_facts` gives them
back with None for unknown.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple

from ctbundles.errors import CTInputError

__all__ = [
    "LoadCT",
    "LoadCTd",
    "SeriesInfo",
    "acquisition_facts",
    "assert_same_grid",
    "ct_format",
    "list_dicom_series",
    "load_ct",
    "load_label",
    "orientation_codes",
    "slice_increment_from_affine",
    "spacing_from_affine",
    "tilt_from_affine",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TILT_CHOICES = ("resample", "error", "keep")
NONUNIFORM_CHOICES = ("resample", "error", "keep")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: a slice increment differing from the median by more than this many mm (or this fraction of the
#: median, whichever is larger) makes the series non-uniform
SPACING_TOL_MM = 0.02
SPACING_TOL_FRACTION = 0.01
#: tilt is reported when the slice origins drift sideways by more than this fraction of a pixel
#: over the whole stack (a smaller drift is rounding in ImagePositionPatient)
TILT_DRIFT_TOL_PIXELS = 0.5


# --------------------------------------------------------------------------------------------------
# small geometry helpers (public: the checks and the commands use them)
# --------------------------------------------------------------------------------------------------
def spacing_from_affine(affine) -> np.ndarray:
    """Voxel spacing (mm) per axis: the lengths of the affine's first three columns."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    return np.sqrt((a**2).sum(axis=0))


def slice_increment_from_affine(affine) -> float:
    """Distance (mm) between consecutive slice planes (axis 2), measured along the slice normal.

    Equals the third spacing for an orthogonal grid; smaller than it for a sheared (tilted) grid.
    """
    a = np.asarray(affine, dtype=float)[:3, :3]
    normal = np.cross(a[:, 0], a[:, 1])
    norm = np.linalg.norm(normal)
    if norm == 0:
        return float(np.linalg.norm(a[:, 2]))
    return float(abs(np.dot(a[:, 2], normal / norm)))


def tilt_from_affine(affine) -> float:
    """Angle (degrees) between the slice-stacking column of the affine and the slice normal."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    normal = np.cross(a[:, 0], a[:, 1])
    n, s = np.linalg.norm(normal), np.linalg.norm(a[:, 2])
    if n == 0 or s == 0:
        return 0.0
    cos = min(1.0, abs(float(np.dot(normal, a[:, 2]))) / (n * s))
    return math.degrees(math.acos(cos))


def orientation_codes(affine) -> str:
    """Axis codes of the affine in RAS convention, e.g. ``"LPS"`` for an axial DICOM (nibabel)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def ct_format(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"nifti"`` or ``"metaimage"`` from the path; raises CTInputError otherwise."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(METAIMAGE_SUFFIXES) or (name.endswith((".raw", ".zraw")) and _metaimage_header(p)):
        return "metaimage"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if p.is_file() and _is_dicom_file(p):
        return "dicom"
    if not p.exists():
        raise CTInputError(f"{path}: no such file or folder")
    raise CTInputError(
        f"{path}: unsupported CT format (expected a DICOM series folder, .dcm, .nii, .nii.gz, .mhd or .mha)"
    )


def _metaimage_header(path: Path) -> Path | None:
    """The ``.mhd`` header beside a MetaImage ``.raw``/``.zraw`` data file, if there is one."""
    header = path.with_suffix(".mhd")
    return header if header.is_file() else None


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _nan_if_none(value) -> float:
    try:
        return float(value) if value is not None and str(value).strip() != "" else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def acquisition_facts(image) -> dict[str, Any]:
    """The acquisition facts of a loaded CT as plain Python values, None where unknown."""
    meta = getattr(image, "meta", image) or {}

    def num(key):
        v = meta.get(key)
        if v is None:
            return None
        v = float(np.asarray(v).reshape(-1)[0]) if np.size(v) else float("nan")
        return None if math.isnan(v) else v

    def txt(key):
        v = meta.get(key)
        return str(v) if v not in (None, "") else None

    return {
        "kvp": num("kvp"),
        "slice_thickness_mm": num("slice_thickness_mm"),
        "convolution_kernel": txt("convolution_kernel"),
        "manufacturer": txt("manufacturer"),
        "series_instance_uid": txt("series_instance_uid"),
        "series_description": txt("series_description"),
        "modality": txt("modality"),
    }


# --------------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------------
@dataclass
class SeriesInfo:
    """One DICOM series found in a folder (headers only)."""

    uid: str
    description: str
    modality: str
    files: list[Path]
    headers: list = field(default_factory=list, repr=False)  # pydicom datasets without pixel data

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def __str__(self) -> str:
        desc = self.description or "(no description)"
        return f"{self.uid}  {desc!r}  {self.modality or '?'}  {self.n_slices} slices"


def _dicom_candidates(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not files:  # a folder of folders (e.g. one per series): look one level deeper and below
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [p for p in files if p.name.upper() != "DICOMDIR"]


def _read_headers(folder: Path, unreadable: list[str] | None = None) -> list[tuple[Path, Any]]:
    """(file, header) of the image slices in ``folder``; files named as DICOM (``DICOM_SUFFIXES``) whose header
    cannot be read are listed in ``unreadable`` ("name (reason)"), other unreadable files are not DICOM and skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in _dicom_candidates(folder):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=f.suffix.lower() in DICOM_SUFFIXES)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as err:
            if unreadable is not None and f.suffix.lower() in DICOM_SUFFIXES:
                unreadable.append(f"{f.name} ({type(err).__name__}: {err})" if str(err) else f"{f.name} ({type(err).__name__})")
            continue
        if len(ds) == 0:  # forced read of an empty or non-DICOM file named .dcm: no data element at all
            if unreadable is not None and f.suffix.lower() in DICOM_SUFFIXES:
                unreadable.append(f"{f.name} (empty file)" if f.stat().st_size == 0 else f"{f.name} (no DICOM data elements)")
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "Rows" not in ds:
            continue  # not an image slice (structured report, presentation state, ...)
        headers.append((f, ds))
    return headers


def list_dicom_series(folder: str | os.PathLike, unreadable: list[str] | None = None) -> list[SeriesInfo]:
    """The image series in a DICOM folder, from the headers only (largest series first); files named as DICOM that
    cannot be read go to ``unreadable`` when a list is given."""
    folder = Path(folder)
    groups: dict[str, SeriesInfo] = {}
    for f, ds in _read_headers(folder, unreadable):
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        info = groups.get(uid)
        if info is None:
            info = groups[uid] = SeriesInfo(
                uid, _text(getattr(ds, "SeriesDescription", None)), _text(getattr(ds, "Modality", None)), []
            )
        info.files.append(f)
        info.headers.append(ds)
    return sorted(groups.values(), key=lambda s: (-s.n_slices, s.uid))


def _select_series(folder: Path, series_uid: str | None) -> SeriesInfo:
    unreadable: list[str] = []
    series = list_dicom_series(folder, unreadable)
    if unreadable:  # an empty or corrupt slice file: the series would silently lose a slice (at its edge: unnoticed)
        shown = "; ".join(unreadable[:5]) + (f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise CTInputError(f"{folder}: {len(unreadable)} DICOM file(s) cannot be read: {shown}")
    if not series:
        raise CTInputError(f"{folder}: no DICOM image slices found in this folder")
    listing = "\n".join(f"  {s}" for s in series)
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s
        raise CTInputError(f"{folder}: no series with SeriesInstanceUID {series_uid}; series found:\n{listing}")
    if len(series) > 1:
        raise CTInputError(
            f"{folder}: the folder holds {len(series)} DICOM series; choose one with series_uid "
            f"(--series-uid):\n{listing}"
        )
    return series[0]


def _empty_geometry(n_slices: int, increment: float = float("nan"), tilt_deg: float = 0.0) -> dict[str, Any]:
    """The ``slice_geometry`` record with every key (same keys for every format, so metas collate)."""
    return {
        "n_slices": int(n_slices),
        "increment_median_mm": float(increment),
        "increment_min_mm": float(increment),
        "increment_max_mm": float(increment),
        "n_irregular_gaps": 0,
        "n_missing_slices": 0,
        "missing_gaps": "",
        "irregular_gaps": "",
        "gantry_tilt_deg": float(tilt_deg),
        "gantry_tilt_tag_deg": float("nan"),
        "tilted": False,
        "uniform": True,
        "resampled_uniform": False,
        "gantry_tilt_corrected": False,
        "from_slice_positions": False,
    }


def _slice_geometry(positions_lps: np.ndarray, row: np.ndarray, col: np.ndarray, pixel: float) -> dict:
    """Slice-stacking analysis of sorted slice origins (LPS, mm): increments, gaps, tilt."""
    normal = np.cross(row, col)
    along = positions_lps @ normal
    increments = np.diff(along)
    n = len(positions_lps)
    geo = _empty_geometry(n)
    geo["from_slice_positions"] = True
    if n < 2:
        return geo
    median = float(np.median(increments))
    tol = max(SPACING_TOL_MM, SPACING_TOL_FRACTION * median)
    irregular = np.flatnonzero(np.abs(increments - median) > tol)
    # a missing slice: a gap close to a whole multiple (>= 2) of the usual increment
    ratio = increments / median if median > 0 else np.zeros_like(increments)
    missing = [int(i) for i in irregular if round(ratio[i]) >= 2 and abs(ratio[i] - round(ratio[i])) <= 0.15]
    n_missing = int(sum(round(ratio[i]) - 1 for i in missing))
    total = positions_lps[-1] - positions_lps[0]
    lateral = total - np.dot(total, normal) * normal
    drift = float(np.linalg.norm(lateral))
    tilt = math.degrees(math.atan2(drift, abs(float(np.dot(total, normal)))))
    gaps = ", ".join(f"{increments[i]:.2f} mm after slice {i}" for i in irregular[:8])
    if len(irregular) > 8:
        gaps += f", ... ({len(irregular)} in all)"
    geo.update(
        increment_median_mm=median,
        increment_min_mm=float(increments.min()),
        increment_max_mm=float(increments.max()),
        n_irregular_gaps=int(len(irregular)),
        n_missing_slices=n_missing,
        missing_gaps=", ".join(f"{increments[i]:.2f} mm after slice {i}" for i in missing),
        irregular_gaps=gaps,
        gantry_tilt_deg=float(tilt),
        tilted=bool(drift > TILT_DRIFT_TOL_PIXELS * pixel),
        uniform=bool(len(irregular) == 0),
    )
    return geo


def _load_dicom(path: Path, series_uid: str | None, tilt: str, nonuniform: str) -> MetaTensor:
    import pydicom

    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and series_uid is None:  # one file of a series: load the series it belongs to
        ds0 = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        series_uid = str(getattr(ds0, "SeriesInstanceUID", "") or "")
    series = _select_series(folder, series_uid)
    headers = list(zip(series.files, series.headers))
    warns: list[str] = []

    f0, h0 = headers[0]
    iop = np.asarray([float(v) for v in h0.ImageOrientationPatient], dtype=float)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    for f, h in headers[1:]:
        other = np.asarray([float(v) for v in h.ImageOrientationPatient], dtype=float)
        if not np.allclose(other, iop, atol=1e-4):
            raise CTInputError(
                f"{folder}: series {series.uid} mixes slice orientations ({f0.name}: {list(iop)}, "
                f"{f.name}: {list(other)}); a CT volume needs one orientation"
            )
        if (int(h.Rows), int(h.Columns)) != (int(h0.Rows), int(h0.Columns)):
            raise CTInputError(
                f"{folder}: series {series.uid} mixes slice sizes ({f0.name}: {h0.Rows}x{h0.Columns}, "
                f"{f.name}: {h.Rows}x{h.Columns})"
            )
    if int(getattr(h0, "NumberOfFrames", 1) or 1) > 1:
        raise CTInputError(f"{f0}: multi-frame (enhanced) DICOM is not supported; export a classic slice series")

    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for _, h in headers], dtype=float)
    order = np.argsort(positions @ normal, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    along = positions @ normal
    dup = np.flatnonzero(np.abs(np.diff(along)) < 1e-3)
    if len(dup):
        i = int(dup[0])
        raise CTInputError(
            f"{folder}: series {series.uid} has {len(dup)} duplicate slice position(s) "
            f"(e.g. {headers[i][0].name} and {headers[i + 1][0].name} at {along[i]:.3f} mm): "
            "two acquisitions or echoes in one series"
        )

    ps = [float(v) for v in getattr(h0, "PixelSpacing", [1.0, 1.0])]
    if "PixelSpacing" not in h0:
        warns.append(f"{folder}: no PixelSpacing tag; 1.0 mm assumed in-plane")
    row_spacing, col_spacing = ps[0], ps[1]  # DICOM: spacing between rows, then between columns
    geo = _slice_geometry(positions, row, col, min(ps))
    median = geo["increment_median_mm"]
    spacing_problem = tilt_problem = ""
    if not geo["uniform"]:
        spacing_problem = (
            f"non-uniform slice spacing: increments from {geo['increment_min_mm']:.2f} to "
            f"{geo['increment_max_mm']:.2f} mm (median {median:.2f} mm; irregular gaps: {geo['irregular_gaps']})"
        )
        if geo["n_missing_slices"]:
            spacing_problem += f"; about {geo['n_missing_slices']} slice(s) missing ({geo['missing_gaps']})"
        if nonuniform == "error":
            raise CTInputError(f"{folder}: {spacing_problem}; refusing (nonuniform='error')")
    if geo["tilted"]:
        tilt_problem = f"gantry tilt of {geo['gantry_tilt_deg']:.1f} degrees (slice origins drift off the slice normal)"
        if tilt == "error":
            raise CTInputError(f"{folder}: {tilt_problem}; refusing (tilt='error')")
        if tilt == "resample" and spacing_problem and nonuniform == "keep":
            raise CTInputError(
                f"{folder}: {tilt_problem} and non-uniform spacing kept; cannot correct the tilt of a "
                "non-uniform stack (use nonuniform='resample')"
            )

    data = _read_hu_slices([f for f, _ in headers], folder, warns)

    a_row = row * col_spacing  # moving along a row = next column index (X)
    a_col = col * row_spacing  # next row index (Y)
    if len(headers) > 1:
        total = positions[-1] - positions[0]
        step_dir = total / np.linalg.norm(total)
        step = step_dir * (median / abs(float(np.dot(step_dir, normal))))
    else:
        thickness = _nan_if_none(getattr(h0, "SliceThickness", None))
        step = normal * (thickness if not math.isnan(thickness) else 1.0)
    if spacing_problem:
        if nonuniform == "resample":
            data = _resample_uniform(data, positions, step_dir, float(np.linalg.norm(step)))
            warns.append(
                f"{folder}: {spacing_problem}; resampled by linear interpolation to a uniform {median:.2f} mm increment"
            )
            geo["resampled_uniform"] = True
        else:
            warns.append(
                f"{folder}: {spacing_problem}; kept as acquired, so the affine (at {median:.2f} mm) is wrong there"
            )

    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = a_row, a_col, step, positions[0]
    affine = LPS_TO_RAS @ lps

    tag_tilt = _nan_if_none(getattr(h0, "GantryDetectorTilt", None))
    geo["gantry_tilt_tag_deg"] = tag_tilt
    meta = _base_meta(path, "dicom")
    meta.update(
        kvp=_nan_if_none(getattr(h0, "KVP", None)),
        slice_thickness_mm=_nan_if_none(getattr(h0, "SliceThickness", None)),
        convolution_kernel=_text(getattr(h0, "ConvolutionKernel", None)),
        manufacturer=_text(getattr(h0, "Manufacturer", None)),
        series_instance_uid=series.uid,
        series_description=series.description,
        modality=series.modality,
    )
    image = _make_image(data, affine, meta, warns)
    image.meta["slice_geometry"] = geo
    if tilt_problem:
        if tilt == "resample":
            image = _untilt(image)
            geo["gantry_tilt_corrected"] = True
            image.meta["slice_geometry"] = geo
            image.meta["ct_warnings"].append(
                f"{folder}: {tilt_problem}; corrected by trilinear resampling onto an untilted grid of "
                f"{tuple(image.shape)} voxels"
            )
        else:
            image.meta["ct_warnings"].append(f"{folder}: {tilt_problem}; kept, the affine is sheared")
    return image


def _read_hu_slices(files: list[Path], folder: Path, warns: list[str]) -> np.ndarray:
    """Pixel data of sorted slice files in HU, (X = column index, Y = row index, Z) as LoadImage gives it.

    RescaleSlope/RescaleIntercept are applied per slice; slices without them keep their stored
    values and a warning says how many.
    """
    import pydicom

    slices = []
    missing_rescale = 0
    for f in files:
        ds = pydicom.dcmread(f, force=True)
        try:
            arr = ds.pixel_array
        except Exception as err:  # pydicom raises several types for undecodable pixel data
            raise CTInputError(f"{f}: cannot decode the pixel data ({err})") from err
        slope = getattr(ds, "RescaleSlope", None)
        intercept = getattr(ds, "RescaleIntercept", None)
        if slope is None or intercept is None:
            missing_rescale += 1
        hu = arr.astype(np.float32) * np.float32(float(slope) if slope is not None else 1.0)
        hu += np.float32(float(intercept) if intercept is not None else 0.0)
        slices.append(hu.T)
    if missing_rescale:
        warns.append(
            f"{folder}: {missing_rescale} of {len(files)} slices have no RescaleSlope/RescaleIntercept "
            "tags; their stored values are used unchanged as HU (check that they are HU)"
        )
    return np.stack(slices, axis=-1)


def _resample_uniform(data: np.ndarray, positions: np.ndarray, step_dir: np.ndarray, step_len: float):
    """Linear interpolation of slices at arbitrary positions along ``step_dir`` onto a uniform grid."""
    t = (positions - positions[0]) @ step_dir
    n_out = int(math.floor(t[-1] / step_len + 1e-6)) + 1
    target = np.arange(n_out) * step_len
    out = np.empty(data.shape[:2] + (n_out,), dtype=np.float32)
    for k, tk in enumerate(target):
        j = int(np.clip(np.searchsorted(t, tk, side="right") - 1, 0, len(t) - 2))
        w = float(np.clip((tk - t[j]) / (t[j + 1] - t[j]), 0.0, 1.0))
        out[..., k] = (1.0 - w) * data[..., j] + w * data[..., j + 1]
    return out


def _untilt(image: MetaTensor) -> MetaTensor:
    """Resample a sheared (tilted) grid onto an orthogonal one (MONAI ``SpatialResample``).

    The new grid keeps the row direction and both in-plane spacings, stacks slices along the table
    direction (the affine's third column) at the same step, and covers the whole tilted volume;
    voxels outside it get the image minimum (the scanner's outside-the-field value).
    """
    from monai.transforms import SpatialResample

    src = np.asarray(image.affine, dtype=float)
    a = src[:3, :3]
    e1 = a[:, 0] / np.linalg.norm(a[:, 0])
    e3 = a[:, 2] / np.linalg.norm(a[:, 2])
    e1 = e1 - np.dot(e1, e3) * e3
    e1 /= np.linalg.norm(e1)
    e2 = a[:, 1] - np.dot(a[:, 1], e3) * e3 - np.dot(a[:, 1], e1) * e1
    e2 /= np.linalg.norm(e2)
    spacing = spacing_from_affine(src)
    rot = np.stack([e1, e2, e3], axis=1)
    shape = np.asarray(image.shape, dtype=float)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ a.T + src[:3, 3]
    local = (world - src[:3, 3]) @ rot / spacing  # coordinates in the new frame, in voxels
    lo, hi = local.min(axis=0), local.max(axis=0)
    lo = np.floor(lo + 1e-6)
    out_shape = [int(v) for v in np.floor(hi - lo + 1e-6) + 1]
    dst = np.eye(4)
    dst[:3, :3] = rot * spacing
    dst[:3, 3] = src[:3, 3] + rot @ (lo * spacing)
    fill = float(image.min())
    src_img = MetaTensor(torch.as_tensor(np.asarray(image.array) - fill)[None], meta={"affine": torch.as_tensor(src)})
    res = SpatialResample(mode="bilinear", padding_mode="zeros", align_corners=True, dtype=np.float32)(
        src_img, dst_affine=torch.as_tensor(dst), spatial_size=out_shape
    )
    data = np.asarray(res.array[0], dtype=np.float32) + np.float32(fill)
    meta = dict(image.meta)
    warns = list(meta.pop("ct_warnings", []))
    for key in ("affine", "original_affine", "spatial_shape", "spacing", "slice_increment_mm"):
        meta.pop(key, None)
    out = _make_image(data, dst, meta, warns)
    out.meta["original_affine"] = torch.as_tensor(src)
    return out


# --------------------------------------------------------------------------------------------------
# NIfTI and MetaImage
# --------------------------------------------------------------------------------------------------
def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # MONAI's NibabelReader directly: LoadImage would build every registered reader on each call
    # (in monai 1.6 that logs an nvImageCodec warning per call) for the same array and affine.
    from monai.data import NibabelReader

    reader = NibabelReader()
    try:
        data, meta = reader.get_data(reader.read(str(path)))
    except Exception as err:  # nibabel raises several types for broken files
        raise CTInputError(f"{path}: cannot read as NIfTI ({err})") from err
    return np.asarray(data, dtype=np.float32), np.asarray(meta["affine"], dtype=float)


def _load_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if path.name.lower().endswith((".raw", ".zraw")):
        path = _metaimage_header(path) or path
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise CTInputError(f"{path}: cannot read as MetaImage ({str(err).strip().splitlines()[-1]})") from err
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTInputError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    data = sitk.GetArrayFromImage(img)  # (z, y, x)
    data = np.ascontiguousarray(np.transpose(data, tuple(range(data.ndim - 1, -1, -1)))).astype(np.float32)
    dim = img.GetDimension()
    lps = np.eye(4)
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    d3 = min(dim, 3)
    lps[:d3, :d3] = (direction * spacing[None, :])[:d3, :d3]
    lps[:d3, 3] = np.asarray(img.GetOrigin(), dtype=float)[:d3]
    return data, LPS_TO_RAS @ lps


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CTInputError(f"{path}: image has shape {tuple(data.shape)}; a CT volume must be 3D (X, Y, Z)")
    return data


def _base_meta(path: Path, fmt: str) -> dict[str, Any]:
    return {
        "filename_or_obj": str(path),
        "format": fmt,
        "kvp": float("nan"),
        "slice_thickness_mm": float("nan"),
        "convolution_kernel": "",
        "manufacturer": "",
        "series_instance_uid": "",
        "series_description": "",
        "modality": "",
    }


def _make_image(data: np.ndarray, affine: np.ndarray, meta: dict, warns: list[str]) -> MetaTensor:
    meta = dict(meta)
    spacing = spacing_from_affine(affine)
    increment = slice_increment_from_affine(affine)
    meta.update(
        affine=torch.as_tensor(affine, dtype=torch.float64),
        spatial_shape=np.asarray(data.shape, dtype=np.int64),
        space="RAS",
        original_channel_dim=float("nan"),
        spacing=np.asarray([spacing[0], spacing[1], increment], dtype=np.float64),
        slice_increment_mm=float(increment),
        ct_warnings=list(warns),
    )
    meta.setdefault("original_affine", torch.as_tensor(affine, dtype=torch.float64))
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32)), meta=meta)


# --------------------------------------------------------------------------------------------------
# public loaders
# --------------------------------------------------------------------------------------------------
def load_ct(
    path: str | os.PathLike,
    series_uid: str | None = None,
    *,
    tilt: str = "resample",
    nonuniform: str = "resample",
) -> MetaTensor:
    """Load a CT in HU as a (X, Y, Z) float32 ``MetaTensor`` with its true RAS affine.

    Args:
        path: a DICOM series folder (or one ``.dcm`` of it), a ``.nii``/``.nii.gz``, or a MetaImage
            ``.mhd``/``.mha`` (or the ``.raw`` beside its ``.mhd``).
        series_uid: the SeriesInstanceUID to load when the DICOM folder holds several series.
        tilt: what to do with gantry tilt: ``"resample"`` (default) onto an untilted grid with a
            warning, ``"error"`` to refuse, ``"keep"`` to keep the sheared grid (warning).
        nonuniform: what to do with non-uniform slice spacing or missing slices: ``"resample"``
            (default) to a uniform grid at the median increment with a warning, ``"error"`` to
            refuse, ``"keep"`` to stack as acquired (warning; the affine is then approximate).

    Returns:
        A MetaTensor whose meta holds ``affine``, ``spacing`` (third = slice increment),
        ``slice_increment_mm``, ``slice_thickness_mm``, ``kvp``, ``convolution_kernel``,
        ``manufacturer``, ``series_instance_uid``, ``filename_or_obj``, ``format``, ``ct_warnings``
        and ``slice_geometry`` (for DICOM the acquired slice positions analysed: increments,
        irregular gaps, missing slices, gantry tilt; for NIfTI/MetaImage what the affine tells).

    Raises:
        CTInputError: unreadable or unsupported input, several DICOM series and no ``series_uid``,
            or a geometry problem the caller chose to refuse.
    """
    if tilt not in TILT_CHOICES:
        raise ValueError(f"tilt must be one of {TILT_CHOICES}, got {tilt!r}")
    if nonuniform not in NONUNIFORM_CHOICES:
        raise ValueError(f"nonuniform must be one of {NONUNIFORM_CHOICES}, got {nonuniform!r}")
    path = Path(path)
    if not path.exists():
        raise CTInputError(f"{path}: no such file or folder")
    fmt = ct_format(path)
    if fmt == "dicom":
        return _load_dicom(path, series_uid, tilt, nonuniform)
    if series_uid is not None:
        raise CTInputError(f"{path}: series_uid={series_uid!r} given, but this is a {fmt} file, not a DICOM folder")
    data, affine = _load_nifti(path) if fmt == "nifti" else _load_metaimage(path)
    data = _squeeze_to_3d(data, path)
    warns: list[str] = []
    image = _make_image(data, affine, _base_meta(path, fmt), warns)
    angle = tilt_from_affine(affine)
    image.meta["slice_geometry"] = _empty_geometry(data.shape[2], image.meta["slice_increment_mm"], angle)
    image.meta["slice_geometry"]["tilted"] = bool(angle > 0.1)
    if angle > 0.1:
        desc = f"sheared affine: the slices are stacked {angle:.1f} degrees off their normal (gantry tilt)"
        if tilt == "error":
            raise CTInputError(f"{path}: {desc}; refusing (tilt='error')")
        if tilt == "resample":
            geo = image.meta["slice_geometry"]
            image = _untilt(image)
            geo["gantry_tilt_corrected"] = True
            image.meta["slice_geometry"] = geo
            image.meta["ct_warnings"].append(f"{path}: {desc}; corrected by resampling onto an untilted grid")
        else:
            image.meta["ct_warnings"].append(f"{path}: {desc}; kept")
    return image


def load_label(path: str | os.PathLike, like: MetaTensor, series_uid: str | None = None) -> MetaTensor:
    """Load a label map (NIfTI, MetaImage or DICOM) and check that it lies on the grid of ``like``.

    The label keeps its stored integer values (as float32, no HU meaning) and ``like``'s acquisition
    facts are not copied. Raises CTInputError (naming both files, shapes and affines) when the grid
    differs; see :func:`ctbundles.transforms.ct_checks.assert_same_grid`.
    """
    path = Path(path)
    if not path.exists():
        raise CTInputError(f"{path}: no such label file or folder")
    fmt = ct_format(path)
    if fmt == "dicom":
        label = _load_dicom(path, series_uid, tilt="keep", nonuniform="keep")
    else:
        data, affine = _load_nifti(path) if fmt == "nifti" else _load_metaimage(path)
        data = _squeeze_to_3d(data, path)
        label = _make_image(data, affine, _base_meta(path, fmt), [])
        label.meta["slice_geometry"] = _empty_geometry(data.shape[2], label.meta["slice_increment_mm"])
    assert_same_grid(like, label)
    return label


def assert_same_grid(image, label, atol: float = 1e-3) -> None:
    """Raise CTInputError unless ``label`` has ``image``'s shape and affine (within ``atol`` mm).

    The message names both files, both shapes and both affines. (Re-exported by ``ct_checks``.)
    """
    from ctbundles.transforms.ct_checks import assert_same_grid as _impl

    _impl(image, label, atol=atol)


# --------------------------------------------------------------------------------------------------
# MONAI transforms
# --------------------------------------------------------------------------------------------------
class LoadCT(Transform):
    """Array transform: a path (str / PathLike) -> HU ``MetaTensor`` via :func:`load_ct`.

    Usable as the first transform of a MONAI ``Compose``. A list of DICOM files of one folder loads
    the series of the first file. A tensor or array already loaded is passed through unchanged (a
    MetaTensor) or wrapped (an array, identity affine, with a warning).
    """

    def __init__(self, series_uid: str | None = None, tilt: str = "resample", nonuniform: str = "resample") -> None:
        self.series_uid = series_uid
        self.tilt = tilt
        self.nonuniform = nonuniform

    def __call__(self, path) -> MetaTensor:
        if isinstance(path, MetaTensor):
            return path
        if isinstance(path, (np.ndarray, torch.Tensor)):
            warnings.warn("LoadCT got an array, not a path: identity affine assumed", stacklevel=2)
            data = np.asarray(path, dtype=np.float32)
            image = _make_image(data, np.eye(4), _base_meta(Path("<array>"), "array"), ["array input: identity affine"])
            image.meta["slice_geometry"] = _empty_geometry(data.shape[-1], 1.0)
            return image
        if isinstance(path, (list, tuple)) and len(path) == 1:
            path = path[0]
        elif isinstance(path, (list, tuple)) and path and len({Path(p).parent for p in path}) == 1:
            path = path[0]  # the files of one DICOM series (as MONAI Label may pass them): load its series
        if not isinstance(path, (str, os.PathLike)):
            raise CTInputError(f"LoadCT expects a file or folder path, got {type(path).__name__}")
        return load_ct(path, self.series_uid, tilt=self.tilt, nonuniform=self.nonuniform)


class LoadCTd(MapTransform):
    """Dictionary version of :class:`LoadCT` (only maps keys).

    ``keys`` are loaded as CTs; ``label_keys`` are loaded with :func:`load_label` on the grid of the
    first image key. A plain path given instead of a dict (as MONAI Label may pass it) is taken as
    ``{keys[0]: path}``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        series_uid: str | None = None,
        tilt: str = "resample",
        nonuniform: str = "resample",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple(label_keys)
        self.loader = LoadCT(series_uid, tilt=tilt, nonuniform=nonuniform)

    def __call__(self, data) -> dict:
        if isinstance(data, (str, os.PathLike)):
            data = {self.keys[0]: data}
        d = dict(data)
        first = None
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
            first = d[key] if first is None else first
        for key in self.label_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"LoadCTd: label key {key!r} not in the data ({sorted(map(str, d))})")
            if isinstance(d[key], MetaTensor):
                continue
            if first is None:
                raise CTInputError(f"LoadCTd: label {d[key]} has no image to be checked against")
            d[key] = load_label(d[key], like=first)
        return d
