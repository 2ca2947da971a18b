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
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None, help="array shape override")
    parser.add_argument("--small", action="store_true", help="small fast cases (the generator's small preset)")
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
    t = case.truth or {}
    row = {"case_id": case.case_id, "index": index, "seed": seed, "kind": case.kind, "patient_id": case.meta.get("patient_id", "")}
    for key in ("agatston", "volume_mm3", "mass_mg", "n_lesions", "risk_category", "cac_drs", "chest_ct_category", "total_mm3", "lesion_volume_mm3"):
        if key in t:
            row[key] = t[key]
    for name, entry in (t.get("per_artery") or {}).items():
        row[f"{name}_agatston"] = entry.get("agatston")
        row[f"{name}_volume_mm3"] = entry.get("volume_mm3")
    for name, vol in (t.get("per_label") or {}).items():
        row[f"{name}_mm3"] = vol if not isinstance(vol, dict) else vol.get("volume_mm3")
    row["file"] = path
    return row


def _write_csv(path: Path, rows: list[dict]) -> None:
    from ctbundles.datasets.datalist_io import atomic_write_text

    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def synthesize(kind, out, cases, seed=0, layout=None, shape=None, small=False, folds=None, progress=True) -> dict:
    """Generate and write a cohort; returns {"datalist": path, "truth_csv": path, "cases": [...]}."""
    from ctbundles.synthetic.registry import generate

    layout = layout or DEFAULT_LAYOUT[kind]
    if kind not in LAYOUTS[layout]:
        raise CTInputError(f"layout {layout} holds {', '.join(LAYOUTS[layout])} cases, not {kind}")
    if int(cases) < 1:
        raise CTInputError(f"--cases must be at least 1, got {cases}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = _writer(layout)
    options = {}
    if shape is not None:
        options["shape"] = tuple(int(n) for n in shape)
    if small:
        options["small"] = True
    rows, records = [], []
    for i in range(int(cases)):
        t0 = time.perf_counter()
        s = case_seed(seed, i)
        case = generate(kind, s, case_id=f"{kind}_{i:03d}", **options)
        if layout == "orcascore":
            paths = writer.write_case(case, out, vendor=i % 4 + 1, patient=i // 4 + 1)
        else:
            paths = writer.write_case(case, out)
        image_path = str(paths["image"]) if isinstance(paths, dict) and "image" in paths else ""
        rows.append(_truth_row(case, i, s, image_path))
        records.append({"case_id": case.case_id, "seed": s, "paths": {k: str(v) for k, v in (paths or {}).items()}})
        if progress:
            score = case.truth.get("agatston", case.truth.get("total_mm3", ""))
            print(f"[{i + 1}/{cases}] {case.case_id} seed {s} shape {tuple(case.image.shape)} truth {score} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if hasattr(writer, "write_datalist"):
        kwargs = {} if folds is None else {"folds": int(folds)}
        datalist = writer.write_datalist(out, **kwargs)
    else:
        from ctbundles.datasets.datalist_io import write_datalist_json

        kwargs = {} if folds is None else {"folds": int(folds)}
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
