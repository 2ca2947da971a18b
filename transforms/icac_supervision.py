"""Voxel selection of the ICAC method (Bortsova et al., MICCAI 2017, Sec. 2.2 and 3).

- ``SupervisionMask`` / ``SupervisionMaskd``: the paper's ">130 HU objective": label voxels whose
  CT value is below the calcification threshold are set to ``ignore_value`` so the loss
  (``ctbundles.losses.icac_masked_ce.ICACMaskedCELoss``) leaves them out; ``enabled=False`` keeps
  every voxel supervised (the ablation "supervision of all voxels").
- ``HUThreshold`` / ``HUThresholdd``: the final segmentation keeps only voxels at or above 130 HU
  ("The final segmentation was obtained by removing the voxels below 130 HU").
- ``SamplingClasses`` / ``SamplingClassesd``: a class map for patch sampling on a supervision label
  (ICAC, supervised voxels near ICAC, other supervised voxels), so training patches can be centred
  on ICAC and on the bone next to it (the synthetic recipe, bundle docs "Performance").

The threshold test is ``HU >= threshold`` (the project's calcium-scoring convention,
REFERENCES.md section 1; the paper says "above 130 HU").
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from ctbundles.switches import require_bool

__all__ = [
    "SupervisionMask", "SupervisionMaskd", "HUThreshold", "HUThresholdd", "SplitSides", "SplitSidesd",
    "SamplingClasses", "SamplingClassesd",
]


def _check_same_shape(a, b, what: str) -> None:
    if tuple(a.shape[-3:]) != tuple(b.shape[-3:]):
        raise ValueError(f"{what}: spatial shapes differ, {tuple(a.shape)} vs CT {tuple(b.shape)}")


class SupervisionMask(Transform):
    """Set label voxels below ``threshold_hu`` in the CT to ``ignore_value`` (paper Sec. 2.2).

    Args:
        threshold_hu: calcification threshold (130 HU).
        ignore_value: label value the loss ignores (-1).
        enabled: False returns the label unchanged (every voxel supervised).
    """

    def __init__(self, threshold_hu: float = 130.0, ignore_value: float = -1.0, enabled: bool = True):
        self.threshold_hu = float(threshold_hu)
        self.ignore_value = float(ignore_value)
        self.enabled = require_bool(enabled, "supervise_above_130hu", "SupervisionMask")

    def __call__(self, label, image):
        if not self.enabled:
            return label
        _check_same_shape(label, image, "SupervisionMask")
        below = image < self.threshold_hu
        if isinstance(label, torch.Tensor):
            below = torch.as_tensor(below, device=label.device)
            return torch.where(below, torch.as_tensor(self.ignore_value, dtype=label.dtype, device=label.device), label)
        return np.where(np.asarray(below), np.asarray(self.ignore_value, dtype=label.dtype), label)


class SupervisionMaskd(MapTransform):
    """Dictionary version of ``SupervisionMask``: ``keys`` are labels, ``image_key`` the CT in HU."""

    def __init__(self, keys: KeysCollection, image_key: str = "image", threshold_hu: float = 130.0,
                 ignore_value: float = -1.0, enabled: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.op = SupervisionMask(threshold_hu, ignore_value, enabled)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], d[self.image_key])
        return d


class HUThreshold(Transform):
    """Zero a segmentation wherever the CT is below ``threshold_hu`` (paper Sec. 3, post-processing).

    Args:
        threshold_hu: 130 HU.
    """

    def __init__(self, threshold_hu: float = 130.0):
        self.threshold_hu = float(threshold_hu)

    def __call__(self, seg, image):
        _check_same_shape(seg, image, "HUThreshold")
        keep = image >= self.threshold_hu
        if isinstance(seg, torch.Tensor):
            return seg * torch.as_tensor(keep, device=seg.device).to(seg.dtype)
        return np.asarray(seg) * np.asarray(keep).astype(np.asarray(seg).dtype)


class HUThresholdd(MapTransform):
    """Dictionary version of ``HUThreshold``: ``keys`` are segmentations, ``image_key`` the CT in HU."""

    def __init__(self, keys: KeysCollection, image_key: str = "image", threshold_hu: float = 130.0,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.op = HUThreshold(threshold_hu)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], d[self.image_key])
        return d


class SplitSides(Transform):
    """Label a binary ICAC segmentation by side: 1 = left, 2 = right carotid (the project's head labels).

    The paper segments ICAC as one class; the ICAC volume is reported "per side when the sides are
    separable". A voxel whose world x (RAS, mm; +x towards the patient's right) is above
    ``midline_x_mm`` is right, otherwise left. In the registered network frame (the reference head,
    whose head frame is the world frame) the mid-sagittal plane is x = 0; ``None`` uses the world x
    of the volume centre, which is the midline only for a head centred in the field of view.

    Args:
        midline_x_mm: world x of the mid-sagittal plane (mm), or None (the volume centre).
    """

    def __init__(self, midline_x_mm: float | None = None):
        self.midline_x_mm = midline_x_mm

    def __call__(self, seg):
        affine = np.asarray(seg.affine if hasattr(seg, "affine") else np.eye(4), dtype=np.float64)
        spatial = seg.shape[-3:]
        idx = [np.arange(n, dtype=np.float64) for n in spatial]
        world_x = (affine[0, 0] * idx[0][:, None, None] + affine[0, 1] * idx[1][None, :, None]
                   + affine[0, 2] * idx[2][None, None, :] + affine[0, 3])
        if self.midline_x_mm is None:
            centre = (np.asarray(spatial, dtype=np.float64) - 1) / 2
            midline = float(affine[0, :3] @ centre + affine[0, 3])
        else:
            midline = float(self.midline_x_mm)
        side = np.where(world_x > midline, 2, 1)
        if isinstance(seg, torch.Tensor):
            side_t = torch.as_tensor(side, device=seg.device, dtype=seg.dtype)
            return (seg > 0).to(seg.dtype) * side_t
        return (np.asarray(seg) > 0).astype(np.asarray(seg).dtype) * side.astype(np.asarray(seg).dtype)


class SplitSidesd(MapTransform):
    """Dictionary version of ``SplitSides``."""

    def __init__(self, keys: KeysCollection, midline_x_mm: float | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.op = SplitSides(midline_x_mm)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


class SamplingClasses(Transform):
    """Class map for patch sampling from a supervision label (values -1 ignored, 0, > 0 ICAC).

    The paper samples patches from whole scans (Sec. 3); on a small synthetic cohort the errors
    are false positives on bone next to the carotids, so the synthetic recipe centres patches on
    three classes in chosen ratios (``monai.transforms.RandCropByLabelClassesd``):

    - 1: ICAC (label > 0);
    - 2: supervised non-ICAC voxels (label == 0; with the >130 HU objective: bone) within
      ``margin`` voxels (a box, per axis) of an ICAC voxel;
    - 3: the other supervised non-ICAC voxels;
    - 0: ignored voxels (label < 0: below 130 HU, or padding).

    Args:
        margin: half size of the box around each ICAC voxel, in voxels per spatial axis.
    """

    def __init__(self, margin=(32, 32, 12)):
        self.margin = tuple(int(m) for m in margin)
        if any(m < 0 for m in self.margin):
            raise ValueError(f"SamplingClasses: margin must be >= 0, got {self.margin}")

    def __call__(self, label):
        from scipy.ndimage import maximum_filter

        lab = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if lab.ndim != 4 or len(self.margin) != 3:
            raise ValueError(f"SamplingClasses: expected a (C, X, Y, Z) label and 3 margins, got {lab.shape}")
        icac = lab[0] > 0
        near = maximum_filter(icac, size=tuple(2 * m + 1 for m in self.margin), mode="constant", cval=False)
        out = np.zeros(lab.shape[1:], dtype=np.uint8)
        out[lab[0] == 0] = 3
        out[(lab[0] == 0) & near] = 2
        out[icac] = 1
        out = out[None]
        if isinstance(label, torch.Tensor):
            return torch.as_tensor(out, device=label.device)
        return out


class SamplingClassesd(MapTransform):
    """Dictionary version of ``SamplingClasses``: writes the class map of ``keys`` to ``<key>_classes``."""

    def __init__(self, keys: KeysCollection, margin=(32, 32, 12), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.op = SamplingClasses(margin)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_classes"] = self.op(d[key])
        return d
