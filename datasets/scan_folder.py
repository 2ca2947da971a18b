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


def scan_paths(dataset_dir: str | os.PathLike, formats: Sequence[str] = FORMATS, output_dir: str | os.PathLike | None = None) -> list[str]:
    """Sorted paths of the scans in ``dataset_dir`` (not recursive; hidden entries are skipped).

    Args:
        dataset_dir: the folder of scans (``--dataset_dir`` of a bundle's ``inference.json``).
        formats: the formats the bundle reads, a subset of ``("nifti", "metaimage", "dicom")``.
        output_dir: where the bundle writes ``<scan name>_seg.nii.gz`` (``--output_dir``): it must not be
            ``dataset_dir`` or lie inside it, so no output can replace a scan or be read as one by a later run,
            and no two scans may share a name (``a.nii.gz`` and ``a.mhd``, or a DICOM folder ``a``), since
            their outputs would replace each other.

    Raises:
        ValueError: an unknown format name.
        CTInputError: ``dataset_dir`` is not a folder, it holds no scan of ``formats``, ``output_dir`` is
            inside it, or two scans would write the same output.
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
    if output_dir is not None:
        out = Path(output_dir).resolve()
        if out == folder.resolve() or out.is_relative_to(folder.resolve()):
            raise CTInputError(f"{output_dir}: output_dir is the scans' folder {folder} or inside it; choose an output folder "
                               "outside it, so no segmentation can replace a scan or be read as one")
        stems: dict[str, list[str]] = {}
        for path in found:
            name = Path(path).name
            stem = next((name[: -len(suf)] for suf in suffixes if name.lower().endswith(suf)), name)
            stems.setdefault(stem, []).append(name)
        clashes = {k: v for k, v in stems.items() if len(v) > 1}
        if clashes:
            listed = "; ".join(f"{', '.join(sorted(v))} -> {k}_seg" for k, v in sorted(clashes.items()))
            raise CTInputError(f"{folder}: scans that would write the same output ({listed}); rename or move one of each")
    return sorted(found)
