"""Write the synthetic head cohort that the shipped ``models/model.pt`` is trained and evaluated on.

The heads are generated directly on the network frame of ``configs/inference.json`` (the paper's
240 x 240 x 100 voxels of 0.46 x 0.46 x 1 mm, centred at (0, 3, -40) mm of the reference head, i.e.
on the intracranial carotids; Bortsova et al., MICCAI 2017, Sec. 3) with a small residual pose, so
a training head looks like a registered head and the recipe (``configs/train_synthetic.json``)
trains without the rigid registration to the reference head (``register_to_reference`` false): on
2 CPU cores the registration of every case would dominate the run. Every case has at least one plaque per side,
so that the per-image Dice is defined for every case.

Usage (from the bundle folder)::

    python scripts/make_synthetic_cohort.py --out /tmp/icac/train --cases 32 --seed 0 --folds 8
    python scripts/make_synthetic_cohort.py --out /tmp/icac/test --cases 8 --seed 1000 --folds 1

``--folds 1`` puts every case in fold 0, the fold ``evaluate.json`` evaluates.
"""

from __future__ import annotations

import argparse
import sys
import time

from ctbundles.datasets import nifti_folder
from ctbundles.datasets.datalist_io import write_datalist_json
from ctbundles.synthetic.head import generate_head

#: The network frame (inference.json and train_synthetic.json: frame_shape, frame_spacing, frame_centre_mm).
FRAME_SHAPE = (240, 240, 100)
FRAME_SPACING = (0.46, 0.46, 1.0)
FRAME_CENTRE_MM = (0.0, 3.0, -40.0)
#: Residual misregistration left to the network (a registered head is not exactly on the reference).
ROTATION_DEG = (3.0, 2.0, 2.0)
TRANSLATION_MM = (2.0, 2.0, 2.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=4)
    a = p.parse_args(argv)
    for i in range(a.cases):
        t0 = time.perf_counter()
        case = generate_head(
            a.seed + i, shape=FRAME_SHAPE, spacing=FRAME_SPACING, grid_centre_mm=FRAME_CENTRE_MM,
            pose=True, max_rotation_deg=ROTATION_DEG, max_translation_mm=TRANSLATION_MM,
            n_calcifications=(1, 4),
        )
        case.case_id = f"icac_synth_{a.seed + i:03d}"  # no "_0000" suffix (read as an nnU-Net channel)
        nifti_folder.write_case(case, a.out)
        print(f"[{i + 1}/{a.cases}] {case.case_id} ICAC {case.truth['total_mm3']:.1f} mm3 "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    write_datalist_json(nifti_folder.build_datalist(a.out, folds=a.folds, seed=a.seed), f"{a.out}/datalist.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
