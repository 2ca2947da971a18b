"""Writing calcium-score reports: atomic files, case ids, flat cohort rows, a readable summary.

Shared by the ignite handler (:mod:`ctbundles.handlers.calcium_score_handler`) and the
``ctbundles score`` command, so a JSON, a CSV row and the printed summary say the same thing.
Works for both reports of :mod:`ctbundles.transforms.calcium_scoring` (Agatston and ICAC).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ctbundles.atomic_io import atomic_write_text

__all__ = ["atomic_write_text", "case_id", "format_summary", "read_csv_rows", "report_row", "write_csv_rows", "write_json"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".dcm", ".json")


def write_json(path: str | os.PathLike, report: Mapping[str, Any], inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Atomically write a report as indented JSON, never over one of ``inputs``."""
    return atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n", inputs)


def case_id(source: str | os.PathLike | None, default: str = "case") -> str:
    """Case name from an image path: file name without its image suffix, or a DICOM folder's name."""
    if source is None or str(source) == "":
        return default
    name = Path(str(source).rstrip("/\\")).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or default
    return name or default


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def report_row(report: Mapping[str, Any], case: str) -> dict[str, Any]:
    """One flat cohort-CSV row of an Agatston or ICAC report, parameters included (``param_*``)."""
    row: dict[str, Any] = {"case": case, "source_image": report.get("source_image") or ""}
    if "agatston" in report:
        for key in ("agatston", "volume_mm3", "mass_mg", "n_lesions", "n_vessels", "risk_category", "cac_drs", "chest_ct_category"):
            row[key] = _cell(report.get(key))
        for name, entry in report.get("per_artery", {}).items():
            for key in ("agatston", "volume_mm3", "mass_mg", "n_lesions"):
                row[f"{key}_{name}"] = _cell(entry.get(key))
    elif "total_mm3" in report:
        for key in ("total_mm3", "ln_total", "n_voxels"):
            row[key] = _cell(report.get(key))
        for name, entry in report.get("per_label", {}).items():
            row[f"volume_mm3_{name}"] = _cell(entry.get("volume_mm3"))
            row[f"ln_volume_{name}"] = _cell(entry.get("ln_volume"))
    else:
        raise ValueError(f"not a calcium-score report (no 'agatston' or 'total_mm3' key): keys {sorted(report)}")
    row["warnings"] = "; ".join(report.get("warnings", []))
    for key, value in report.get("parameters", {}).items():
        row[f"param_{key}"] = _cell(value)
    return row


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv_rows(path: str | os.PathLike, rows: list[Mapping[str, Any]], inputs: Iterable[str | os.PathLike] = (),
                   columns: Iterable[str] = ()) -> Path:
    """Atomically write rows with ``columns`` first, then the rest of the union of their columns
    (first-seen order), header once."""
    columns: dict[str, None] = dict.fromkeys(columns)
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue(), inputs)


def format_summary(report: Mapping[str, Any], title: str | None = None) -> str:
    """A short human-readable summary of a report (what ``ctbundles score`` prints)."""
    lines = [title] if title else []
    if "agatston" in report:
        p = report.get("parameters", {})
        mass = report.get("mass_mg")
        lines += [
            f"Agatston score   {report['agatston']:.1f}",
            f"Volume score     {report['volume_mm3']:.1f} mm^3",
            f"Mass score       {'n/a (no calibration factor)' if mass is None else f'{mass:.2f} mg'}",
            f"Lesions          {report['n_lesions']}",
            f"Risk category    {report['risk_category']}   CAC-DRS {report['cac_drs']}   chest CT {report['chest_ct_category']}",
        ]
        per = report.get("per_artery", {})
        if per:
            lines.append("Per artery       " + ", ".join(f"{n}: {e['agatston']:.1f} ({e['n_lesions']} lesions)" for n, e in per.items()))
        if p:
            lines.append(
                f"Parameters       {p.get('threshold_rule')}, {p.get('lesion_connectivity')}, {p.get('min_size_rule')}, "
                f"slice increment {p.get('slice_increment_mm'):g} mm, pixel {p.get('pixel_area_mm2'):.4g} mm^2"
            )
    else:
        lines.append(f"ICAC volume      {report['total_mm3']:.1f} mm^3 (ln {report['ln_total']:.3f})")
        for name, entry in report.get("per_label", {}).items():
            lines.append(f"  {name:<14} {entry['volume_mm3']:.1f} mm^3")
    for warning in report.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
