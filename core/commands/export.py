"""`ctbundles export`: a bundle as a self-contained MONAI Model Zoo zip, and the zoo checks.

    ctbundles export BUNDLE --out DIR [--onnx] [--check] [--schema FILE] [--large-file-url URL]
    ctbundles export --check-only DIR_OR_ZIP [--schema FILE] [--no-net-checks]

The first form writes ``DIR/<bundle>_v<version>.zip`` (see :mod:`ctbundles.zoo_export` for how the
code travels inside its ``scripts/`` package); ``--check`` runs the Model Zoo checks on it before
zipping, ``--onnx`` adds ``models/model*.onnx`` for every network (parity with PyTorch checked).
The second form runs the checks on a bundle folder or zip of your own and lists every failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctbundles.errors import CTInputError


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a bundle as a self-contained Model Zoo zip, or run the zoo checks",
        description="Write BUNDLE as <bundle>_v<version>.zip that runs from its own folder without ctbundles "
        "installed (the ctbundles modules its configs use are vendored into scripts/), or, with --check-only, "
        "run the MONAI Model Zoo checks (files, changelog, schema, versions, large files, verify_net_in_out, "
        "TorchScript ckpt_export) on a bundle folder or zip.",
    )
    parser.add_argument("bundle", help="bundle folder (with configs/metadata.json); with --check-only, a folder or zip")
    parser.add_argument("--out", help="output folder of the zip (created)")
    parser.add_argument("--onnx", action="store_true", help="also export every network to models/model*.onnx (ONNX opset 17) and check onnxruntime against PyTorch")
    parser.add_argument("--check", action="store_true", help="run the Model Zoo checks on the export; no zip is written when one fails")
    parser.add_argument("--check-only", action="store_true", help="only run the Model Zoo checks on BUNDLE (folder or zip)")
    parser.add_argument("--no-net-checks", action="store_true", help="skip verify_net_in_out and ckpt_export (the slow checks)")
    parser.add_argument("--schema", help="the zoo metadata schema file (default: $CTBUNDLES_ZOO_SCHEMA or ../shared/zoo/meta_schema_20240725.json)")
    parser.add_argument("--large-file-url", help="URL prefix written in large_files.yml for files above 25 MB")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from ctbundles import zoo_export

    if args.check_only:
        problems = zoo_export.zoo_check(args.bundle, schema=args.schema, net_checks=not args.no_net_checks)
        for problem in problems:
            print(f"FAIL {problem}")
        print(f"{args.bundle}: {'all Model Zoo checks pass' if not problems else f'{len(problems)} check(s) failed'}")
        return 0 if not problems else 1
    if not args.out:
        raise CTInputError("--out DIR is required to export (or use --check-only)")
    if not (Path(args.bundle) / "configs" / "metadata.json").is_file():
        raise CTInputError(f"{args.bundle}: not a bundle folder (configs/metadata.json missing)")
    result = zoo_export.export_bundle(
        args.bundle, args.out, onnx=args.onnx, check=args.check, schema=args.schema,
        large_file_url=args.large_file_url, net_checks=not args.no_net_checks,
        progress=lambda msg: print(msg, file=sys.stderr),
    )
    for r in result.onnx:
        print(f"ONNX {r['net_id']} -> {r['onnx']}: input {r['input_shape']}, max |onnx - eager| {r['max_abs_diff']:.2e} (tolerance {r['tolerance']:.1e})")
    print(f"wrote {result.zip_path} ({len(result.vendored)} vendored modules{', zoo checks passed' if args.check else ''})")
    return 0
