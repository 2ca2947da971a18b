"""`ctbundles score`: calcium scores of a CT and its calcium label (REFERENCES.md section 1).

Loads the CT (DICOM series folder, NIfTI or MetaImage) with the project's input layer, checks that
a score is meaningful on it (contrast, not HU, wrong label grid...: refused unless ``--force``),
scores the label with :func:`ctbundles.transforms.calcium_scoring.score_calcium` and prints a
summary; ``--json`` writes the full report (scores, lesion table, warnings, parameters).
"""

from __future__ import annotations

import argparse
import sys

from ctbundles.errors import CTInputError

DESCRIPTION = """\
Agatston, volume and mass calcium scores of IMAGE inside the calcium label LABEL.
Default definition (Agatston 1990): voxels inside the label and >= 130 HU, 2D 8-connected lesions
per axial slice, lesions below 1 mm^2 dropped, weight from each lesion's peak HU, scaled by
slice increment / 3 (the ImagePositionPatient increment, not the slice thickness).
Scans where a score is meaningless (contrast enhancement, values not in HU, a label on another
grid) are refused with exit status 2 unless --force (then the problems go into the warnings)."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "score",
        help="calcium scores (Agatston, volume, mass, per artery) of a CT and its label",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="CT: DICOM series folder, .nii/.nii.gz or .mhd")
    parser.add_argument("--label", required=True, metavar="LABEL", help="calcium label on the CT's grid (0 = background)")
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON to OUT")
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="in-plane lesion connectivity (default 8; in 3d mode 8 = 26-, 4 = 6-connected)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--min-area-mm2", type=float, default=None, metavar="A", help="drop 2D lesions below A mm^2 (default 1.0)")
    size.add_argument("--min-pixels", type=int, default=None, metavar="N", help="drop lesions below N pixels (2d) or voxels (3d) instead")
    parser.add_argument("--mode", choices=("2d", "3d"), default="2d", help="2d per-slice lesions (default) or 3d lesions")
    parser.add_argument("--min-volume-mm3", type=float, default=1.5, metavar="V", help="3d mode: drop lesions below V mm^3 (default 1.5)")
    parser.add_argument("--threshold-hu", type=float, default=130.0, metavar="HU", help="calcium threshold (default 130)")
    parser.add_argument("--strict", action="store_true", help="use HU > threshold instead of >= (orCaScore wording)")
    parser.add_argument("--calibration-factor", type=float, default=None, metavar="C", help="mg/cm^3 per HU (hydroxyapatite); enables the mass score")
    parser.add_argument("--artery-labels", default=None, metavar="MAP", help='label values per artery, e.g. "LAD=1,LCX=2,RCA=3" (orCaScore)')
    parser.add_argument("--series-uid", default=None, metavar="UID", help="SeriesInstanceUID when the DICOM folder holds several series")
    parser.add_argument("--force", action="store_true", help="score even when the checks say the score is meaningless (problems go into warnings)")
    parser.set_defaults(func=run)
    return parser


def _params(args):
    from ctbundles.transforms.calcium_scoring import CalciumScoreParams, parse_label_mapping

    kwargs = dict(
        threshold_hu=args.threshold_hu,
        strict=args.strict,
        connectivity=args.connectivity,
        mode=args.mode,
        min_volume_mm3=args.min_volume_mm3,
        min_pixels=args.min_pixels,
        calibration_factor=args.calibration_factor,
        artery_labels=parse_label_mapping(args.artery_labels) if args.artery_labels else None,
    )
    if args.min_area_mm2 is not None:
        kwargs["min_area_mm2"] = args.min_area_mm2
    return CalciumScoreParams(**kwargs)


def _load_label(args, image, warnings: list[str]):
    from ctbundles.transforms.ct_io import load_ct, load_label

    try:
        return load_label(args.label, like=image)
    except CTInputError as err:
        if not args.force or "not on the grid" not in str(err):
            raise
        label = load_ct(args.label)
        if tuple(label.shape[-3:]) != tuple(image.shape[-3:]):
            raise CTInputError(f"{err} (the shapes differ: no score is possible, even with --force)") from None
        warnings.append(f"forced: {err}; the label was used voxel for voxel")
        return label


def run(args) -> int:
    from ctbundles.transforms.calcium_transforms import CalciumScore
    from ctbundles.transforms.ct_checks import check_ct
    from ctbundles.transforms.ct_io import load_ct
    from ctbundles.transforms.score_report import format_summary, write_json

    try:
        params = _params(args)
    except ValueError as err:
        print(f"ctbundles score: error: {err}", file=sys.stderr)
        return 2

    image = load_ct(args.image, series_uid=args.series_uid)
    warnings: list[str] = []
    findings = check_ct(image)
    errors = [f for f in findings if f.severity == "error"]
    if errors and not args.force:
        problems = "; ".join(f"{f.code}: {f.message}" for f in errors)
        raise CTInputError(f"{args.image}: a calcium score would be meaningless ({problems}) Use --force to score anyway.")
    warnings += [f"forced past {f.code}: {f.message}" for f in errors]
    warnings += [f"{f.code}: {f.message}" for f in findings if f.severity == "warning"]
    label = _load_label(args, image, warnings)

    report = CalciumScore(params=params)(image, label)
    report["warnings"] = warnings + report["warnings"]
    report["image"] = str(args.image)
    report["label"] = str(args.label)
    report["checks"] = [f.as_dict() for f in findings]
    print(format_summary(report, title=f"Calcium score of {args.image} (label {args.label})"))
    if args.json:
        path = write_json(args.json, report, inputs=[args.image, args.label])
        print(f"report written to {path}")
    return 0
