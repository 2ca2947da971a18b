"""Pool ``evaluate_cascade.py`` results of disjoint held-out cohorts into one (orCaScore protocol, Wolterink et al. 2016).

The held-out figure of the bundle README is over 48 cases written as two cohorts (12 cases of seed 2 and 36
of seed 5). Each cohort is scored by ``scripts/evaluate_cascade.py``; this sums their lesion and pixel counts
(ratios recomputed) and computes ICC, kappa and risk accuracy over the per-case scores of all cases
(``ctbundles.metrics.orcascore_evaluation.pool_evaluations``), as one evaluation of all cases would.

    python scripts/pool_cascade_results.py --out eval/heldout_48.json eval/heldout_12.json eval/heldout_36.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ctbundles.atomic_io import atomic_write_json
from ctbundles.metrics.orcascore_evaluation import pool_evaluations

STAGES = ("stages_1_2", "stages_1_2_3")


def read_result(path: str) -> dict:
    """One ``evaluate_cascade.py`` output, with a message naming the file when it is not one."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read an evaluate_cascade.py result ({exc})") from None
    missing = [k for k in STAGES if not isinstance(result.get(k), dict) or "cases" not in result[k]]
    if missing:
        raise SystemExit(f"{path}: not an evaluate_cascade.py result (no per-case {', '.join(missing)})")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="evaluate_cascade.py outputs of disjoint cohorts")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    results = [read_result(p) for p in args.results]
    pooled = {"inputs": args.results, "n_cases": sum(len(r["stages_1_2_3"]["cases"]) for r in results),
              "stage1": {p: r.get("stage1") for p, r in zip(args.results, results)}}
    for key in STAGES:
        pooled[key] = pool_evaluations([r[key] for r in results])
        pooled[key]["lesion_f1"] = pooled[key]["lesions"]["all"]["f1"]
    atomic_write_json(args.out, pooled)
    short = {k: {"lesion_f1": pooled[k]["lesion_f1"], "lesions": {n: pooled[k]["lesions"]["all"][n] for n in ("tp", "fp", "fn")},
                 "agatston_icc": pooled[k]["agatston_icc"], "risk_accuracy": pooled[k]["risk_accuracy"]} for k in STAGES}
    print(json.dumps({"n_cases": pooled["n_cases"], **short}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
