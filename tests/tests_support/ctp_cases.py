"""Tiny CT perfusion cases for the ISLES 2018 bundle tests (the synth_head generator stands in later).

A lesion is a disc through all slices where CBF and CBV drop and MTT and Tmax rise, as in an
ischemic core; outside a circular "brain" every map is 0, as in ISLES 2018.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

MAPS = ("CBF", "CBV", "MTT", "Tmax")
ISLES_DTYPES = {"CBF": np.uint16, "CBV": np.uint16, "MTT": np.float64, "Tmax": np.float64}


def make_ctp_case(seed: int = 0, shape=(40, 40, 4), spacing=(0.9, 0.9, 5.0), radius: float = 6.0, lesion: bool = True):
    """Maps (dict of (X, Y, Z) arrays, ISLES dtypes), label (uint8) and affine of one tiny case."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy = shape[0] / 2, shape[1] / 2
    brain = ((x - cx) ** 2 + (y - cy) ** 2) < (0.45 * min(shape[:2])) ** 2
    lx, ly = cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4)
    disc = ((x - lx) ** 2 + (y - ly) ** 2) < radius**2
    disc = disc & brain if lesion else np.zeros_like(brain)
    label = np.repeat(disc[..., None], shape[2], axis=2).astype(np.uint8)
    noise = lambda s: rng.normal(0, s, shape)  # noqa: E731
    b = np.repeat(brain[..., None], shape[2], axis=2)
    les = label.astype(bool)
    maps = {
        "CBF": np.where(b, np.where(les, 10.0, 50.0) + noise(2.0), 0),
        "CBV": np.where(b, np.where(les, 1.0, 4.0) + noise(0.2), 0) * 10,
        "MTT": np.where(b, np.where(les, 12.0, 5.0) + noise(0.5), 0),
        "Tmax": np.where(b, np.where(les, 10.0, 1.0) + noise(0.3), 0),
    }
    maps = {k: np.clip(v, 0, None).astype(ISLES_DTYPES[k]) for k, v in maps.items()}
    affine = np.diag([*spacing, 1.0])
    return maps, label, affine


def write_isles_case(root: Path, case: int, seed: int = 0, ids_start: int = 1000, **kw) -> dict:
    """Write ``TRAINING/case_<n>/SMIR.Brain.XX.O.<MOD>.<id>/...nii`` (ids not in modality order)."""
    maps, label, affine = make_ctp_case(seed, **kw)
    folder = Path(root) / "TRAINING" / f"case_{case}"
    files = {}
    arrays = {**{f"CT_{k}": v for k, v in maps.items()}, "OT": label}
    for n, (mod, arr) in enumerate(sorted(arrays.items(), reverse=True)):
        name = f"SMIR.Brain.XX.O.{mod}.{ids_start + 7 * n}"
        (folder / name).mkdir(parents=True, exist_ok=True)
        path = folder / name / f"{name}.nii"
        nib.save(nib.Nifti1Image(arr, affine), str(path))
        files[mod] = str(path)
    item = {k: files[f"CT_{k}"] for k in MAPS}
    item["label"] = files["OT"]
    return item


def write_stacked(path: Path, seed: int = 0, order=MAPS, **kw) -> tuple[str, str]:
    """One stacked (X, Y, Z, 4) float32 NIfTI in ``order`` and its label file; returns both paths."""
    maps, label, affine = make_ctp_case(seed, **kw)
    data = np.stack([maps[m].astype(np.float32) for m in order], axis=-1)
    path = Path(path)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    label_path = path.with_name(path.name.replace(".nii", "_label.nii"))
    nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return str(path), str(label_path)


def write_synthetic_stacked(folder: Path, seed: int, n_slices: int = 4, lesion_size_mm=(15.0, 15.0, 12.0)):
    """One slab of ``ctbundles.synthetic.ctp.generate_ctp`` (256 x 256, the ISLES grid) written in the ISLES
    layout under ``folder/isles`` and stacked to ``folder/stacked/slab_<seed>.nii.gz`` (channels CBF, CBV, MTT,
    Tmax) with ``ctbundles.datasets.isles2018.stack_maps``; returns the stacked path and the generator's label."""
    from ctbundles.datasets.isles2018 import stack_maps, write_case
    from ctbundles.synthetic.ctp import generate_ctp

    case = generate_ctp(seed, n_slabs=1, n_slices=n_slices, slice_mm=5.0, lesion_size_mm=lesion_size_mm)
    case_dir = write_case(case, Path(folder) / "isles", case_number=1)
    stacked = stack_maps(case_dir, Path(folder) / "stacked" / f"slab_{seed}.nii.gz")
    return str(stacked), np.asarray(case.label)
