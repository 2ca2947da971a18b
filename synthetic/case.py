"""The record every synthetic CT generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SyntheticCase:
    """One generated case with its ground truth.

    Arrays are spatial only, shape (X, Y, Z), axis 2 the axial slice axis, on the grid given by
    ``affine`` (4x4, RAS world coordinates in mm, MONAI convention).

    Attributes:
        kind: "chest", "cardiac", "head" or "ctp".
        case_id: identifier used for file names.
        image: the CT in HU, float32 (for "ctp" the non-contrast CT slab).
        affine: voxel-to-world matrix of ``image`` and every other array.
        label: uint8 ground-truth label map (values in ``label_names``).
        label_names: label name -> value, e.g. {"LM": 1, "LAD": 2, "LCX": 3, "RCA": 4}.
        extra: other arrays on the same grid: "heart_mask" (chest/cardiac), "CBF", "CBV", "MTT",
            "Tmax" (ctp, with the ISLES 2018 dtypes).
        truth: ground-truth scores computed by the project's scoring code from ``label``.
        meta: acquisition facts written into the files (kvp, slice_thickness_mm, patient_id, ...).
    """

    kind: str
    case_id: str
    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray
    label_names: dict[str, int]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along the three array axes."""
        return np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))
