"""`ctbundles check`: print what the CT input layer finds in an image, before a bundle refuses it.

Loads the image exactly as the bundles do (:func:`ctbundles.transforms.ct_io.load_ct`), then prints
its geometry, HU range, acquisition facts, the loader's warnings and every
:func:`ctbundles.transforms.ct_checks.check_ct` finding. Exit status: 0 when no finding has
severity "error", 1 otherwise, 2 when the input cannot be loaded at all (e.g. several DICOM series
and no ``--series-uid``: the message lists them).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from ctbundles.atomic_io import atomic_write_json

DESCRIPTION = """\
Load a CT (DICOM series folder, one .dcm of it, .nii/.nii.gz or .mhd/.mha) as the bundles do and
print what the input layer found: file, format, shape, spacing, slice increment (from
ImagePositionPatient), orientation codes, HU range and percentiles, acquisition facts (kVp, slice
thickness, kernel, manufacturer, series UID), the loader's warnings and every finding (not HU,
contrast enhancement, slices thicker than 3 mm, non-uniform spacing, missing slices, gantry tilt).

Exit status: 0 when no finding is an error, 1 when at least one is, 2 when the input cannot be read
(the message says why; for a folder with several DICOM series it lists them, pick one with
--series-uid)."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "check",
        help="print what the input layer finds in a CT (geometry, HU range, problems)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="DICOM series folder, .dcm, .nii, .nii.gz, .mhd or .mha")
    parser.add_argument(
        "--series-uid", default=None, help="SeriesInstanceUID to load when the DICOM folder holds several series"
    )
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the report as JSON")
    parser.add_argument(
        "--tilt",
        choices=("resample", "error", "keep"),
        default="resample",
        help="gantry tilt: resample onto an untilted grid (default, as the bundles do), refuse, or keep the sheared grid",
    )
    parser.add_argument(
        "--nonuniform",
        choices=("resample", "error", "keep"),
        default="resample",
        help="non-uniform slice spacing: resample to the median increment (default), refuse, or keep as acquired",
    )
    parser.set_defaults(func=run)
    return parser


def _clean(value):
    """JSON-safe plain Python values (NaN -> None, numpy -> Python)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_report(image_path: str, series_uid: str | None = None, tilt: str = "resample", nonuniform: str = "resample"):
    """Load ``image_path`` and return the check report (a JSON-safe dict)."""
    from ctbundles.transforms.ct_checks import check_ct, hu_summary
    from ctbundles.transforms.ct_io import acquisition_facts, load_ct, orientation_codes

    image = load_ct(image_path, series_uid, tilt=tilt, nonuniform=nonuniform)
    findings = check_ct(image)
    meta = image.meta
    affine = np.asarray(image.affine, dtype=float)
    report = {
        "file": str(image_path),
        "format": meta.get("format"),
        "shape": [int(s) for s in image.shape],
        "spacing_mm": [float(s) for s in meta["spacing"]],
        "slice_increment_mm": float(meta["slice_increment_mm"]),
        "orientation": orientation_codes(affine),
        "affine": affine.tolist(),
        "hu": hu_summary(image),
        "acquisition": acquisition_facts(image),
        "slice_geometry": meta.get("slice_geometry"),
        "warnings": list(meta.get("ct_warnings", [])),
        "findings": [f.as_dict() for f in findings],
        "n_errors": sum(f.severity == "error" for f in findings),
    }
    report["ok"] = report["n_errors"] == 0
    return _clean(report)


def format_report(report: dict) -> str:
    """The report as the lines the command prints."""

    def num(v, unit="", fmt=".2f"):
        return "unknown" if v is None else f"{v:{fmt}}{unit}"

    acq = report["acquisition"]
    hu = report["hu"]
    lines = [
        f"file:             {report['file']}",
        f"format:           {report['format']}",
        f"shape:            {' x '.join(str(s) for s in report['shape'])} voxels (X, Y, Z)",
        f"spacing:          {' x '.join(f'{s:.3f}' for s in report['spacing_mm'])} mm",
        f"slice increment:  {report['slice_increment_mm']:.3f} mm (slice thickness {num(acq['slice_thickness_mm'], ' mm')})",
        f"orientation:      {report['orientation']} (RAS convention, as MONAI LoadImage)",
        f"HU:               min {hu['min']:.0f}, p1 {hu['p1']:.0f}, p5 {hu['p5']:.0f}, median {hu['p50']:.0f}, "
        f"p95 {hu['p95']:.0f}, p99 {hu['p99']:.0f}, max {hu['max']:.0f}",
        f"acquisition:      kVp {num(acq['kvp'], '', '.0f')}, kernel {acq['convolution_kernel'] or 'unknown'}, "
        f"manufacturer {acq['manufacturer'] or 'unknown'}",
    ]
    if acq.get("series_instance_uid"):
        desc = f" ({acq['series_description']!r})" if acq.get("series_description") else ""
        lines.append(f"series:           {acq['series_instance_uid']}{desc}")
    geo = report.get("slice_geometry")
    if geo:
        lines.append(
            f"acquired slices:  {geo['n_slices']}, increments {num(geo['increment_min_mm'])} to "
            f"{num(geo['increment_max_mm'])} mm (median {num(geo['increment_median_mm'])} mm), "
            f"gantry tilt {num(geo['gantry_tilt_deg'], ' deg', '.1f')}"
        )
    lines.append("loader warnings:" + ("  none" if not report["warnings"] else ""))
    lines += [f"  - {w}" for w in report["warnings"]]
    lines.append("findings:" + ("         none" if not report["findings"] else ""))
    lines += [f"  [{f['severity']}] {f['code']}: {f['message']}" for f in report["findings"]]
    verdict = "OK: no error" if report["ok"] else f"NOT OK: {report['n_errors']} error(s)"
    lines.append(f"verdict:          {verdict}")
    return "\n".join(lines)


def run(args) -> int:
    if args.json_out and Path(args.json_out).resolve() == Path(args.image).resolve():
        from ctbundles.errors import CTInputError

        raise CTInputError(f"{args.json_out}: the JSON output would overwrite the input image")
    report = build_report(args.image, args.series_uid, tilt=args.tilt, nonuniform=args.nonuniform)
    print(format_report(report))
    if args.json_out:
        atomic_write_json(args.json_out, report, inputs=[args.image])
    return 0 if report["ok"] else 1
