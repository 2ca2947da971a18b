"""MONAI transforms around :mod:`ctbundles.transforms.calcium_scoring` (REFERENCES.md section 1).

Array transforms hold the logic; the dictionary versions only map keys (the MONAI habit, e.g.
``MedianSmooth`` / ``MedianSmoothd``):

* :class:`ThresholdMaskHU` / :class:`ThresholdMaskHUd`: removes label voxels below the calcium
  threshold (130 HU), the re-application of the threshold that every bundle's post-processing does
  before scoring a network mask.
* :class:`CalciumScore` / :class:`CalciumScored`: the Agatston / volume / mass report of an image
  and its calcium label, with spacing, slice increment and affine read from the image's
  ``MetaTensor`` metadata (``spacing``, ``slice_increment_mm``, ``affine``, set by the loader).
* :class:`ICACVolume` / :class:`ICACVolumed`: the intracranial carotid calcification volume.

Images and labels may carry one leading channel (after ``EnsureChannelFirstd``); a label with
several channels is taken as one-hot (channel 0 background) and turned into a label map by argmax.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from ctbundles.errors import CTInputError
from ctbundles.transforms.calcium_scoring import CalciumScoreParams, icac_volume, score_calcium
from ctbundles.transforms.ct_checks import head_foot_axis

__all__ = [
    "CalciumScore",
    "CalciumScored",
    "ICACVolume",
    "ICACVolumed",
    "ThresholdMaskHU",
    "ThresholdMaskHUd",
    "geometry_from_meta",
    "check_axial_slices",
]


def _meta(img) -> dict:
    return dict(img.meta) if isinstance(img, MetaTensor) else {}


def _floats(value) -> list[float]:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return [float(v) for v in np.asarray(value, dtype=np.float64).ravel()]


def geometry_from_meta(img, spacing: Sequence[float] | None = None, slice_increment_mm: float | None = None):
    """Spacing (3 mm values), slice increment (mm) and affine (4x4 or None) of an image.

    Priority: explicit arguments, then the loader's meta keys ``spacing`` / ``slice_increment_mm``,
    then the spacing implied by ``meta["affine"]``. Raises ``ValueError`` when none is available.
    """
    meta = _meta(img)
    affine = None
    if "affine" in meta:
        affine = np.asarray(_floats(meta["affine"]), dtype=np.float64)
        affine = affine.reshape(4, 4) if affine.size == 16 else None
    if spacing is None:
        meta_spacing = _floats(meta["spacing"]) if meta.get("spacing") is not None else []
        if len(meta_spacing) >= 3:
            spacing = meta_spacing[-3:]
        elif affine is not None:
            spacing = [float(s) for s in affine_to_spacing(affine, r=3)]
        else:
            raise ValueError("no spacing: give `spacing` or an image MetaTensor with meta['spacing'] or meta['affine']")
    spacing = [float(s) for s in spacing]
    if slice_increment_mm is None and meta.get("slice_increment_mm") is not None:
        values = _floats(meta["slice_increment_mm"])
        slice_increment_mm = values[0] if len(values) == 1 else None
    if slice_increment_mm is None or not math.isfinite(float(slice_increment_mm)):
        slice_increment_mm = spacing[2]
    return spacing, float(slice_increment_mm), affine


def _spatial(x, what: str, is_label: bool) -> np.ndarray:
    """(X, Y, Z) numpy view of an image or label with an optional leading channel axis."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if arr.ndim == 4:
        if arr.shape[0] == 1:
            arr = arr[0]
        elif is_label:
            arr = np.argmax(arr, axis=0)  # one-hot, channel 0 = background
        else:
            raise ValueError(f"{what} has {arr.shape[0]} channels; expected one CT channel")
    if arr.ndim != 3:
        raise ValueError(f"{what} must be (X, Y, Z) or (1, X, Y, Z), got shape {arr.shape}")
    return arr


def _input_warnings(meta: Mapping, source: str = "input") -> list[str]:
    warnings = meta.get("ct_warnings") or []
    if isinstance(warnings, str):
        warnings = [warnings]
    return [f"{source}: {w}" for w in warnings]


def check_axial_slices(affine) -> None:
    """Raise ``ValueError`` unless array axis 2 is the scan's head-foot axis: Agatston scoring works on 2D
    components of axial slices with the slice increment of axis 2 (REFERENCES.md section 1), so a volume stored
    with the slices along another array axis (a reformatted or transposed file) would be scored on sagittal or
    coronal planes (:func:`~ctbundles.transforms.ct_checks.head_foot_axis`). ``None`` (no affine): nothing to check."""
    if affine is None:
        return
    axis = head_foot_axis(affine)
    if axis != 2:
        raise ValueError(f"the axial slices lie along array axis {axis}, not axis 2: the file is stored sagittal or coronal "
                         "first; reorient it to axial slices along the last axis (e.g. MONAI Orientationd to RAS) before scoring")


class _named_input_errors:
    """Context manager: a ``ValueError`` from scoring one image is re-raised as ``CTInputError`` naming its file."""

    def __init__(self, meta: Mapping) -> None:
        self.source = _source(meta)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, ValueError) and not isinstance(exc, CTInputError):
            raise CTInputError(f"{self.source or 'image without a file name'}: {exc}") from exc
        return False


def _source(meta: Mapping) -> str | None:
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    return None if source is None else str(source)


class ThresholdMaskHU(Transform):
    """Keep only label voxels whose HU passes the calcium threshold (REFERENCES.md 1, step 1).

    ``label * (image >= threshold_hu)`` (``>`` when ``strict``), for a label map or binary masks
    (each channel is masked). The label keeps its type, dtype and metadata.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold_hu: float = 130.0, strict: bool = False) -> None:
        self.threshold_hu = float(threshold_hu)
        self.strict = bool(strict)

    def __call__(self, label, image):
        img = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        lab = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
        if img.ndim == lab.ndim + 1 and img.shape[0] == 1:
            img = img[0]
        if img.shape[-3:] != lab.shape[-3:]:
            raise ValueError(f"image shape {tuple(image.shape)} and label shape {tuple(label.shape)} differ")
        keep = img > self.threshold_hu if self.strict else img >= self.threshold_hu
        out = np.where(keep, lab, np.zeros((), dtype=lab.dtype))
        return convert_to_dst_type(out, label, dtype=lab.dtype)[0]


class ThresholdMaskHUd(MapTransform):
    """Dictionary version of :class:`ThresholdMaskHU`: masks ``keys`` (labels) by ``image_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        threshold_hu: float = 130.0,
        strict: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.masker = ThresholdMaskHU(threshold_hu, strict)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.masker(d[key], d[self.image_key])
        return d


class CalciumScore(Transform):
    """Agatston, volume and mass report of a CT and its calcium label (Agatston et al. 1990).

    Args:
        params: a :class:`CalciumScoreParams`; or give its fields as keyword arguments
            (``connectivity=4``, ``mode="3d"``, ``artery_labels={"LAD": 1}``...), not both.
        spacing: override of the voxel spacing (mm); by default read from the image's metadata.
        slice_increment_mm: override of the slice increment; by default ``meta["slice_increment_mm"]``
            (the ImagePositionPatient increment), then the third spacing value.
        world_centroids: lesion centroids in world (RAS) mm from ``meta["affine"]`` (default) or
            in voxel-grid mm.

    ``__call__(image, label)`` returns the dict of :func:`score_calcium` plus ``source_image``
    (``meta["filename_or_obj"]``); the loader's ``ct_warnings`` are added to ``warnings``.
    """

    def __init__(
        self,
        params: CalciumScoreParams | None = None,
        spacing: Sequence[float] | None = None,
        slice_increment_mm: float | None = None,
        world_centroids: bool = True,
        **param_kwargs,
    ) -> None:
        if params is not None and param_kwargs:
            raise ValueError(f"give either params or parameter keywords, not both: {sorted(param_kwargs)}")
        self.params = params if params is not None else CalciumScoreParams(**param_kwargs)
        self.spacing = spacing
        self.slice_increment_mm = slice_increment_mm
        self.world_centroids = world_centroids

    def __call__(self, image, label) -> dict[str, Any]:
        meta = _meta(image)
        with _named_input_errors(meta):
            spacing, increment, affine = geometry_from_meta(image, self.spacing, self.slice_increment_mm)
            check_axial_slices(affine)
            report = score_calcium(
                _spatial(image, "image", False),
                _spatial(label, "label", True),
                spacing,
                slice_increment_mm=increment,
                params=self.params,
                affine=affine if self.world_centroids else None,
            )
        report["warnings"] = _input_warnings(meta) + report["warnings"]
        report["source_image"] = _source(meta)
        return report


class _ReportDict(MapTransform):
    """Dictionary wrapper shared by the report transforms: reads ``image_key`` and ``label_key`` and
    writes ``report_class(**kwargs)(image, label)`` under ``output_key``."""

    report_class: type
    default_output_key: str

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "pred",
        output_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__([image_key, label_key], allow_missing_keys)
        self.image_key, self.label_key = image_key, label_key
        self.output_key = output_key or self.default_output_key
        self.scorer = self.report_class(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.allow_missing_keys and (self.image_key not in d or self.label_key not in d):
            return d
        d[self.output_key] = self.scorer(d[self.image_key], d[self.label_key])
        return d


class CalciumScored(_ReportDict):
    """Dictionary version of :class:`CalciumScore`: reads ``image_key`` and ``label_key`` and writes
    the report under ``output_key`` (default "calcium_score"). Other arguments go to :class:`CalciumScore`."""

    report_class = CalciumScore
    default_output_key = "calcium_score"


class ICACVolume(Transform):
    """Intracranial carotid artery calcification volume (Bos et al.; REFERENCES.md section 1).

    ``__call__(image, label)`` returns the dict of :func:`icac_volume` (total and per label, with
    ln(volume + 1)) plus ``source_image``; spacing comes from the image metadata unless given. The
    ``ct_warnings`` of the image (prefixed "input:") and of the label ("segmentation:", e.g. a scan
    that does not cover the network frame) are added to ``warnings``.
    """

    def __init__(
        self,
        label_names: Mapping[str, int] | None = None,
        threshold_hu: float = 130.0,
        spacing: Sequence[float] | None = None,
        slice_increment_mm: float | None = None,
    ) -> None:
        self.label_names = None if label_names is None else dict(label_names)
        self.threshold_hu = float(threshold_hu)
        self.spacing = spacing
        self.slice_increment_mm = slice_increment_mm

    def __call__(self, image, label) -> dict[str, Any]:
        meta = _meta(image)
        with _named_input_errors(meta):
            spacing, increment, _ = geometry_from_meta(image, self.spacing, self.slice_increment_mm)
            report = icac_volume(
                _spatial(image, "image", False),
                _spatial(label, "label", True),
                [spacing[0], spacing[1], increment],
                label_names=self.label_names,
                threshold_hu=self.threshold_hu,
            )
        # the segmentation's own warnings: ``FromNetworkFrame`` notes a scan that does not cover the network frame
        report["warnings"] = _input_warnings(meta) + _input_warnings(_meta(label), "segmentation") + report["warnings"]
        report["source_image"] = _source(meta)
        return report


class ICACVolumed(_ReportDict):
    """Dictionary version of :class:`ICACVolume`, writing the report under ``output_key`` (default "icac_volume")."""

    report_class = ICACVolume
    default_output_key = "icac_volume"
