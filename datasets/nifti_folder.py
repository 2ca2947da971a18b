"""NIfTI folder layout (``folder``): images and labels paired by file name, plus a datalist JSON.

Layout written by :func:`write_case` (nnU-Net / Medical Segmentation Decathlon style)::

    <root>/imagesTr/<id>.nii.gz          CT in HU (int16 when the values are integers, else float32)
    <root>/labelsTr/<id>.nii.gz          uint8 label map (the case's ``label_names``)
    <root>/extrasTr/<id>_<name>.nii.gz   other arrays on the same grid (heart_mask, CBF, ...)
    <root>/truth/<id>.json               ground-truth scores, label names, acquisition meta
    <root>/datalist.json                 from :func:`write_datalist`

:func:`build_datalist` reads any folder of this shape (images in ``imagesTr``, optional test images
in ``imagesTs``, labels in ``labelsTr``), pairing an image with the label of the same name (an
nnU-Net channel suffix ``_0000`` on the image is ignored). Unpaired, unreadable or mismatched files
are listed under ``"excluded"`` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ctbundles.datasets.datalist_io import (
    atomic_write,
    atomic_write_json,
    patient_folds,
    split_suffix,
    write_datalist_json,
)
from ctbundles.errors import CTInputError

DEFAULT_FOLDS = 5
IMAGES, LABELS, EXTRAS, TRUTH, TEST_IMAGES = "imagesTr", "labelsTr", "extrasTr", "truth", "imagesTs"


def _storage_dtype(array: np.ndarray) -> np.dtype:
    """int16 for integer-valued arrays in the int16 range, uint8 for small labels, else the array's own type."""
    a = np.asarray(array)
    if a.dtype.kind in "ui" or a.dtype == bool:
        return np.dtype(np.uint8) if a.size and a.min() >= 0 and a.max() <= 255 else np.dtype(a.dtype)
    if a.size and np.all(np.isfinite(a)) and a.min() >= -32768 and a.max() <= 32767 and np.array_equal(a, np.rint(a)):
        return np.dtype(np.int16)
    return np.dtype(np.float32) if a.dtype == np.float64 else np.dtype(a.dtype)


def write_nifti(path, array, affine, dtype=None) -> Path:
    """Write ``array`` (X, Y, Z) with its 4x4 RAS ``affine`` as NIfTI, atomically (sform and qform set)."""
    a = np.asarray(array)
    dtype = _storage_dtype(a) if dtype is None else np.dtype(dtype)
    img = nib.Nifti1Image(a.astype(dtype, copy=False), np.asarray(affine, float))
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(np.asarray(affine, float), code=1)
    img.set_qform(np.asarray(affine, float), code=1)
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


def write_case(case, root) -> dict[str, Path]:
    """Write one :class:`~ctbundles.synthetic.case.SyntheticCase` into the folder layout; returns the paths."""
    root = Path(root)
    cid = case.case_id
    paths = {
        "image": write_nifti(root / IMAGES / f"{cid}.nii.gz", case.image, case.affine),
        "label": write_nifti(root / LABELS / f"{cid}.nii.gz", case.label, case.affine, dtype=np.uint8),
    }
    for name, arr in case.extra.items():
        paths[name] = write_nifti(root / EXTRAS / f"{cid}_{name}.nii.gz", arr, case.affine)
    paths["truth"] = atomic_write_json(root / TRUTH / f"{cid}.json", truth_record(case))
    return paths


def truth_record(case) -> dict:
    """The JSON written next to a case: id, kind, label names, acquisition meta and ground truth."""
    return {
        "case_id": case.case_id,
        "kind": case.kind,
        "patient_id": case.meta.get("patient_id", case.case_id),
        "label_names": dict(case.label_names),
        "spacing_mm": [float(s) for s in case.spacing],
        "shape": list(np.asarray(case.image).shape),
        "meta": case.meta,
        "truth": case.truth,
    }


def _header_shape(path: Path) -> tuple[int, ...]:
    """Shape from the file header (nibabel for NIfTI, SimpleITK otherwise); raises on unreadable files."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return tuple(int(n) for n in nib.load(str(path)).shape)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(int(n) for n in reader.GetSize())


def _listing(folder: Path) -> dict[str, Path]:
    """case name -> file for the image files in ``folder`` (hidden and temporary files skipped)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        stem, suf = split_suffix(p.name)
        if not suf:
            continue
        out[stem] = p
    return out


def _case_name(stem: str) -> str:
    return stem[:-5] if stem.endswith("_0000") else stem


def _patient(root: Path, name: str) -> str:
    tp = root / TRUTH / f"{name}.json"
    if tp.is_file():
        try:
            return str(json.loads(tp.read_text()).get("patient_id", name))
        except (OSError, ValueError):
            return name
    return name


def build_datalist(root, folds: int | None = None, seed: int = 0) -> dict:
    """Decathlon-style datalist of a NIfTI folder, images paired with labels by name.

    Args:
        root: folder holding ``imagesTr`` and ``labelsTr`` (optionally ``imagesTs``, ``extrasTr``, ``truth``).
        folds: number of cross-validation folds, grouped by patient (``truth/<id>.json``
            ``patient_id`` when present, else the case name); None means :data:`DEFAULT_FOLDS`.
        seed: seed of the fold assignment.

    Returns:
        ``{"layout": "folder", "training": [{"image", "label", "fold", "patient", extras...}],
        "test": [...], "excluded": [{"path", "reason"}], ...}`` with absolute paths.
    """
    root = Path(root).resolve()
    if not (root / IMAGES).is_dir():
        raise CTInputError(f"{root}: not a NIfTI folder dataset: no {IMAGES}/ folder (expected {IMAGES}/<id>.nii.gz and {LABELS}/<id>.nii.gz)")
    k = DEFAULT_FOLDS if folds is None else int(folds)
    images = {_case_name(s): p for s, p in _listing(root / IMAGES).items()}
    labels = _listing(root / LABELS)
    extras = _listing(root / EXTRAS)
    excluded, items = [], []
    for name, img in images.items():
        lab = labels.get(name)
        if lab is None:
            excluded.append({"path": str(img), "reason": f"no label named {name} in {root / LABELS}"})
            continue
        try:
            shape_i = _header_shape(img)
        except Exception as err:  # noqa: BLE001 - any reader failure makes the file unusable
            excluded.append({"path": str(img), "reason": f"unreadable image: {err}"})
            continue
        try:
            shape_l = _header_shape(lab)
        except Exception as err:  # noqa: BLE001
            excluded.append({"path": str(lab), "reason": f"unreadable label: {err}"})
            continue
        if shape_i != shape_l:
            excluded.append({"path": str(img), "reason": f"label {lab.name} has shape {shape_l}, image has {shape_i}"})
            continue
        item = {"image": str(img), "label": str(lab), "patient": _patient(root, name), "case_id": name}
        for stem, p in extras.items():
            if stem.startswith(f"{name}_"):
                item[stem[len(name) + 1 :]] = str(p)
        if (root / TRUTH / f"{name}.json").is_file():
            item["truth"] = str(root / TRUTH / f"{name}.json")
        items.append(item)
    for name, lab in labels.items():
        if name not in images:
            excluded.append({"path": str(lab), "reason": f"label without an image named {name} in {root / IMAGES}"})
    fold_of = patient_folds([it["patient"] for it in items], k, seed)
    for it in items:
        it["fold"] = fold_of[it["patient"]]
    test = [{"image": str(p), "case_id": _case_name(s)} for s, p in _listing(root / TEST_IMAGES).items()]
    return {
        "name": root.name,
        "layout": "folder",
        "root": str(root),
        "folds": k,
        "seed": int(seed),
        "numTraining": len(items),
        "numTest": len(test),
        "training": items,
        "test": test,
        "excluded": excluded,
    }


def write_datalist(root, out=None, folds: int | None = None, seed: int = 0, label_names: dict | None = None) -> Path:
    """Build the datalist of ``root`` and write it (default ``<root>/datalist.json``); returns its path."""
    datalist = build_datalist(root, folds=folds, seed=seed)
    if label_names:
        datalist["labels"] = {"0": "background", **{str(v): k for k, v in label_names.items()}}
    return write_datalist_json(datalist, Path(root) / "datalist.json" if out is None else out)


__all__ = ["build_datalist", "truth_record", "write_case", "write_datalist", "write_nifti"]
