"""Pieces every dataset layout shares: atomic file writes, patient-grouped folds, datalist JSON.

Atomic writes follow the project rule: write into a temporary name in the destination folder, then
``os.replace`` it onto the final name, so a reader never sees a half-written file and an
interrupted run leaves no truncated output (only a hidden ``.tmp-*`` file to ignore).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

SUPPORTED_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".nrrd")


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) for the image suffixes above (``case.nii.gz`` -> ``("case", ".nii.gz")``); suffix "" if none."""
    low = name.lower()
    for suf in SUPPORTED_IMAGE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)], name[-len(suf) :]
    return name, ""


def atomic_write(path: str | os.PathLike, writer: Callable[[str], Any], suffix: str | None = None) -> Path:
    """Call ``writer(tmp_path)`` with a temporary name in ``path``'s folder, then rename it onto ``path``.

    ``suffix`` (default: the file's own image suffix or extension) ends the temporary name, so
    writers that pick the format from the extension (nibabel, SimpleITK) write the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = split_suffix(path.name)[1] or path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def to_jsonable(obj):
    """Numpy scalars/arrays, tuples and paths inside ``obj`` as plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON atomically."""

    def _write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(to_jsonable(data), fh, indent=2)
            fh.write("\n")

    return atomic_write(path, _write, suffix=".json")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically."""

    def _write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _write, suffix=Path(path).suffix or ".txt")


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
    for key in ("training", "validation", "test"):
        if key in data:
            data[key] = [{k: _rebase(v, base) for k, v in item.items()} for item in data[key]]
    return atomic_write_json(out, data)
