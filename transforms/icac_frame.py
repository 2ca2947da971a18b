"""The network frame of the ICAC method (Bortsova et al., MICCAI 2017, Sec. 3) and the way back.

"We registered the images rigidly to a single reference image and cropped them along the
longitudinal axis so that they contain only the intracranial part of the carotid artery. Finally,
we downsampled axial slices (roughly twice) so that their spatial resolution matches that of the
longitudinal axis. The final image size is 240 x 240 x 100 voxels."

``register_rigid`` registers a scan to a reference head with SimpleITK (Euler 3D transform, Mattes
mutual information, multi-resolution), started by ``initial_alignment`` (centres of mass of the
heads, air weighing nothing). ``ToNetworkFrame`` resamples the scan onto the network
frame: a grid of ``frame_shape`` voxels of ``frame_spacing`` mm centred at ``frame_centre_mm`` in
the reference's world coordinates (default 240 x 240 x 100 voxels of 0.46 x 0.46 x 1 mm around the
intracranial carotids of the project's reference head, ``ctbundles.synthetic.head.reference_head``,
whose world frame is its head frame). The transform and the source grid travel in the MetaTensor
metadata (``icac_frame``), ``FromNetworkFrame`` resamples a segmentation (nearest neighbour) or a
probability (linear) back onto the original scan, and ``ScanLabelFromFrameProbability`` turns the
network's probability into the side-labelled segmentation on the scan.

Coordinates: MONAI arrays are (X, Y, Z) with a RAS affine; SimpleITK works in LPS and (z, y, x)
array order. The conversion is done here once (``to_sitk``).

Status: used by ``inference.json`` (and ``train.json`` when ``register_to_reference`` is true);
tested on synthetic heads (see the bundle README).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ctbundles.switches import require_bool
from ctbundles.transforms.icac_supervision import SplitSides

__all__ = ["to_sitk", "initial_alignment", "register_rigid", "frame_affine", "frame_coverage", "coverage_warning", "ToNetworkFrame", "ToNetworkFramed", "FromNetworkFrame",
           "FromNetworkFramed", "ScanLabelFromFrameProbability",
           "ScanLabelFromFrameProbabilityd", "DEFAULT_FRAME"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Network frame around the intracranial carotids of the project's reference head (head frame mm).
DEFAULT_FRAME = {"shape": (240, 240, 100), "spacing": (0.46, 0.46, 1.0), "centre_mm": (0.0, 3.0, -40.0)}


def _spatial_np(img) -> np.ndarray:
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one channel, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {arr.shape}")
    return arr


def _affine(img) -> np.ndarray:
    if isinstance(img, MetaTensor):
        return np.asarray(img.affine, dtype=np.float64)
    raise ValueError("a MetaTensor with an affine is needed to place the volume in the world")


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """An (X, Y, Z) array with a RAS affine as a SimpleITK image (LPS physical space)."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def from_sitk(image: sitk.Image) -> np.ndarray:
    """The (X, Y, Z) array of a SimpleITK image."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def frame_affine(shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float]) -> np.ndarray:
    """RAS affine of an axis-aligned grid of ``shape`` voxels of ``spacing`` mm centred at ``centre_mm``."""
    a = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    half = (np.asarray(shape, dtype=np.float64) - 1) / 2 * np.asarray(spacing, dtype=np.float64)
    a[:3, 3] = np.asarray(centre_mm, dtype=np.float64) - half
    return a


def initial_alignment(moving: sitk.Image, fixed: sitk.Image,
                      clip_hu: tuple[float, float] = (-200.0, 1500.0)) -> sitk.Euler3DTransform:
    """Moments-based start of the rigid registration: the centres of mass of the two heads coincide.

    The moments are taken of the HU clipped to ``clip_hu`` and shifted so that the lower bound is 0
    (air and everything below weigh nothing, the head is the mass). On clipped HU without the shift
    air is negative mass and the "centre of mass" of a scan is decided by its field of view: on
    posed synthetic heads of 400 x 400 x 150 voxels of 0.5 mm the start was 48-134 mm off, and the
    optimiser recovered from it only for some heads (bundle docs/training_log.md, "Registered heads (0.4.1)").
    """
    return _moments_start(_clamp_hu(moving, clip_hu), _clamp_hu(fixed, clip_hu), clip_hu[0])


def _clamp_hu(image: sitk.Image, clip_hu: Sequence[float]) -> sitk.Image:
    """``image`` as float32 with its HU clipped to ``clip_hu``."""
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, float(clip_hu[0]), float(clip_hu[1]))


def _moments_start(moving: sitk.Image, fixed: sitk.Image, lower: float) -> sitk.Euler3DTransform:
    """``initial_alignment`` of two images already clipped by ``_clamp_hu`` with lower bound ``lower``."""
    f = sitk.ShiftScale(fixed, -float(lower), 1.0)
    m = sitk.ShiftScale(moving, -float(lower), 1.0)
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))


def register_rigid(moving: sitk.Image, fixed: sitk.Image, clip_hu: tuple[float, float] = (-200.0, 1500.0),
                   shrink: Sequence[int] = (4, 2, 1), iterations: int = 200, seed: int = 1) -> sitk.Euler3DTransform:
    """Rigid registration of ``moving`` (a head CT) to ``fixed`` (the reference head).

    Returns the Euler 3D transform mapping fixed physical points (LPS mm) to moving ones (the ITK
    convention used by ``sitk.Resample``). Intensities are clipped to ``clip_hu`` (skull and brain
    drive the match); Mattes mutual information, regular-step gradient descent, a moments-based
    initial alignment (``initial_alignment``), a multi-resolution pyramid ``shrink`` with smoothing, fixed sampling seed.
    ``seed`` must be positive: SimpleITK reads 0 as ``sitkWallClock`` (a new random sampling on every
    call), which made the registration, and so the ICAC volume, differ between two runs on one scan.
    """
    if int(seed) <= 0:
        raise ValueError(f"register_rigid: seed must be a positive integer (0 is SimpleITK's wall-clock seed), got {seed}")
    f, m = _clamp_hu(fixed, clip_hu), _clamp_hu(moving, clip_hu)
    initial = _moments_start(m, f, clip_hu[0])  # initial_alignment on the images clipped once
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.25, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(0, s // 2) for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    out = reg.Execute(f, m)
    if isinstance(out, sitk.CompositeTransform):
        out = out.GetBackTransform() if out.GetNumberOfTransforms() == 1 else out.GetNthTransform(0)
    return sitk.Euler3DTransform(out)


def frame_coverage(moving: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> dict[str, Any]:
    """How much of the network frame the scan covers.

    The paper's scans reach from the aortic arch to the intracranial vasculature (Sec. 3), so the frame around the intracranial
    carotids always lies inside them (Sec. 3). A routine head CT may start at the skull base: the frame
    voxels outside the scan are then filled (air, or the scan's end slices with ``outside_fill="edge"``),
    and with air the network sees the scan's cut edge. Returns
    ``scan_coverage`` (fraction of frame voxels inside the scan) and ``frame_slices_outside`` (frame
    slices along z without any scan voxel).
    """
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    # SimpleITK arrays are (z, y, x)
    return {"scan_coverage": float(inside.mean()), "frame_slices_outside": int((inside.max(axis=(1, 2)) == 0).sum())}


def _slices_beyond(moving: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> tuple[int, int]:
    """Slices (index z) the frame ``grid`` reaches below the first and beyond the last slice of ``moving``."""
    size = np.asarray(grid.GetSize())
    corners = [grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.stack(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij"), -1).reshape(-1, 3)]
    z = [moving.TransformPhysicalPointToContinuousIndex(transform.TransformPoint(p))[2] for p in corners]
    last = moving.GetSize()[2] - 1
    return max(0, int(np.ceil(-min(z))) + 1), max(0, int(np.ceil(max(z) - last)) + 1)


def coverage_warning(frame_info: Mapping) -> str | None:
    """The report warning for a frame the scan does not cover completely (None when it does)."""
    coverage = frame_info.get("scan_coverage")
    if coverage is None or coverage >= 1.0:
        return None
    fill = "the scan's end slices repeated along z" if frame_info.get("outside_fill") == "edge" else "air"
    return (f"the scan covers {100 * coverage:.1f} % of the network frame ({frame_info.get('frame_slices_outside', 0)} "
            f"frame slices lie wholly outside it); the rest is filled with {fill}, so calcification near the scan's edge "
            "is less reliable (the paper's scans covered the whole frame)")


class ToNetworkFrame(Transform):
    """Register a head CT to the reference and resample it onto the network frame (paper Sec. 3).

    Args:
        reference: the reference head (MetaTensor (X, Y, Z) or (1, X, Y, Z) in HU, RAS affine), or a
            path loaded with ``ctbundles.transforms.ct_io.load_ct``.
        frame_shape, frame_spacing, frame_centre_mm: the network frame in the reference's world
            coordinates (default ``DEFAULT_FRAME``: 240 x 240 x 100 voxels, 0.46 x 0.46 x 1 mm).
        fill_hu: value outside the scan (-1000 HU, air).
        register: False skips the registration (identity: the scan is already in the reference frame).
        outside_fill: what the frame gets beyond the scan's first and last slice: "air" (``fill_hu``, the
            default, what the shipped weights were trained and tested with) or "edge" (the scan's end
            slices repeated along z, so the network does not see the cut edge of a scan that starts at
            the skull base; in-plane the frame still gets ``fill_hu``). See the bundle README, "Field of view".
    """

    def __init__(self, reference=None, frame_shape=DEFAULT_FRAME["shape"], frame_spacing=DEFAULT_FRAME["spacing"],
                 frame_centre_mm=DEFAULT_FRAME["centre_mm"], fill_hu: float = -1000.0, register: bool = True,
                 outside_fill: str = "air"):
        self._reference = reference  # loaded on first use: not needed when ``register`` is False
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.affine = frame_affine(self.frame_shape, frame_spacing, frame_centre_mm)
        self.grid = to_sitk(np.zeros(self.frame_shape, np.uint8), self.affine)
        self.fill_hu = float(fill_hu)
        self.register = require_bool(register, "register_to_reference", "ToNetworkFramed")
        if outside_fill not in ("air", "edge"):
            raise ValueError(f"ToNetworkFramed: outside_fill must be 'air' or 'edge', got {outside_fill!r}")
        self.outside_fill = outside_fill

    @property
    def reference(self) -> sitk.Image:
        """The reference head as a SimpleITK image (loaded from its path on first use)."""
        if not isinstance(self._reference, sitk.Image):
            ref = self._reference
            if ref is None:
                raise ValueError("ToNetworkFrame: registration needs a reference head")
            if isinstance(ref, (str, bytes)) or hasattr(ref, "__fspath__"):
                from ctbundles.transforms.ct_io import load_ct

                ref = load_ct(ref)
            self._reference = to_sitk(_spatial_np(ref).astype(np.float32), _affine(ref))
        return self._reference

    def __call__(self, img) -> MetaTensor:
        arr = _spatial_np(img).astype(np.float32)
        source_affine = _affine(img)
        moving = to_sitk(arr, source_affine)
        transform = register_rigid(moving, self.reference) if self.register else sitk.Euler3DTransform()
        source = moving
        if self.outside_fill == "edge":
            below, above = _slices_beyond(moving, self.grid, transform)
            source = sitk.ZeroFluxNeumannPad(moving, [0, 0, below], [0, 0, above])  # end slices repeated along z
        out = sitk.Resample(source, self.grid, transform, sitk.sitkLinear, self.fill_hu, sitk.sitkFloat32)
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        meta["icac_frame"] = {
            "transform_parameters": list(transform.GetParameters()),
            "transform_fixed_parameters": list(transform.GetFixedParameters()),
            "source_affine": source_affine.tolist(),
            "source_shape": list(arr.shape),
            **frame_coverage(moving, self.grid, transform),
            "outside_fill": self.outside_fill,
        }
        data = torch.as_tensor(from_sitk(out).copy())
        if isinstance(img, torch.Tensor) and img.ndim == 4 or isinstance(img, np.ndarray) and img.ndim == 4:
            data = data[None]
        meta["affine"] = torch.as_tensor(self.affine)
        meta.pop("original_affine", None)
        return MetaTensor(data, affine=torch.as_tensor(self.affine), meta=meta)


    def label(self, label, frame_info: Mapping) -> MetaTensor:
        """Resample a label of the source scan onto the frame (nearest) with the transform in ``frame_info``."""
        transform = sitk.Euler3DTransform()
        transform.SetFixedParameters(frame_info["transform_fixed_parameters"])
        transform.SetParameters(frame_info["transform_parameters"])
        arr = _spatial_np(label).astype(np.float32)
        src = to_sitk(arr, np.asarray(frame_info["source_affine"], dtype=np.float64))
        out = sitk.Resample(src, self.grid, transform, sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
        data = torch.as_tensor(from_sitk(out).copy())
        if getattr(label, "ndim", 3) == 4:
            data = data[None]
        meta = {k: v for k, v in label.meta.items() if k not in ("affine", "original_affine")} if isinstance(label, MetaTensor) else {}
        return MetaTensor(data, affine=torch.as_tensor(self.affine), meta=meta)


class ToNetworkFramed(MapTransform):
    """Dictionary version of ``ToNetworkFrame``: ``keys`` are CT images (the first one is registered),
    ``label_keys`` are labels of that CT, resampled with the same transform (nearest neighbour)."""

    def __init__(self, keys: KeysCollection, label_keys: KeysCollection = (), allow_missing_keys: bool = False, **kwargs):
        super().__init__(keys, allow_missing_keys)
        self.label_keys = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)
        self.op = ToNetworkFrame(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        info = None
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
            info = d[key].meta["icac_frame"] if info is None else info
        for key in self.label_keys:
            if key in d:
                if info is None:
                    raise ValueError(f"ToNetworkFramed: label {key!r} without an image to register")
                d[key] = self.op.label(d[key], info)
        return d


_INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear}


class FromNetworkFrame(Transform):
    """Resample an array from the network frame back onto the original scan.

    Args:
        interpolation: ``"nearest"`` (the default; for a label map) or ``"linear"`` (for a
            probability map: the decision is then taken on the scan's own grid, so a boundary does
            not move by up to half a frame voxel, 0.5 mm along z, as a resampled label's does).

    ``frame_meta`` is the ``icac_frame`` dict ``ToNetworkFrame`` wrote; by default it is read from
    the array's own metadata. Scan voxels outside the frame get 0.
    """

    def __init__(self, interpolation: str = "nearest"):
        if interpolation not in _INTERPOLATORS:
            raise ValueError(f"FromNetworkFrame: interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}")
        self.interpolation = interpolation

    def __call__(self, seg, frame_meta: Mapping | None = None) -> MetaTensor:
        info = frame_meta if frame_meta is not None else (seg.meta.get("icac_frame") if isinstance(seg, MetaTensor) else None)
        if not info:
            raise ValueError("FromNetworkFrame: no 'icac_frame' metadata (was the image passed through ToNetworkFrame?)")
        transform = sitk.Euler3DTransform()
        transform.SetFixedParameters(info["transform_fixed_parameters"])
        transform.SetParameters(info["transform_parameters"])
        arr = _spatial_np(seg)
        frame = to_sitk(arr.astype(np.float32), _affine(seg))
        source_affine = np.asarray(info["source_affine"], dtype=np.float64)
        grid = to_sitk(np.zeros(info["source_shape"], np.uint8), source_affine)
        back = sitk.Resample(frame, grid, transform.GetInverse(), _INTERPOLATORS[self.interpolation], 0.0, sitk.sitkFloat32)
        data = torch.as_tensor(from_sitk(back).copy())
        if seg.ndim == 4:
            data = data[None]
        meta = {k: v for k, v in seg.meta.items() if k not in ("affine", "icac_frame")} if isinstance(seg, MetaTensor) else {}
        warning = coverage_warning(info)
        if warning:
            meta["ct_warnings"] = list(meta.get("ct_warnings") or []) + [warning]
        return MetaTensor(data, affine=torch.as_tensor(source_affine), meta=meta)


class _WithFrameMetad(MapTransform):
    """Applies ``op(array, frame_meta)`` to each key, with the ``icac_frame`` metadata of ``frame_key``."""

    def __init__(self, keys: KeysCollection, frame_key: str, op: Transform, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key
        self.op = op

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        src = d.get(self.frame_key)
        info = src.meta.get("icac_frame") if isinstance(src, MetaTensor) else None
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], info)
        return d


class FromNetworkFramed(_WithFrameMetad):
    """Dictionary version of ``FromNetworkFrame``; ``frame_key`` names the item holding the metadata."""

    def __init__(self, keys: KeysCollection, frame_key: str = "image", interpolation: str = "nearest",
                 allow_missing_keys: bool = False):
        super().__init__(keys, frame_key, FromNetworkFrame(interpolation), allow_missing_keys)


class ScanLabelFromFrameProbability(Transform):
    """The ICAC label on the original scan from the network's probability on the frame.

    The probability is resampled linearly onto the scan (``FromNetworkFrame("linear")``) and
    thresholded there (``threshold``; the paper's sigmoid unit at 0.5), and every positive voxel is
    labelled by side (1 = left, 2 = right carotid, ``SplitSides``) by where it lies in the frame,
    i.e. on the reference head, whose mid-sagittal plane is ``midline_x_mm`` (a side map made on the
    frame and resampled with nearest neighbour). Thresholding on the frame and resampling the label
    instead (nearest neighbour) moves every boundary by up to half a frame voxel: on the
    clinical-grid validation heads of session 7 that lowered the Dice (bundle docs/training_log.md, "Session 7").
    The 130 HU rule is applied afterwards, on the scan (``HUThresholdd``).

    Args:
        threshold: probability at or below which a voxel is background.
        midline_x_mm: world x of the reference head's mid-sagittal plane (mm).
    """

    def __init__(self, threshold: float = 0.5, midline_x_mm: float | None = 0.0):
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"ScanLabelFromFrameProbability: threshold must be in [0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.sides = SplitSides(midline_x_mm)
        self.to_scan = FromNetworkFrame("linear")
        self.label_to_scan = FromNetworkFrame("nearest")

    def __call__(self, prob, frame_meta: Mapping | None = None) -> MetaTensor:
        on_frame = prob if isinstance(prob, MetaTensor) else MetaTensor(torch.as_tensor(prob))
        info = frame_meta if frame_meta is not None else on_frame.meta.get("icac_frame")
        scan_prob = self.to_scan(on_frame, info)
        side = self.label_to_scan(self.sides(MetaTensor(torch.ones_like(on_frame.as_tensor()), affine=on_frame.affine)), info)
        label = (scan_prob.as_tensor() > self.threshold).to(torch.float32) * side.as_tensor()
        return MetaTensor(label, affine=scan_prob.affine, meta=scan_prob.meta)


class ScanLabelFromFrameProbabilityd(_WithFrameMetad):
    """Dictionary version of ``ScanLabelFromFrameProbability``; ``frame_key`` holds the ``icac_frame`` metadata."""

    def __init__(self, keys: KeysCollection, frame_key: str = "image", threshold: float = 0.5,
                 midline_x_mm: float | None = 0.0, allow_missing_keys: bool = False):
        super().__init__(keys, frame_key, ScanLabelFromFrameProbability(threshold, midline_x_mm), allow_missing_keys)

