"""orCaScore-style MetaImage layout (Wolterink et al., "An evaluation of automatic coronary artery
calcium scoring methods with cardiac CT using the orCaScore framework", Medical Physics 2016).

Layout (REFERENCES.md section 2)::

    <root>/Training/Images/TRV{vendor}P{patient}CTI.mhd (+ .raw)   non-contrast cardiac CT, int16 HU
    <root>/Training/Reference/TRV{vendor}P{patient}R.mhd (+ .raw)  reference label, uint8
    <root>/Test/Images/TEV{vendor}P{patient}CTI.mhd (+ .raw)       test scans (no reference)

Reference labels: 1 = LAD (the left main included), 2 = LCX, 3 = RCA, 4 = artery not determined.
:func:`write_case` remaps a synthetic case's native labels {"LM", "LAD", "LCX", "RCA"} to these and
writes a truth JSON (``<root>/Training/Truth/TRV{v}P{p}.json``) whose ``truth`` is re-scored on the
remapped label. MetaImage is written by SimpleITK, which keeps spacing, origin and direction
(LPS, the MetaImage convention; the array's RAS affine is converted).

:func:`build_datalist` pairs images and references by their ``V{v}P{p}`` token (case-insensitive),
takes images in a ``Test`` folder as test items, makes 4 cross-validation folds grouped by patient
and lists every unusable file under ``"excluded"`` with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ctbundles.datasets.datalist_io import atomic_write_json, patient_folds, write_datalist_json
from ctbundles.errors import CTInputError

ORCASCORE_LABELS = {"LAD": 1, "LCX": 2, "RCA": 3, "undetermined": 4}
"""orCaScore reference label values (LM is part of LAD)."""

NATIVE_TO_ORCASCORE = {"LM": 1, "LAD": 1, "LCX": 2, "RCA": 3}
"""Artery name of a native label -> orCaScore value."""

_TOKEN = re.compile(r"^(T[RE])V(\d+)P(\d+)(CTI|R)$", re.IGNORECASE)
_SPLITS = {"training": "TR", "train": "TR", "test": "TE", "testing": "TE"}


def case_stem(vendor: int, patient: int, split: str = "Training") -> str:
    """``TRV{vendor}P{patient}`` (or ``TEV...`` for the test split)."""
    prefix = "TE" if split.lower().startswith("te") else "TR"
    return f"{prefix}V{int(vendor)}P{int(patient)}"


def remap_to_orcascore(label: np.ndarray, label_names: dict[str, int]) -> np.ndarray:
    """Native label map -> orCaScore values (LM and LAD -> 1, LCX -> 2, RCA -> 3, other names -> 4)."""
    label = np.asarray(label)
    out = np.zeros(label.shape, np.uint8)
    for name, value in label_names.items():
        out[label == value] = NATIVE_TO_ORCASCORE.get(name, ORCASCORE_LABELS["undetermined"])
    return out


def _ras_to_lps_geometry(affine: np.ndarray):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing[None, :]
    return spacing, lps[:3, 3], direction


def write_mhd(path, array: np.ndarray, affine: np.ndarray, dtype=np.int16, compress: bool = False) -> Path:
    """Write ``array`` (X, Y, Z) with RAS ``affine`` as MetaImage ``path`` (.mhd + .raw) atomically.

    SimpleITK writes both files into a temporary folder beside ``path``; the .raw (or .zraw) is moved
    into place first and the .mhd last, so a visible .mhd always has its data file.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.suffix.lower() != ".mhd":
        raise ValueError(f"{path}: a MetaImage header must end in .mhd")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).astype(dtype).transpose(2, 1, 0)))
    spacing, origin, direction = _ras_to_lps_geometry(affine)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction.ravel()])
    tmpdir = Path(tempfile.mkdtemp(prefix=f".tmp-{path.stem}-", dir=path.parent))
    try:
        sitk.WriteImage(img, str(tmpdir / path.name), useCompression=compress)
        data_name = path.stem + (".zraw" if compress else ".raw")
        os.replace(tmpdir / data_name, path.parent / data_name)
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def read_mhd(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a MetaImage as (array (X, Y, Z), RAS affine) with SimpleITK."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    spacing = np.asarray(img.GetSpacing(), float)
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = img.GetOrigin()
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_case(case, root, vendor: int = 1, patient: int = 1, split: str = "Training", compress: bool = False) -> dict[str, Path]:
    """Write one synthetic cardiac/chest case as ``TRV{vendor}P{patient}`` (images, reference, truth JSON)."""
    root = Path(root)
    split_dir = root / ("Test" if split.lower().startswith("te") else "Training")
    stem = case_stem(vendor, patient, split)
    paths = {"image": write_mhd(split_dir / "Images" / f"{stem}CTI.mhd", case.image, case.affine, np.int16, compress)}
    ref = remap_to_orcascore(case.label, case.label_names)
    if split_dir.name == "Training":
        paths["label"] = write_mhd(split_dir / "Reference" / f"{stem}R.mhd", ref, case.affine, np.uint8, compress)
    record = {
        "case_id": case.case_id,
        "orcascore_id": stem,
        "kind": case.kind,
        "patient_id": case.meta.get("patient_id", case.case_id),
        "label_names": {k: v for k, v in ORCASCORE_LABELS.items() if k != "undetermined"},
        "native_label_names": dict(case.label_names),
        "meta": case.meta,
        "truth": _orcascore_truth(case, ref),
        "truth_native_labels": case.truth,
    }
    paths["truth"] = atomic_write_json(split_dir / "Truth" / f"{stem}.json", record)
    return paths


def _orcascore_truth(case, ref: np.ndarray) -> dict:
    """Scores of the remapped reference (LAD includes LM), by the project's scoring code."""
    try:
        from ctbundles.transforms.calcium_scoring import CalciumScoreParams, score_calcium
    except ImportError:  # pragma: no cover - the scoring module ships with the package
        return {}
    params = CalciumScoreParams(artery_labels={k: v for k, v in ORCASCORE_LABELS.items() if k != "undetermined"})
    spacing = [float(s) for s in case.spacing]
    return score_calcium(case.image, ref, spacing, slice_increment_mm=case.meta.get("slice_increment_mm", spacing[2]), params=params, affine=case.affine)


def _data_file_problem(mhd: Path) -> str | None:
    """Why a MetaImage header cannot be read with its data, or None."""
    try:
        text = mhd.read_text(errors="replace")
    except OSError as err:
        return f"unreadable header: {err}"
    fields = {}
    for line in text.splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            fields[k.strip().lower()] = v.strip()
    if "dimsize" not in fields:
        return "not a MetaImage header (no DimSize)"
    data = fields.get("elementdatafile")
    if data is None:
        return "MetaImage header has no ElementDataFile"
    if data.upper() != "LOCAL" and not data.upper().startswith("LIST") and "%" not in data:
        if not (mhd.parent / data).is_file():
            return f"data file {data} named by the header is missing"
    return None


def _size(mhd: Path) -> tuple[int, ...]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(mhd))
    reader.ReadImageInformation()
    return tuple(int(n) for n in reader.GetSize())


def _scan(root: Path):
    """Yield (split_code, path) for every .mhd under the split folders of ``root`` (case-insensitive names)."""
    for child in sorted(root.iterdir()):
        code = _SPLITS.get(child.name.lower())
        if code is None or not child.is_dir():
            continue
        for p in sorted(child.rglob("*")):
            if p.is_file() and p.suffix.lower() == ".mhd" and not any(part.startswith(".") for part in p.relative_to(root).parts):
                yield code, p


def build_datalist(root, folds: int = 4, seed: int = 0) -> dict:
    """Decathlon-style datalist of an orCaScore folder.

    Training images are paired with the reference of the same ``V{v}P{p}`` token; images under a
    ``Test`` folder become test items; 4 folds grouped by patient (``V{v}P{p}``). Files whose name
    does not follow the convention, images without reference, references without image, missing
    .raw files, unreadable headers and image/reference size mismatches go to ``"excluded"``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise CTInputError(f"{root}: orCaScore folder does not exist")
    found = list(_scan(root))
    if not found:
        raise CTInputError(f"{root}: no .mhd files under a Training/ or Test/ folder (expected Training/Images/TRV1P1CTI.mhd ...)")
    excluded = []
    images: dict[tuple[str, int, int], Path] = {}
    refs: dict[tuple[str, int, int], Path] = {}
    for code, p in found:
        m = _TOKEN.match(p.stem)
        if m is None:
            excluded.append({"path": str(p), "reason": "name does not follow TRV{v}P{p}CTI.mhd / TRV{v}P{p}R.mhd"})
            continue
        v, pt, kind = int(m.group(2)), int(m.group(3)), m.group(4).upper()
        problem = _data_file_problem(p)
        if problem:
            excluded.append({"path": str(p), "reason": problem})
            continue
        key = ("TE" if code == "TE" else "TR", v, pt)
        (images if kind == "CTI" else refs)[key] = p
    training, test = [], []
    for key, img in sorted(images.items()):
        split, v, pt = key
        item = {"image": str(img), "patient": f"V{v}P{pt}", "vendor": v, "case_id": f"{split}V{v}P{pt}"}
        if split == "TE":
            test.append(item)
            continue
        ref = refs.get(key)
        if ref is None:
            excluded.append({"path": str(img), "reason": f"no reference {split}V{v}P{pt}R.mhd for this training image"})
            continue
        try:
            si, sr = _size(img), _size(ref)
        except Exception as err:  # noqa: BLE001 - any reader failure makes the pair unusable
            excluded.append({"path": str(img), "reason": f"unreadable MetaImage: {err}"})
            continue
        if si != sr:
            excluded.append({"path": str(img), "reason": f"reference {ref.name} has size {sr}, image has {si}"})
            continue
        item["label"] = str(ref)
        truth = img.parent.parent / "Truth" / f"{split}V{v}P{pt}.json"
        if truth.is_file():
            item["truth"] = str(truth)
        training.append(item)
    for key, ref in sorted(refs.items()):
        if key not in images:
            excluded.append({"path": str(ref), "reason": f"reference without an image {key[0]}V{key[1]}P{key[2]}CTI.mhd"})
    fold_of = patient_folds([it["patient"] for it in training], folds, seed)
    for it in training:
        it["fold"] = fold_of[it["patient"]]
    return {
        "name": root.name,
        "layout": "orcascore",
        "root": str(root),
        "labels": {"0": "background", "1": "LAD", "2": "LCX", "3": "RCA", "4": "undetermined"},
        "folds": int(folds),
        "seed": int(seed),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "excluded": excluded,
    }


def write_datalist(root, out=None, folds: int = 4, seed: int = 0) -> Path:
    """Build the orCaScore datalist of ``root`` and write it (default ``<root>/datalist.json``)."""
    return write_datalist_json(build_datalist(root, folds=folds, seed=seed), Path(root) / "datalist.json" if out is None else out)


__all__ = [
    "NATIVE_TO_ORCASCORE",
    "ORCASCORE_LABELS",
    "build_datalist",
    "case_stem",
    "read_mhd",
    "remap_to_orcascore",
    "write_case",
    "write_datalist",
    "write_mhd",
]
