"""Checks on a loaded CT: problems that silently ruin a calcium score (``../shared/REFERENCES.md`` s.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctbundles.errors import CTInputError


@dataclass(frozen=True)
class Finding:
    """One problem found in a CT: a short ``code``, a ``severity`` ("error", "warning", "info")
    and a one-sentence ``message`` with the numbers."""

    code: str
    severity: str
    message: str


def _name(x) -> str:
    meta = getattr(x, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory array>"))


def assert_same_grid(image, label, atol: float = 1e-3) -> None:
    """Raise CTInputError unless ``label`` has ``image``'s shape and affine (within ``atol`` mm)."""
    img_shape, lab_shape = tuple(image.shape[-3:]), tuple(label.shape[-3:])
    img_aff = np.asarray(getattr(image, "affine", np.eye(4)), dtype=float)
    lab_aff = np.asarray(getattr(label, "affine", np.eye(4)), dtype=float)
    if img_shape == lab_shape and np.allclose(img_aff, lab_aff, atol=atol):
        return
    fmt = lambda a: np.array2string(a, precision=4, suppress_small=True, separator=", ").replace("\n", "")
    raise CTInputError(
        f"label {_name(label)} is not on the grid of image {_name(image)}: "
        f"image shape {img_shape}, label shape {lab_shape}; "
        f"image affine {fmt(img_aff)}, label affine {fmt(lab_aff)}"
    )
