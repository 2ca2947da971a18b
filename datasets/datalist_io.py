"""Pieces every dataset layout shares: patient-grouped folds and datalist JSON.

Files are written through :mod:`ctbundles.atomic_io` (re-exported here for the layout modules).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ctbundles.atomic_io import (  # noqa: F401  (re-exported for the layout modules)
    IMAGE_SUFFIXES,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    split_suffix,
    to_jsonable,
)

SUPPORTED_IMAGE_SUFFIXES = IMAGE_SUFFIXES


def patient_folds(patients: Iterable[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Fold of each patient for ``folds``-fold cross-validation grouped by patient.

    The unique patients, sorted, are shuffled by ``numpy.random.default_rng(seed)`` and dealt round
    robin, so every scan of one patient is in one fold and fold sizes differ by at most one patient.
    """
    if int(folds) < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i]: int(rank % int(folds)) for rank, i in enumerate(order)}


def _rebase(value, base: Path):
    if isinstance(value, str) and os.path.isabs(value):
        try:
            rel = os.path.relpath(value, base)
        except ValueError:
            return value
        return value if rel.startswith("..") else rel
    return value


def write_datalist_json(datalist: dict, out: str | os.PathLike) -> Path:
    """Write a datalist atomically, with item paths under ``out``'s folder made relative to it.

    MONAI's ``load_decathlon_datalist`` resolves relative paths against the datalist's folder, so a
    cohort folder with its datalist can be moved as a whole; paths outside stay absolute.
    """
    out = Path(out).resolve()
    base = out.parent
    data = dict(datalist)
    for key in ("training", "validation", "test", "testing"):
        if key in data:
            data[key] = [{k: _rebase(v, base) for k, v in item.items()} for item in data[key]]
    return atomic_write_json(out, data)
