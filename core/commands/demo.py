"""`ctbundles demo`: the main job on data the project generates itself.

For each bundle's kind of scan it writes a small synthetic cohort (``ctbundles synth``), reads every
case back through the CT input layer and its checks, scores it from the written files with the
project's scoring code (Agatston and volume for chest and cardiac CT, ICAC volume for head CT,
lesion volume for CT perfusion), and compares each figure with the ground truth the generator
stored beside the case. It prints one summary per kind and writes ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ctbundles.errors import CTInputError

#: kind -> (layout written, figure compared with the generator's truth)
KINDS = {
    "cardiac": ("nifti", "agatston"),
    "chest": ("nifti", "agatston"),
    "head": ("nifti", "total_mm3"),
    "ctp": ("isles2018", "lesion_volume_ml"),
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="the main job: synthetic cohorts scored from their files and compared with the ground truth",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; a cohort from an earlier run there is regenerated)")
    parser.add_argument("--cases", type=int, default=2, metavar="N", help="cases per kind (default 2)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    parser.add_argument("--kinds", default=",".join(KINDS), metavar="K1,K2", help=f"kinds to run (default {','.join(KINDS)})")
    parser.add_argument("--full-size", action="store_true", help="clinical-size scans instead of the small presets")
    parser.set_defaults(func=run)
    return parser


def _score_case(kind: str, image_path: str, label_path: str, label_names: dict) -> dict:
    """Score one written case through the input layer, as a user's scan would be."""
    from ctbundles.transforms.calcium_scoring import CalciumScoreParams
    from ctbundles.transforms.calcium_transforms import CalciumScore, ICACVolume
    from ctbundles.transforms.ct_checks import check_ct
    from ctbundles.transforms.ct_io import load_ct, load_label

    image = load_ct(image_path)
    label = load_label(label_path, like=image)
    findings = [f"{f.code}: {f.message}" for f in check_ct(image) if f.severity != "info"]
    if kind == "head":
        report = ICACVolume(label_names=label_names)(image, label)
    else:
        report = CalciumScore(params=CalciumScoreParams(artery_labels=label_names))(image, label)
    report["findings"] = findings
    return report


def _lesion_volume_ml(label_path: str, image_path: str) -> dict:
    """CT perfusion: lesion volume of the written mask, on the grid of the written CT."""
    import numpy as np

    from ctbundles.transforms.ct_io import load_ct, load_label

    image = load_ct(image_path)
    mask = load_label(label_path, like=image)
    voxel_mm3 = float(np.prod(image.meta["spacing"]))
    return {"lesion_volume_ml": float((np.asarray(mask) > 0).sum()) * voxel_mm3 / 1000.0, "findings": []}


def _run_kind(kind: str, out: Path, cases: int, seed: int, small: bool) -> dict:
    from ctbundles.commands.synth import synthesize

    layout, figure = KINDS[kind]
    t0 = time.perf_counter()
    folder = out / kind
    if folder.exists():  # a cohort from an earlier run is regenerated; anything else is left alone
        if not (folder / "truth.csv").is_file():
            raise CTInputError(f"{folder} exists and does not hold a cohort written by ctbundles; choose another --out")
        shutil.rmtree(folder)
    result = synthesize(kind, folder, cases, seed=seed, layout=layout, small=small)
    truth_by_case = _truth_csv(result["truth_csv"], figure)
    if kind == "ctp":
        from ctbundles.datasets.isles2018 import build_datalist

        datalist = build_datalist(folder)
        base = Path(datalist["base_dir"])
        items = {item["case"]: item for item in datalist["training"]}
    rows = []
    for record in result["cases"]:
        paths = record["paths"]
        if kind == "ctp":
            item = items[Path(paths["image"]).name]
            measured = _lesion_volume_ml(str(base / item["label"]), str(base / item["ct"]))
        else:
            label_names = json.loads(Path(paths["truth"]).read_text()).get("label_names") or {}
            measured = _score_case(kind, paths["image"], paths["label"], label_names)
        truth = truth_by_case.get(record["case_id"])
        rows.append(
            {
                "case": record["case_id"],
                figure: measured[figure],
                "truth": truth,
                "findings": measured["findings"],
                "agrees": truth is not None and abs(float(measured[figure]) - truth) <= 1e-6 * max(1.0, abs(truth)),
            }
        )
    return {"kind": kind, "figure": figure, "folder": str(folder), "seconds": time.perf_counter() - t0, "cases": rows}


def _truth_csv(path, figure: str) -> dict:
    import csv

    with open(path, newline="") as f:
        return {r["case_id"]: float(r[figure]) for r in csv.DictReader(f) if r.get(figure) not in (None, "")}


def run(args) -> int:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise CTInputError(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for n, kind in enumerate(kinds, 1):
        print(f"== [{n}/{len(kinds)}] {kind}: {args.cases} synthetic case(s) -> {out / kind}", file=sys.stderr)
        summary = _run_kind(kind, out, args.cases, args.seed, small=not args.full_size)
        summaries.append(summary)
        print(f"-- {kind} ({summary['seconds']:.1f} s): {summary['figure']} measured vs ground truth")
        for row in summary["cases"]:
            status = "ok" if row["agrees"] else "DIFFERS"
            note = f"  [{'; '.join(row['findings'])}]" if row["findings"] else ""
            print(f"   {row['case']:<16} {float(row[summary['figure']]):12.3f}  truth {float(row['truth']):12.3f}  {status}{note}")
    from ctbundles.transforms.score_report import write_json

    path = write_json(out / "summary.json", {"kinds": summaries})
    print(f"summary written to {path}")
    return 0 if all(r["agrees"] for s in summaries for r in s["cases"]) else 1
