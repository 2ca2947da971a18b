"""The ISLES 2018 layout (CT perfusion stroke lesions): writer, datalist builder, map stacker.

Layout (``../shared/REFERENCES.md`` section 3; ISLES 2018 challenge data)::

    ROOT/TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii
    ROOT/TESTING/case_N/...           (same, without OT)

with MOD in CT, CT_4DPWI, CT_CBF, CT_CBV, CT_MTT, CT_Tmax and OT (the lesion mask, training
only). The numeric ids are unique per file and are NOT in modality order, so folders are matched
by the modality in their name, never by id. Dtypes: CT int32, CBF/CBV uint16, MTT/Tmax float64,
OT uint8.

Patients. Several ISLES 2018 patients have two slabs (A/B), each its own ``case_N``; the file
names do not say which cases belong to one patient and the challenge did not ship a mapping.
``build_datalist`` therefore groups cases by patient only from a mapping file: ``patients.csv``
(columns ``case`` and ``patient``, optional ``split`` and ``slab``) in ROOT, or one given
explicitly. ``write_case`` keeps that file up to date for the synthetic cohorts. Without a
mapping every case is its own patient, and the datalist says so in ``patient_grouping`` (folds
are then only case-grouped: slabs of one real patient may land in different folds).

The 4D perfusion series (CT_4DPWI) is optional: ``write_case(..., pwi_frames=T)`` writes a small
T-frame series (int16 HU, contrast arrival delayed by Tmax and scaled by CBV); by default it is
not written, and the datalist lists it under ``"pwi"`` when present but never requires it.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ctbundles.atomic_io import atomic_write, atomic_write_text
from ctbundles.errors import CTInputError

PREFIX = "SMIR.Brain.XX.O."
MODALITIES = ("CT", "CT_4DPWI", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT")
MAP_MODALITIES = ("CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax")
"""Channel order of ``image`` in the datalist and of ``stack_maps``: CBF, CBV, MTT, Tmax."""
REQUIRED = {"TRAINING": ("CT",) + MAP_MODALITIES + ("OT",), "TESTING": ("CT",) + MAP_MODALITIES}
DTYPES = {"CT": np.int32, "CT_CBF": np.uint16, "CT_CBV": np.uint16, "CT_MTT": np.float64, "CT_Tmax": np.float64,
          "OT": np.uint8, "CT_4DPWI": np.int16}
ITEM_KEYS = {"CT": "ct", "CT_CBF": "cbf", "CT_CBV": "cbv", "CT_MTT": "mtt", "CT_Tmax": "tmax", "OT": "label",
             "CT_4DPWI": "pwi"}
_FOLDER_RE = re.compile(r"^SMIR\.Brain\.XX\.O\.(?P<mod>[A-Za-z0-9_]+)\.(?P<id>\d+)$")
_CASE_RE = re.compile(r"^case_(\d+)$")
PATIENTS_FILE = "patients.csv"


# --------------------------------------------------------------------------------------------
# atomic writers
# --------------------------------------------------------------------------------------------


def _save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    atomic_write(path, lambda tmp: nib.save(img, tmp))


def _nifti(array: np.ndarray, affine: np.ndarray, dtype) -> nib.Nifti1Image:
    data = np.asarray(array)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = nib.Nifti1Image(data.astype(dtype), np.asarray(affine, float))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(np.asarray(affine, float), code=1)
    img.set_sform(np.asarray(affine, float), code=1)
    return img


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


def _existing_ids(root: Path) -> set[int]:
    ids = set()
    for split_dir in (root / "TRAINING", root / "TESTING"):
        if split_dir.is_dir():
            for case_dir in split_dir.iterdir():
                if case_dir.is_dir():
                    for sub in case_dir.iterdir():
                        m = _FOLDER_RE.match(sub.name)
                        if m:
                            ids.add(int(m.group("id")))
    return ids


def _draw_ids(rng: np.random.Generator, modalities, taken: set[int]) -> dict[str, int]:
    """Unique random ids, one per modality, whose numeric order is not the modality order."""
    while True:
        ids = [int(v) for v in rng.choice(np.arange(100000, 1000000), size=len(modalities), replace=False)]
        if taken.intersection(ids):
            continue
        if len(ids) > 1 and ids == sorted(ids):
            continue
        return dict(zip(modalities, ids))


def _pwi_series(case, frames: int) -> np.ndarray:
    """A small 4D perfusion series: baseline CT plus a gamma-variate bolus per voxel, arriving
    Tmax seconds late, with height scaled by CBV (a rough stand-in, not a deconvolution model)."""
    t = np.arange(frames, dtype=np.float32) * (40.0 / max(frames - 1, 1))
    delay = 8.0 + np.asarray(case.extra["Tmax"], np.float32)[..., None]
    s = np.clip(t[None, None, None, :] - delay, 0.0, None)
    curve = (s / 4.0) ** 2 * np.exp(-(s / 4.0) + 2.0) / 4.0  # peak 1 at 8 s after arrival
    enhancement = np.asarray(case.extra["CBV"], np.float32)[..., None] * 1.5 * curve
    return np.asarray(case.image, np.float32)[..., None] + enhancement


def write_case(case, root, split: str = "TRAINING", case_number: int | None = None, *, id_seed=None,
               pwi_frames: int = 0, patient_id: str | None = None, record_patient: bool = True) -> Path:
    """Write one CTP slab (``ctbundles.synthetic.ctp.generate_ctp``) in the ISLES 2018 layout.

    Args:
        case: a ``SyntheticCase`` of kind "ctp" (``image`` the CT, ``extra`` the four maps,
            ``label`` the lesion mask).
        root: dataset root (the folder holding TRAINING/ and TESTING/).
        split: "TRAINING" (writes OT) or "TESTING" (no OT).
        case_number: N of ``case_N``; default the next free number in the split.
        id_seed: seed of the random file ids (default derived from the case id and number); ids
            are unique across ROOT and never in modality order.
        pwi_frames: frames of the optional CT_4DPWI series (0: not written).
        patient_id: patient of this slab (default ``case.meta["patient_id"]``); recorded with the
            slab in ROOT/patients.csv when ``record_patient``.

    Returns the case folder.
    """
    root = Path(root)
    split = split.upper()
    if split not in REQUIRED:
        raise ValueError(f"split must be TRAINING or TESTING, got {split!r}")
    split_dir = root / split
    if case_number is None:
        used = [int(m.group(1)) for p in split_dir.glob("case_*") if (m := _CASE_RE.match(p.name))]
        case_number = max(used, default=0) + 1
    case_dir = split_dir / f"case_{int(case_number)}"
    if case_dir.exists() and any(case_dir.iterdir()):
        raise FileExistsError(f"{case_dir} already holds files; refusing to overwrite an existing case")
    arrays = {"CT": case.image, "CT_CBF": case.extra["CBF"], "CT_CBV": case.extra["CBV"],
              "CT_MTT": case.extra["MTT"], "CT_Tmax": case.extra["Tmax"]}
    if split == "TRAINING":
        arrays["OT"] = case.label
    if pwi_frames:
        arrays["CT_4DPWI"] = _pwi_series(case, int(pwi_frames))
    seed = id_seed if id_seed is not None else [sum(map(ord, case.case_id)), int(case_number), len(split)]
    ids = _draw_ids(np.random.default_rng(seed), list(arrays), _existing_ids(root))
    for mod, array in arrays.items():
        name = f"{PREFIX}{mod}.{ids[mod]}"
        _save_nifti(_nifti(array, case.affine, DTYPES[mod]), case_dir / name / f"{name}.nii")
    if record_patient:
        _record_patient(root, split, case_dir.name, patient_id or case.meta.get("patient_id", case.case_id),
                        case.meta.get("slab", ""))
    return case_dir


def _record_patient(root: Path, split: str, case_name: str, patient: str, slab: str) -> None:
    path = root / PATIENTS_FILE
    rows = _read_patients_rows(path) if path.is_file() else []
    rows = [r for r in rows if not (r.get("split", split) == split and r["case"] == case_name)]
    rows.append({"split": split, "case": case_name, "patient": patient, "slab": slab})
    rows.sort(key=lambda r: (r["split"], _case_number(r["case"])))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["split", "case", "patient", "slab"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_cohort(root, n_patients: int, seed: int = 0, split: str = "TRAINING", first_case: int = 1,
                 pwi_frames: int = 0, **ctp_options) -> list[Path]:
    """Generate ``n_patients`` synthetic CTP patients (seeds seed .. seed+n-1) and write every
    slab as its own consecutive ``case_N``; the patient of each case goes to patients.csv."""
    from ctbundles.synthetic.ctp import generate_ctp_patient

    written = []
    number = int(first_case)
    for p in range(int(n_patients)):
        for case in generate_ctp_patient(int(seed) + p, **ctp_options):
            written.append(write_case(case, root, split=split, case_number=number, pwi_frames=pwi_frames))
            number += 1
    return written


# --------------------------------------------------------------------------------------------
# reader / datalist
# --------------------------------------------------------------------------------------------


def _case_number(name: str) -> int:
    m = _CASE_RE.match(str(name))
    if m:
        return int(m.group(1))
    return int(name) if str(name).isdigit() else -1


def _read_patients_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"case", "patient"} <= set(reader.fieldnames):
                raise CTInputError(f"{path}: a patient mapping needs the columns 'case' and 'patient', "
                                   f"found {reader.fieldnames}")
            rows = []
            for r in reader:
                case = str(r["case"]).strip()
                rows.append({"split": (r.get("split") or "").strip().upper(),
                             "case": case if case.startswith("case_") else f"case_{case}",
                             "patient": str(r["patient"]).strip(), "slab": (r.get("slab") or "").strip()})
            return rows
    except OSError as err:
        raise CTInputError(f"{path}: cannot read the patient mapping ({err})") from err


def _find_splits(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise CTInputError(f"{root}: not a folder; an ISLES 2018 root holds TRAINING/ and/or TESTING/")
    splits = {}
    for name in ("TRAINING", "TESTING"):
        for cand in (root / name, root / name.lower(), root / name.capitalize()):
            if cand.is_dir():
                splits[name] = cand
                break
    if not splits and any(_CASE_RE.match(p.name) for p in root.iterdir() if p.is_dir()):
        splits["TESTING" if "TEST" in root.name.upper() else "TRAINING"] = root
    if not splits or not any(_CASE_RE.match(p.name) for d in splits.values() for p in d.iterdir() if p.is_dir()):
        raise CTInputError(f"{root}: not an ISLES 2018 layout: expected TRAINING/case_N/ or TESTING/case_N/ "
                           f"folders holding SMIR.Brain.XX.O.<MOD>.<id>/ sub-folders")
    return splits


def _scan_case(case_dir: Path, required) -> tuple[dict[str, Path], list[str]]:
    """Files per modality of one case folder, and the problems that exclude it."""
    found: dict[str, list[Path]] = {}
    problems = []
    for sub in sorted(case_dir.iterdir()):
        m = _FOLDER_RE.match(sub.name)
        if not m or not sub.is_dir():
            continue
        mod = m.group("mod")
        if mod not in MODALITIES:
            continue
        nii = [p for p in (sub / f"{sub.name}.nii", sub / f"{sub.name}.nii.gz") if p.is_file()]
        if not nii:
            nii = sorted(p for p in sub.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not nii:
            problems.append(f"{mod} folder {sub.name} holds no .nii file")
            found.setdefault(mod, [])
            continue
        if len(nii) > 1:
            problems.append(f"{mod} folder {sub.name} holds {len(nii)} NIfTI files")
        found.setdefault(mod, []).extend(nii[:1])
    for mod, paths in found.items():
        if len(paths) > 1:
            problems.append(f"{len(paths)} {mod} folders: " + ", ".join(p.parent.name for p in paths))
    missing = [mod for mod in required if mod not in found]
    if missing:
        problems.insert(0, "missing " + ", ".join(missing))
    files = {mod: paths[0] for mod, paths in found.items() if len(paths) == 1}
    if not problems:
        shapes = {}
        for mod in required:
            try:
                shapes[mod] = tuple(nib.load(str(files[mod])).shape[:3])
            except Exception as err:  # nibabel raises several types for a broken header
                problems.append(f"unreadable {mod} file {files[mod].name}: {err}")
        if not problems:
            first = required[0]
            for mod, shape in shapes.items():
                if shape != shapes[first]:
                    problems.append(f"{mod} grid {shape} differs from {first} grid {shapes[first]}")
    return files, problems


def _assign_folds(case_patients: dict[str, str], folds: int, seed: int) -> dict[str, int]:
    """Group k-fold: every case of a patient in one fold; patients shuffled by ``seed`` and
    placed largest first into the fold with the fewest cases."""
    groups: dict[str, list[str]] = {}
    for case, patient in case_patients.items():
        groups.setdefault(patient, []).append(case)
    order = sorted(groups)
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    order.sort(key=lambda p: -len(groups[p]))  # stable: shuffled order kept within one size
    counts = [0] * folds
    fold_of = {}
    for patient in order:
        k = int(np.argmin(counts))
        counts[k] += len(groups[patient])
        for case in groups[patient]:
            fold_of[case] = k
    return fold_of


def build_datalist(root, folds: int | None = 5, seed: int = 0, patients_csv=None, relative: bool = True) -> dict:
    """A MONAI (decathlon-style) datalist of an ISLES 2018 folder.

    Folders are matched by the modality in their name, never by the numeric id. Each training
    item: ``image`` = [CBF, CBV, MTT, Tmax] (that channel order), ``label`` (OT), ``ct``, ``cbf``,
    ``cbv``, ``mtt``, ``tmax``, ``pwi`` (when present), ``case``, ``patient``, ``slab`` and
    ``fold`` (group k-fold by patient; no ``fold`` when ``folds`` is None). TESTING cases go to
    ``testing`` without label or fold. Cases with a missing, duplicated, unreadable or
    mismatched modality go to ``excluded`` as {"path", "reason"}, the reason naming the modality.

    Args:
        root: the dataset root (holding TRAINING/ and/or TESTING/), or a split folder itself.
        folds: number of cross-validation folds.
        seed: shuffles patients before they are dealt to folds.
        patients_csv: case -> patient mapping (columns ``case``, ``patient``, optional
            ``split``, ``slab``); default ROOT/patients.csv when present, else one patient per
            case.
        relative: paths relative to ``root`` (decathlon style, load with
            ``monai.data.load_decathlon_datalist(..., base_dir=root)``); False for absolute.

    Raises ``CTInputError`` when ``root`` is not an ISLES 2018 layout at all.
    """
    root = Path(root)
    splits = _find_splits(root)
    mapping_path = Path(patients_csv) if patients_csv is not None else root / PATIENTS_FILE
    if patients_csv is not None and not mapping_path.is_file():
        raise CTInputError(f"{mapping_path}: patient mapping file not found")
    mapping = {}
    if mapping_path.is_file():
        for r in _read_patients_rows(mapping_path):
            mapping[(r["split"], r["case"])] = (r["patient"], r["slab"])
        grouping = f"{mapping_path.name}: cases grouped by the patient column"
    else:
        grouping = ("none: each case is its own patient (ISLES 2018 file names do not name the patient; "
                    "give a patients.csv with case,patient columns to keep A/B slabs in one fold)")

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix() if relative else str(p.resolve())

    out = {"name": "ISLES 2018", "layout": "isles2018", "description": "CT perfusion stroke lesion segmentation",
           "base_dir": str(root.resolve()), "channels": ["CBF", "CBV", "MTT", "Tmax"],
           "labels": {"0": "background", "1": "lesion"}, "folds": folds, "seed": seed,
           "patient_grouping": grouping, "training": [], "testing": [], "excluded": []}
    for split, split_dir in splits.items():
        cases = sorted((p for p in split_dir.iterdir() if p.is_dir() and _CASE_RE.match(p.name)),
                       key=lambda p: _case_number(p.name))
        for case_dir in cases:
            files, problems = _scan_case(case_dir, REQUIRED[split])
            if problems:
                out["excluded"].append({"path": rel(case_dir), "split": split, "reason": "; ".join(problems)})
                continue
            patient, slab = mapping.get((split, case_dir.name), mapping.get(("", case_dir.name),
                                                                             (f"{split}/{case_dir.name}", "")))
            item = {"image": [rel(files[m]) for m in MAP_MODALITIES]}
            for mod, key in ITEM_KEYS.items():
                if mod in files:
                    item[key] = rel(files[mod])
            item.update({"case": case_dir.name, "split": split, "patient": patient, "slab": slab})
            out["training" if split == "TRAINING" else "testing"].append(item)
    if folds is not None:
        if int(folds) < 1:
            raise ValueError(f"folds must be >= 1, got {folds}")
        fold_of = _assign_folds({it["case"]: it["patient"] for it in out["training"]}, int(folds), int(seed))
        for it in out["training"]:
            it["fold"] = fold_of[it["case"]]
    out["numTraining"] = len(out["training"])
    out["numTest"] = len(out["testing"])
    return out


# --------------------------------------------------------------------------------------------
# 4-channel stack for single-file users (MONAI Label)
# --------------------------------------------------------------------------------------------


def stack_maps(case, out_path=None, base_dir=None) -> Path:
    """Write the four perfusion maps of one case as a single 4-channel NIfTI, (X, Y, Z, 4)
    float32, channels CBF, CBV, MTT, Tmax in that order (MONAI Label passes one file per case).

    Args:
        case: a case folder (``.../case_N``) or a datalist item (with ``cbf``, ``cbv``, ``mtt``,
            ``tmax`` or an ``image`` list in that order).
        out_path: output file; default ``<case folder>/<case>_CBF_CBV_MTT_Tmax.nii.gz`` (outside
            the SMIR folders, so the datalist builder ignores it).
        base_dir: resolves relative paths of a datalist item.
    """
    if isinstance(case, dict):
        base = Path(base_dir) if base_dir is not None else Path(".")
        if all(k in case for k in ("cbf", "cbv", "mtt", "tmax")):
            paths = [case[k] for k in ("cbf", "cbv", "mtt", "tmax")]
        else:
            paths = list(case.get("image", []))
        if len(paths) != 4:
            raise CTInputError(f"datalist item {case.get('case', case)} does not name the four maps CBF, CBV, MTT, Tmax")
        paths = [p if Path(p).is_absolute() else base / p for p in map(Path, paths)]
        case_dir = paths[0].parent.parent
    else:
        case_dir = Path(case)
        if not case_dir.is_dir():
            raise CTInputError(f"{case_dir}: not an ISLES 2018 case folder")
        files, problems = _scan_case(case_dir, MAP_MODALITIES)
        if problems:
            raise CTInputError(f"{case_dir}: cannot stack the maps: " + "; ".join(problems))
        paths = [files[m] for m in MAP_MODALITIES]
    volumes, affine = [], None
    for p in paths:
        try:
            img = nib.load(str(p))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:
            raise CTInputError(f"{p}: unreadable perfusion map ({err})") from err
        if data.ndim != 3:
            raise CTInputError(f"{p}: expected a 3D map, found shape {data.shape}")
        if volumes and data.shape != volumes[0].shape:
            raise CTInputError(f"{p}: grid {data.shape} differs from {paths[0]} grid {volumes[0].shape}")
        affine = img.affine if affine is None else affine
        volumes.append(data)
    out = Path(out_path) if out_path is not None else case_dir / f"{case_dir.name}_CBF_CBV_MTT_Tmax.nii.gz"
    img = nib.Nifti1Image(np.stack(volumes, axis=-1), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"channels: CBF, CBV, MTT, Tmax"
    _save_nifti(img, out)
    return out
