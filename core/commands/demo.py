"""`ctbundles demo`: the main job on data the project generates itself.

For each bundle it writes a synthetic cohort of the scans the bundle expects (``ctbundles synth``:
head CT for the ICAC bundle, chest CT for the DenseRAUnet bundle, cardiac CT in the orCaScore
layout for the cascade bundle, CT perfusion in the ISLES 2018 layout, stacked to one 4-channel
file per case, for the MS-DCNN bundle), on the grid the bundle's shipped weights were trained on
(``KINDS``; ``--small``: the coarse presets), then:

1. reads every case back through the CT input layer and scores its ground-truth label with the
   project's scoring code (Agatston for chest and cardiac CT, ICAC volume for head CT, lesion volume
   for CT perfusion); the figure must equal the one the generator stored beside the case;
2. runs the bundle's own ``configs/inference.json`` with ``python -m monai.bundle run`` (overriding
   only the dataset and output folders), with the trained weights in the bundle's ``models/``;
3. scores every prediction file the bundle wrote the same way and compares it with the ground
   truth: the figure, the Dice overlap of the predicted and true foreground, and the risk category
   (chest and cardiac CT), and prints the warnings of the bundle's own per-case report.

A bundle without its trained weights is reported as such and not run. It prints one summary per
bundle and writes ``summary.json``; the exit status is 0 when every read-back matched and every
bundle ran and wrote a prediction on the input grid for every case (the accuracy of the
predictions is reported, not judged).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from ctbundles.errors import CTInputError

#: kind -> the bundle that reads it, the layout its cohort is written in, the figure compared with
#: the generator's truth, the key of that figure in the bundle's own per-case report, and the
#: generator options of the demo's scans: the grid of the synthetic cohort the bundle's shipped
#: weights were trained on (each bundle README, "Performance"): the cascade's 128 x 128 x 40 cardiac
#: scans of 1.2 x 1.2 x 3 mm (``ctbundles synth cardiac --small``), the DenseRAUnet's 256 x 256 x 48
#: chest scans of 1 x 1 x 2.5 mm (its ``scripts/make_synthetic_cohorts.py``), raw clinical-size posed
#: heads that the ICAC bundle registers to its 0.46 mm network frame, and ISLES 2018's 256 x 256 slabs.
KINDS = {
    "cardiac": {"bundle": "cac_orcascore_cascade_ct_segmentation", "layout": "orcascore", "figure": "agatston", "report_key": "agatston",
                "grid": {"small": True}},
    "chest": {"bundle": "cac_chest_cardiac_ct_segmentation", "layout": "nifti", "figure": "agatston", "report_key": "agatston",
              "grid": {"shape": (256, 256, 48), "spacing": (1.0, 1.0, 2.5)}},
    "head": {"bundle": "icac_ct_segmentation", "layout": "nifti", "figure": "total_mm3", "report_key": "total_mm3", "grid": {}},
    "ctp": {"bundle": "isles2018_ctp_stroke_segmentation", "layout": "isles2018", "figure": "lesion_volume_ml", "report_key": "volume_ml",
            "grid": {}},
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="the main job: synthetic cohorts through each bundle's inference, compared with the ground truth",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; a cohort from an earlier run there is regenerated)")
    parser.add_argument("--cases", type=int, default=1, metavar="N", help="cases (patients) per bundle (default 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    parser.add_argument("--kinds", default=",".join(KINDS), metavar="K1,K2", help=f"kinds to run (default {','.join(KINDS)})")
    parser.add_argument("--small", action="store_true",
                        help="the coarse small presets of ctbundles synth for every kind (a quick smoke test; by default each bundle gets scans on the grid its shipped weights were trained on, and only those figures are representative)")
    parser.add_argument("--bundles", default=None, metavar="DIR", help="folder of the bundles (default: the repository's bundles/)")
    parser.add_argument("--no-inference", action="store_true", help="only generate, read back and score the cohorts (step 1)")
    parser.add_argument("--threads", type=int, default=None, metavar="T", help="CPU threads of each bundle run (OMP_NUM_THREADS; default: PyTorch's)")
    parser.set_defaults(func=run)
    return parser


# ------------------------------------------------------------------------------------------------
# scoring from files
# ------------------------------------------------------------------------------------------------


def _label_names(kind: str, truth_json: str | None) -> dict:
    if kind == "ctp" or not truth_json:
        return {}
    return json.loads(Path(truth_json).read_text()).get("label_names") or {}


def score_files(kind: str, image_path: str, label_path: str, label_names: dict | None = None) -> dict:
    """Score ``label_path`` (ground truth or prediction) on ``image_path`` from the files.

    Returns ``{figure: value, "findings": [...]}`` plus ``risk_category`` for chest and cardiac CT.
    The label must lie on the image's grid (else :class:`CTInputError`). For CT perfusion the
    image is a perfusion map or the stacked 4-channel file; the lesion volume is the voxel count of
    the mask times the voxel volume of the image.
    """
    import numpy as np

    if kind == "ctp":
        import nibabel as nib

        voxel_mm3 = float(np.prod(nib.load(str(image_path)).header.get_zooms()[:3]))
        mask = load_mask(kind, image_path, label_path)
        return {"lesion_volume_ml": float(mask.sum()) * voxel_mm3 / 1000.0, "findings": []}

    from ctbundles.transforms.calcium_scoring import CalciumScoreParams
    from ctbundles.transforms.calcium_transforms import CalciumScore, ICACVolume
    from ctbundles.transforms.ct_checks import check_ct
    from ctbundles.transforms.ct_io import load_ct, load_label

    image = load_ct(image_path)
    label = load_label(label_path, like=image)
    findings = [f"{f.code}: {f.message}" for f in check_ct(image) if f.severity != "info"]
    if kind == "head":
        report = ICACVolume(label_names=label_names or None)(image, label)
    else:
        report = CalciumScore(params=CalciumScoreParams(artery_labels=label_names or None))(image, label)
    report["findings"] = findings
    return report


def load_mask(kind: str, image_path: str, label_path: str):
    """Foreground (label > 0) of a label file, checked to lie on ``image_path``'s grid."""
    import numpy as np

    if kind == "ctp":
        import nibabel as nib

        img, lab = nib.load(str(image_path)), nib.load(str(label_path))
        if tuple(lab.shape[:3]) != tuple(img.shape[:3]) or not np.allclose(lab.affine, img.affine, atol=1e-3):
            raise CTInputError(f"{label_path}: grid {lab.shape[:3]} differs from {image_path} grid {img.shape[:3]} (or its affine)")
        return np.asarray(lab.dataobj).reshape(lab.shape[:3]) > 0
    from ctbundles.transforms.ct_io import load_ct, load_label

    return np.asarray(load_label(label_path, like=load_ct(image_path))) > 0


def dice(a, b) -> float:
    """Dice of two boolean masks, 2|A and B| / (|A| + |B|); 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def compare_prediction(kind: str, case: dict, prediction: str | None) -> dict:
    """Predicted figure, Dice and risk category of one case's prediction file against its truth."""
    from ctbundles.transforms.calcium_scoring import risk_category

    figure = KINDS[kind]["figure"]
    row = {"case": case["case"], "image": case["image"], "prediction": prediction, "truth": case["truth"]}
    if prediction is None:
        row["error"] = "the bundle wrote no prediction file for this case"
        return row
    try:
        # the cascade predicts artery labels 1-3 and the DenseRAUnet 0/1: only the foreground is scored
        measured = score_files(kind, case["image"], prediction, {})
        row["predicted"] = float(measured[figure])
        row["dice"] = dice(load_mask(kind, case["image"], prediction), load_mask(kind, case["image"], case["label"]))
    except CTInputError as err:
        row["error"] = str(err)
        return row
    truth = case["truth"]
    row["difference"] = row["predicted"] - truth
    row["relative_difference"] = None if truth == 0 else row["difference"] / truth
    if kind in ("chest", "cardiac"):
        row["risk_category"], row["truth_risk_category"] = risk_category(row["predicted"]), risk_category(truth)
        row["risk_category_agrees"] = row["risk_category"] == row["truth_risk_category"]
    report = Path(prediction).parent / (Path(case["image"]).name.split(".")[0] + ".json")
    if report.is_file():
        bundle_report = json.loads(report.read_text())
        value = bundle_report.get(KINDS[kind]["report_key"])
        row["bundle_report"] = str(report)
        row["bundle_reported"] = None if value is None else float(value)
        row["bundle_warnings"] = list(bundle_report.get("warnings") or [])
    return row


# ------------------------------------------------------------------------------------------------
# cohorts
# ------------------------------------------------------------------------------------------------


def _truth_csv(path, figure: str) -> dict:
    import csv

    with open(path, newline="") as f:
        return {r["case_id"]: float(r[figure]) for r in csv.DictReader(f) if r.get(figure) not in (None, "")}


def make_cohort(kind: str, out: Path, cases: int, seed: int, small: bool) -> dict:
    """Write ``kind``'s cohort under ``out/kind`` in its bundle's layout.

    Returns ``{"folder", "dataset_dir", "cases": [{case, image, label, truth, label_names, truth_json}]}``
    where ``image`` is the file the bundle reads (for CT perfusion the stacked 4-channel file) and
    ``truth`` the generator's figure (for the orCaScore layout: of the remapped reference).
    """
    from ctbundles.commands.synth import synthesize

    spec = KINDS[kind]
    folder = out / kind
    if folder.exists():  # a cohort from an earlier run is regenerated; anything else is left alone
        if not (folder / "truth.csv").is_file():
            raise CTInputError(f"{folder} exists and does not hold a cohort written by ctbundles; choose another --out")
        shutil.rmtree(folder)
    result = synthesize(kind, folder, cases, seed=seed, layout=spec["layout"], small=small,
                        options=None if small else spec["grid"])
    truth_by_case = _truth_csv(result["truth_csv"], spec["figure"])
    rows = []
    if kind == "ctp":
        from ctbundles.datasets.isles2018 import build_datalist, stack_maps

        datalist = build_datalist(folder)
        base = Path(datalist["base_dir"])
        stacked = folder / "stacked"
        for record in result["cases"]:
            case_dir = Path(record["paths"]["image"])
            item = next(it for it in datalist["training"] if it["case"] == case_dir.name)
            image = stack_maps(case_dir, stacked / f"{record['case_id']}.nii.gz")
            rows.append({"case": record["case_id"], "image": str(image), "label": str(base / item["label"]),
                         "truth": truth_by_case[record["case_id"]], "label_names": {}, "truth_json": None})
        return {"folder": str(folder), "dataset_dir": str(stacked), "cases": rows}
    for record in result["cases"]:
        paths = record["paths"]
        truth = truth_by_case[record["case_id"]]
        if spec["layout"] == "orcascore":  # the reference is remapped to LAD/LCX/RCA; its own re-scored truth
            truth = float(json.loads(Path(paths["truth"]).read_text())["truth"][spec["figure"]])
        rows.append({"case": record["case_id"], "image": paths["image"], "label": paths["label"], "truth": truth,
                     "label_names": _label_names(kind, paths.get("truth")), "truth_json": paths.get("truth")})
    return {"folder": str(folder), "dataset_dir": str(Path(rows[0]["image"]).parent), "cases": rows}


def read_back(kind: str, cohort: dict) -> list[dict]:
    """Step 1: score each written ground-truth label from the files and compare with the stored truth."""
    figure = KINDS[kind]["figure"]
    rows = []
    for case in cohort["cases"]:
        measured = score_files(kind, case["image"], case["label"], case["label_names"])
        truth = case["truth"]
        rows.append({
            "case": case["case"], figure: float(measured[figure]), "truth": truth, "findings": measured["findings"],
            "agrees": abs(float(measured[figure]) - truth) <= 1e-6 * max(1.0, abs(truth)),
        })
    return rows


# ------------------------------------------------------------------------------------------------
# the main job
# ------------------------------------------------------------------------------------------------


def _fmt(value, width=10, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{float(value):{width}.{digits}f}"


#: seconds between the progress lines printed while a bundle's inference runs
PROGRESS_EVERY_S = 20.0


def run_bundle(kind: str, cohort: dict, out: Path, bundles_root: Path, threads: int | None = None, extra: dict | None = None) -> dict:
    """Step 2 and 3 for one kind: the bundle's inference and the comparison of its predictions."""
    from ctbundles.bundle_runner import missing_weights, prediction_file, run_inference

    spec = KINDS[kind]
    bundle = bundles_root / spec["bundle"]
    result = {"bundle": spec["bundle"], "bundle_dir": str(bundle)}
    if not (bundle / "configs" / "inference.json").is_file():
        result.update(status="no_bundle", message=f"{bundle}/configs/inference.json not found; inference was NOT run")
        return result
    missing = missing_weights(bundle)
    if missing:
        result.update(status="no_weights", missing=[str(p) for p in missing],
                      message=f"bundle {spec['bundle']} has no trained weights ({', '.join(str(p) for p in missing)} missing); "
                              "inference was NOT run")
        return result
    pred_dir = Path(cohort["folder"]) / "predictions"
    n_cases = len(cohort["cases"])

    def progress(seconds: float, written: int) -> None:
        print(f"   [{kind}] inference running: {seconds:.0f} s, {written}/{n_cases} segmentation(s) written", file=sys.stderr, flush=True)

    run = run_inference(bundle, cohort["dataset_dir"], pred_dir, Path(cohort["folder"]) / "inference.log", threads=threads, extra=extra,
                        progress=progress, progress_every=PROGRESS_EVERY_S)
    result.update(inference_seconds=run["seconds"], log=run["log"], command=run["command"], output_dir=str(pred_dir))
    if run["returncode"] != 0:
        tail = Path(run["log"]).read_text().strip().splitlines()[-5:]
        result.update(status="failed", message=f"python -m monai.bundle run exited {run['returncode']}: " + " | ".join(tail))
        return result
    result["output_files"] = sorted(str(p) for p in pred_dir.iterdir())
    result["cases"] = [compare_prediction(kind, case, _str(prediction_file(case["image"], pred_dir))) for case in cohort["cases"]]
    errors = [c for c in result["cases"] if "error" in c]
    result["status"] = "ok" if not errors else "incomplete"
    if errors:
        result["message"] = "; ".join(f"{c['case']}: {c['error']}" for c in errors)
    dices = [c["dice"] for c in result["cases"] if "dice" in c]
    result["mean_dice"] = sum(dices) / len(dices) if dices else None
    if kind in ("chest", "cardiac"):
        agree = [c["risk_category_agrees"] for c in result["cases"] if "risk_category_agrees" in c]
        result["risk_category_agreement"] = f"{sum(agree)}/{len(agree)}"
    return result


def _str(p):
    return None if p is None else str(p)


def _print_summary(kind: str, summary: dict) -> None:
    spec = KINDS[kind]
    figure = spec["figure"]
    inference = summary.get("inference", {})
    print(f"-- {kind} -> {spec['bundle']} ({summary['seconds']:.1f} s)")
    checked = summary["read_back"]
    print(f"   ground truth read back from the files: {sum(r['agrees'] for r in checked)}/{len(checked)} {figure} equal the generator's")
    status = inference.get("status", "skipped")
    if status in ("no_weights", "failed", "no_bundle"):
        print(f"   {status.upper().replace('_', ' ')}: {inference['message']}")
        return
    if status == "skipped":
        print("   inference skipped (--no-inference)")
        return
    print(f"   inference: python -m monai.bundle run, {inference['inference_seconds']:.1f} s, {len(inference['output_files'])} output files in {inference['output_dir']}")
    risk_header = "  risk category pred / truth" if kind in ("chest", "cardiac") else ""
    print(f"   {'case':<12} {figure + ' pred':>16} {'truth':>10} {'Dice':>6}{risk_header}")
    for row in inference["cases"]:
        if "error" in row:
            print(f"   {row['case']:<12} ERROR: {row['error']}")
            continue
        risk = f"  {row['risk_category']} / {row['truth_risk_category']} ({'agree' if row['risk_category_agrees'] else 'differ'})" if "risk_category" in row else ""
        print(f"   {row['case']:<12} {_fmt(row['predicted'], 16)} {_fmt(row['truth'])} {row['dice']:6.3f}{risk}")
        for warning in row.get("bundle_warnings", []):
            print(f"   {'':<12} the bundle's report warns: {warning}")
    extra = f", risk category agreement {inference['risk_category_agreement']}" if "risk_category_agreement" in inference else ""
    print(f"   mean Dice {_fmt(inference['mean_dice'], 0, 3).strip()}{extra}")


def run(args) -> int:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise CTInputError(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundles_root = None
    if not args.no_inference:
        from ctbundles.bundle_runner import find_bundles_root

        bundles_root = find_bundles_root(args.bundles)
    t_start = time.perf_counter()
    summaries = []
    for n, kind in enumerate(kinds, 1):
        spec = KINDS[kind]
        t0 = time.perf_counter()
        say = lambda msg: print(f"   [{kind}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
        print(f"== [{n}/{len(kinds)}] {kind} -> {spec['bundle']}: {args.cases} synthetic case(s) in {out / kind}", file=sys.stderr, flush=True)
        cohort = make_cohort(kind, out, args.cases, args.seed, small=args.small)
        say(f"cohort written ({len(cohort['cases'])} case(s), {time.perf_counter() - t0:.1f} s); reading the ground truth back")
        summary = {"kind": kind, "bundle": spec["bundle"], "figure": spec["figure"], "folder": cohort["folder"],
                   "read_back": read_back(kind, cohort)}
        if args.no_inference:
            summary["inference"] = {"status": "skipped"}
        else:
            say(f"running {spec['bundle']}/configs/inference.json with python -m monai.bundle run (log: {cohort['folder']}/inference.log)")
            summary["inference"] = run_bundle(kind, cohort, out, bundles_root, threads=args.threads)
            say(f"inference: {summary['inference']['status']}")
        summary["seconds"] = time.perf_counter() - t0
        summaries.append(summary)
        _print_summary(kind, summary)
    from ctbundles.atomic_io import atomic_write_json

    total = time.perf_counter() - t_start
    path = atomic_write_json(out / "summary.json", {"seconds": total, "cases_per_bundle": args.cases, "seed": args.seed, "kinds": summaries})
    print(f"summary written to {path} ({total:.1f} s in all)")
    read_ok = all(r["agrees"] for s in summaries for r in s["read_back"])
    statuses = {s["kind"]: s["inference"]["status"] for s in summaries}
    bad = {k: v for k, v in statuses.items() if v not in ("ok", "skipped")}
    if bad:
        print("NOT COMPLETE: " + ", ".join(f"{k} ({v})" for k, v in bad.items()), file=sys.stderr)
    if not read_ok:
        print("NOT COMPLETE: a ground-truth read-back differs from the generator's truth", file=sys.stderr)
    return 0 if read_ok and not bad else 1
