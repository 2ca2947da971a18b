"""`ctbundles datalist`: write a MONAI (decathlon-style) datalist for a published dataset layout.

Layouts: ``isles2018`` (``ctbundles.datasets.isles2018``: modalities matched by name, never by
id; slabs of one patient in one fold), ``orcascore`` (``ctbundles.datasets.orcascore``: images
paired with their reference labels) and ``folder`` (``ctbundles.datasets.nifti_folder``: images
paired with labels by name). The builder modules are imported only for the layout asked for.

The command prints the number of training cases per fold and every excluded case with its
reason, and writes the JSON atomically. It never stops silently: a ROOT that is not the layout
exits 2 with the builder's message; a layout with no usable case exits 1.
"""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from pathlib import Path

from ctbundles.atomic_io import atomic_write_json
from ctbundles.errors import CTInputError

LAYOUTS = {
    "isles2018": "ctbundles.datasets.isles2018",
    "orcascore": "ctbundles.datasets.orcascore",
    "folder": "ctbundles.datasets.nifti_folder",
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "datalist",
        help="write a MONAI datalist for a dataset layout",
        description="Write a MONAI (decathlon-style) datalist JSON for a dataset in a published layout, "
        "listing incomplete or unreadable cases with the reason.",
    )
    parser.add_argument("layout", choices=sorted(LAYOUTS), help="dataset layout")
    parser.add_argument("root", help="dataset root folder")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--patients", default=None,
                        help="isles2018 only: CSV with case,patient columns grouping slabs by patient "
                        "(default ROOT/patients.csv when present)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    root = Path(args.root)
    out = Path(args.out)
    if not root.exists():
        raise CTInputError(f"{root}: dataset root does not exist")
    if args.folds is not None and args.folds < 1:
        raise CTInputError(f"--folds must be at least 1, got {args.folds}")
    try:
        module = importlib.import_module(LAYOUTS[args.layout])
    except ModuleNotFoundError as err:
        print(f"ctbundles datalist: error: the {args.layout} layout is not available ({err})", file=sys.stderr)
        return 2
    kwargs = {"folds": args.folds, "seed": args.seed}
    if args.patients is not None:
        if args.layout != "isles2018":
            raise CTInputError("--patients applies to the isles2018 layout only")
        kwargs["patients_csv"] = args.patients
    if out.is_dir():
        raise CTInputError(f"{out}: --out is a folder; give the datalist JSON file to write")
    datalist = module.build_datalist(root, **kwargs)
    training = datalist.get("training", [])
    testing = datalist.get("testing", datalist.get("test", []))  # the folder layouts write "test", ISLES "testing"
    listed = [v for item in training + testing for k, v in item.items() if k in ("image", "label") and isinstance(v, str)]
    atomic_write_json(out, datalist, inputs=listed)  # never over a file it lists

    excluded = datalist.get("excluded", [])
    print(f"{args.layout}: {len(training)} training case(s), {len(testing)} testing case(s), "
          f"{len(excluded)} excluded -> {out}")
    if "patient_grouping" in datalist:
        print(f"patient grouping: {datalist['patient_grouping']}")
    folds = Counter(item.get("fold") for item in training)
    if any(k is not None for k in folds):
        patients = {}
        for item in training:
            patients.setdefault(item.get("fold"), set()).add(item.get("patient", item.get("case")))
        for k in sorted(f for f in folds if f is not None):
            print(f"  fold {k}: {folds[k]} case(s), {len(patients[k])} patient(s)")
    for item in excluded:
        print(f"  excluded {item.get('path')}: {item.get('reason')}")
    if not training and not testing:
        print(f"ctbundles datalist: error: no usable case found under {root}", file=sys.stderr)
        return 1
    return 0
