"""The scans of a folder, as the bundles' ``inference.json`` read them (``datalist`` = ``scan_paths(@dataset_dir)``).

One entry per scan: a NIfTI file (``.nii``, ``.nii.gz``), a MetaImage header (``.mhd``, ``.mha``; its
``.raw`` data file is not a scan of its own) or a sub-folder holding one DICOM series (read by
``ctbundles.transforms.ct_io.LoadCTd``). A folder that does not exist, or holds no scan of the formats
the bundle reads, raises :class:`~ctbundles.errors.CTInputError` naming the folder: an inference run
on a mistyped ``--dataset_dir`` must not finish "successfully" with no output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ctbundles.errors import CTInputError
from ctbundles.transforms.ct_io import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES

FORMATS = ("nifti", "metaimage", "dicom")
_DESCRIPTION = {"nifti": ".nii / .nii.gz files", "metaimage": ".mhd / .mha files", "dicom": "DICOM series sub-folders"}


def scan_paths(dataset_dir: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[str]:
    """Sorted paths of the scans in ``dataset_dir`` (not recursive; hidden entries are skipped).

    Args:
        dataset_dir: the folder of scans (``--dataset_dir`` of a bundle's ``inference.json``).
        formats: the formats the bundle reads, a subset of ``("nifti", "metaimage", "dicom")``.

    Raises:
        ValueError: an unknown format name.
        CTInputError: ``dataset_dir`` is not a folder, or it holds no scan of ``formats``.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"scan_paths: formats must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise CTInputError(f"{folder}: dataset_dir is not a folder" + ("" if folder.exists() else " (no such path)"))
    suffixes = (NIFTI_SUFFIXES if "nifti" in formats else ()) + (METAIMAGE_SUFFIXES if "metaimage" in formats else ())
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if "dicom" in formats:
                found.append(str(entry))
        elif entry.name.lower().endswith(suffixes):
            found.append(str(entry))
    if not found:
        expected = ", ".join(_DESCRIPTION[f] for f in FORMATS if f in formats)
        raise CTInputError(f"{folder}: no scans to read in dataset_dir (expected {expected})")
    return sorted(found)
