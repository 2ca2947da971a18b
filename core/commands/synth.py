"""`ctbundles synth`: generate a deterministic synthetic CT cohort in a published layout.

    ctbundles synth KIND --out DIR --cases N --seed S [--layout nifti|orcascore|isles2018]
                    [--shape X Y Z] [--small]

Case ``i`` is generated from the seed ``SeedSequence([S, i])`` (so case i is the same whatever N
is), written in the layout, with its ground-truth JSON; then the cohort's ``datalist.json`` and a
``truth.csv`` with one row of scores per case are written (atomically).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

import numpy as np

from ctbundles.errors import CTInputError

KINDS = ("chest", "cardiac", "head", "ctp")
LAYOUTS = {"nifti": ("chest", "cardiac", "head", "ctp"), "orcascore": ("chest", "cardiac"), "isles2018": ("ctp",)}
DEFAULT_LAYOUT = {"chest": "nifti", "cardiac": "nifti", "head": "nifti", "ctp": "nifti"}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic CT cohort",
        description="Generate a deterministic synthetic CT cohort (chest, cardiac, head or ctp) with labels, "
        "ground-truth scores and a datalist, in the NIfTI folder, orCaScore or ISLES 2018 layout.",
    )
    parser.add_argument("kind", choices=KINDS, help="which synthetic CT to generate")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default=None, help="file layout (default nifti)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None, help="array shape override (the protocol's voxel size is kept: a smaller field of view)")
    parser.add_argument("--small", action="store_true", help="small fast cases: a coarse grid over the protocol's field of view")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds in the datalist")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)
    return parser


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a cohort seeded ``seed`` (independent streams, stable in N)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _writer(layout: str):
    if layout == "nifti":
        from ctbundles.datasets import nifti_folder

        return nifti_folder
    if layout == "orcascore":
        from ctbundles.datasets import orcascore

        return orcascore
    try:
        from ctbundles.datasets import isles2018
    except ImportError as err:
        raise CTInputError(f"layout isles2018 needs ctbundles.datasets.isles2018, which could not be imported: {err}") from err
    return isles2018


def _truth_row(case, index: int, seed: int, path: str) -> dict:
    """One CSV row: the case, then every scalar of its truth, then per-artery / per-label scores."""
    t = case.truth or {}
    row = {"case_id": case.case_id, "index": index, "seed": seed, "kind": case.kind, "patient_id": case.meta.get("patient_id", "")}
    if "slab" in case.meta:
        row["slab"] = case.meta["slab"]
    for key, value in t.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            row[key] = value
    for name, entry in (t.get("per_artery") or {}).items():
        row[f"{name}_agatston"] = entry.get("agatston")
        row[f"{name}_volume_mm3"] = entry.get("volume_mm3")
    for name, vol in (t.get("per_label") or {}).items():
        row[f"{name}_mm3"] = vol.get("volume_mm3") if isinstance(vol, dict) else vol
    row["file"] = path
    return row


SMALL_OPTIONS = {
    "chest": {"small": True},
    "cardiac": {"small": True},
    "head": {"shape": (128, 128, 56), "spacing": (1.8, 1.8, 2.5)},  # the 230 x 230 x 140 mm head field on a coarse grid
    "ctp": {"shape_xy": (64, 64)},  # the generator keeps the field of view
}


def generator_options(kind: str, shape=None, small: bool = False) -> dict:
    """Keyword options of ``kind``'s generator for ``--shape`` and ``--small``."""
    options = dict(SMALL_OPTIONS[kind]) if small else {}
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        if kind == "ctp":
            options.update(shape_xy=shape[:2], n_slices=shape[2])
        else:
            options["shape"] = shape
            if kind in ("chest", "cardiac") and small:
                options.pop("small", None)
            if kind == "head":
                options.pop("spacing", None)
    return options


def _cases_of(kind: str, seed: int, options: dict):
    """The cases of one cohort member: one case, or every slab of a CTP patient."""
    from ctbundles.synthetic.registry import generate, resolve_generator

    if kind == "ctp":
        return list(resolve_generator("ctbundles.synthetic.ctp:generate_ctp_patient")(seed, **options))
    return [generate(kind, seed, **options)]


def _write_csv(path: Path, rows: list[dict]) -> None:
    from ctbundles.datasets.datalist_io import atomic_write_text

    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def synthesize(kind, out, cases, seed=0, layout=None, shape=None, small=False, folds=None, progress=True,
               options: dict | None = None) -> dict:
    """Generate and write a cohort of ``cases`` members; returns {"datalist", "truth_csv", "cases"}.

    ``options`` (keyword options of ``kind``'s generator, e.g. ``shape`` and ``spacing``) replace those
    that ``shape`` and ``small`` select.

    A member is one scan, except for ``ctp`` where it is one patient with one or two slabs (each
    slab its own case, as in ISLES 2018).
    """
    layout = layout or DEFAULT_LAYOUT[kind]
    if kind not in LAYOUTS[layout]:
        raise CTInputError(f"layout {layout} holds {', '.join(LAYOUTS[layout])} cases, not {kind}")
    if int(cases) < 1:
        raise CTInputError(f"--cases must be at least 1, got {cases}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = _writer(layout)
    options = dict(options) if options is not None else generator_options(kind, shape, small)
    rows, records = [], []
    label_names: dict = {}
    number = 0
    for i in range(int(cases)):
        t0 = time.perf_counter()
        s = case_seed(seed, i)
        for case in _cases_of(kind, s, options):
            suffix = case.meta.get("slab", "") if case.meta.get("n_slabs", 1) > 1 else ""
            case.case_id = f"{kind}_{i:03d}{suffix}"
            label_names = dict(case.label_names)
            number += 1
            if layout == "orcascore":
                paths = writer.write_case(case, out, vendor=i % 4 + 1, patient=i // 4 + 1)
            elif layout == "isles2018":
                paths = {"image": writer.write_case(case, out, case_number=number)}
            else:
                paths = writer.write_case(case, out)
            rows.append(_truth_row(case, i, s, str(paths.get("image", ""))))
            records.append({"case_id": case.case_id, "seed": s, "paths": {k: str(v) for k, v in paths.items()}})
            if progress:
                score = case.truth.get("agatston", case.truth.get("total_mm3", case.truth.get("lesion_volume_ml", "")))
                print(
                    f"[{i + 1}/{cases}] {case.case_id} seed {s} shape {tuple(case.image.shape)} truth {score} "
                    f"({time.perf_counter() - t0:.1f} s)",
                    file=sys.stderr,
                )
    kwargs = {} if folds is None else {"folds": int(folds)}
    if layout == "nifti" and label_names:
        kwargs["label_names"] = label_names
    if hasattr(writer, "write_datalist"):
        datalist = writer.write_datalist(out, **kwargs)
    else:
        from ctbundles.datasets.datalist_io import write_datalist_json

        datalist = write_datalist_json(writer.build_datalist(out, **kwargs), out / "datalist.json")
    csv_path = out / "truth.csv"
    _write_csv(csv_path, rows)
    return {"datalist": Path(datalist), "truth_csv": csv_path, "cases": records}


def run(args) -> int:
    result = synthesize(
        args.kind, args.out, args.cases, seed=args.seed, layout=args.layout, shape=args.shape,
        small=args.small, folds=args.folds, progress=not args.quiet,
    )
    print(f"wrote {len(result['cases'])} {args.kind} cases, {result['datalist']} and {result['truth_csv']}")
    return 0
