"""Write the synthetic chest / cardiac CT cohorts that ``models/model.pt`` was trained and tested on.

The cases come from the project's generators (``ctbundles.synthetic.chest_cardiac``) on a reduced
grid so that a 2-core CPU can train on them (bundle README, Performance and deviation 10):

- chest: 256 x 256 x 48 voxels of 1 x 1 x 2.5 mm (a 256 mm field of view around the heart);
- cardiac: 256 x 256 x 40 voxels of 0.8 x 0.8 x 3 mm (a 205 mm field of view).

Case ``i`` of a cohort uses generator seed ``seed + i``; the seeds used for ``models/model.pt`` are
0-39 (training, chest), 1000-1023 (held-out chest test) and 2000-2023 (held-out cardiac test); the
0.2.0 figures were first measured on the 12-case cohorts 1000-1011 and 2000-2011. The error analysis
behind version 0.4.0 used validation cases only: chest_10, 11, 13 and 21 (in the bundle's validation
fold 0) plus chest seeds
4000-4007 (``--cases 8 --seed 4000``) and cardiac seeds 3000-3011 (``--cases 12 --seed 3000``).

Usage (from the bundle folder)::

    python scripts/make_synthetic_cohorts.py chest --out /data/cac_syn/train --cases 40 --seed 0 --folds 10
    python scripts/make_synthetic_cohorts.py chest --out /data/cac_syn/test_chest --cases 24 --seed 1000
    python scripts/make_synthetic_cohorts.py cardiac --out /data/cac_syn/test_cardiac --cases 24 --seed 2000

``--folds 10`` writes 10 folds into ``datalist.json``, but the bundle does not read that file: its
``datalist`` (``build_datalist`` on ``dataset_dir``) assigns 5 patient-grouped folds of 8, so training
uses 32 cases and fold 0 (8 cases) validates. The test cohorts are evaluated whole (``evaluate.json``
reads every case of the folder).
"""

from __future__ import annotations

import argparse
import sys
import time

from ctbundles.datasets.nifti_folder import write_case, write_datalist
from ctbundles.synthetic.registry import generate

#: (shape, spacing in mm) of each cohort kind.
GRIDS = {
    "chest": ((256, 256, 48), (1.0, 1.0, 2.5)),
    "cardiac": ((256, 256, 40), (0.8, 0.8, 3.0)),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(GRIDS))
    p.add_argument("--out", required=True, help="output folder (NIfTI folder layout)")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="generator seed of the first case")
    p.add_argument("--folds", type=int, default=1, help="cross-validation folds in the datalist")
    args = p.parse_args(argv)
    shape, spacing = GRIDS[args.kind]
    start = time.time()
    for seed in range(args.seed, args.seed + args.cases):
        case = generate(args.kind, seed, shape=shape, spacing=spacing)
        write_case(case, args.out)
        print(f"{case.case_id}: Agatston {case.truth['agatston']:.1f} ({case.truth['risk_category']})", flush=True)
    write_datalist(args.out, folds=args.folds)
    print(f"{args.cases} {args.kind} cases in {time.time() - start:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
