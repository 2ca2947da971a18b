"""Write a synthetic head cohort registered to the reference head exactly as ``configs/inference.json`` does.

Each case is a posed full-resolution head (by default 400 x 400 x 150 voxels of 0.5 x 0.5 x 1 mm, the
project's default pose, 1-4 plaques per side: the head of the slow test
``test_shipped_model_segments_a_fresh_registered_synthetic_head``; ``--raw_grid clinical``: the
512 x 512 x 200 voxels of 0.45 x 0.45 x 0.7 mm of ``ctbundles synth head``, the grid ``ctbundles demo``
runs; ``--raw_shape`` / ``--raw_spacing`` override either) put through the bundle's own
``ToNetworkFramed`` (rigid registration to ``models/reference_head.nii.gz``, linear resampling onto
the 240 x 240 x 100 network frame of 0.46 x 0.46 x 1 mm; the label resampled with the same transform,
nearest neighbour) and saved as NIfTI on the frame. Training on these frames
(``configs/train_synthetic.json``, ``register_to_reference`` false) sees what inference sees after
the registration (Bortsova et al., MICCAI 2017, Sec. 3: the network works on registered scans).

Usage (from the bundle folder)::

    python scripts/make_registered_cohort.py --out /tmp/icac/reg_train --seeds 2000-2023 2100-2103 --val_seeds 2100-2103
    python scripts/make_registered_cohort.py --out /tmp/icac/reg_test --seeds 2200-2207
    python scripts/make_registered_cohort.py --out /tmp/icac/reg_test_clin --seeds 2300-2307 --raw_grid clinical --raw_only

Cases listed in ``--val_seeds`` get fold 0 (the validation fold of ``train.json``), the others fold 1;
without ``--val_seeds`` every case is in fold 0, the fold ``evaluate.json`` evaluates.
``--raw_out`` also writes the unregistered heads; ``--raw_only`` writes only those (no registration),
for inference through ``inference.json`` (which registers them), and ``--score PRED_DIR`` then prints
the Dice of each ``PRED_DIR/<case>_seg.nii.gz`` against the case's label at >= 130 HU on the
original grid (the measure of the slow test)::

    python scripts/make_registered_cohort.py --out /tmp/icac/reg_test --seeds 2200-2207 --raw_only
    python -m monai.bundle run --config_file configs/inference.json \
        --dataset_dir /tmp/icac/reg_test/imagesTr --output_dir /tmp/icac/reg_pred
    python scripts/make_registered_cohort.py --out /tmp/icac/reg_test --seeds 2200-2207 --score /tmp/icac/reg_pred
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ctbundles.datasets import nifti_folder
from ctbundles.datasets.datalist_io import write_datalist_json
from ctbundles.metrics.icac_evaluation import dice_counts, dice_score
from ctbundles.synthetic.head import DEFAULT_SHAPE, DEFAULT_SPACING, generate_head
from ctbundles.transforms.icac_frame import ToNetworkFramed

BUNDLE = Path(__file__).resolve().parents[1]
#: The posed full-resolution head of the registered-head test (``--raw_grid fine``, the default).
RAW_SHAPE = (400, 400, 150)
RAW_SPACING = (0.5, 0.5, 1.0)


def raw_grid(name: str = "fine", shape=None, spacing=None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(shape, spacing) of the generated raw heads: ``fine`` = ``RAW_SHAPE`` / ``RAW_SPACING``,
    ``clinical`` = ``ctbundles synth head``'s default grid (``DEFAULT_SHAPE`` / ``DEFAULT_SPACING`` of
    ``ctbundles.synthetic.head``); ``shape`` / ``spacing`` replace the preset's values."""
    presets = {"fine": (RAW_SHAPE, RAW_SPACING), "clinical": (DEFAULT_SHAPE, DEFAULT_SPACING)}
    if name not in presets:
        raise ValueError(f"raw grid {name!r}: expected one of {sorted(presets)}")
    base_shape, base_spacing = presets[name]
    shape = tuple(int(v) for v in (base_shape if shape is None else shape))
    spacing = tuple(float(v) for v in (base_spacing if spacing is None else spacing))
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"raw grid: need 3 positive sizes and spacings, got {shape} / {spacing}")
    return shape, spacing


def seeds(specs) -> list[int]:
    """``["2000-2003", "2100"]`` -> [2000, 2001, 2002, 2003, 2100]."""
    out = []
    for s in specs:
        lo, _, hi = str(s).partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def register_case(case, framer: ToNetworkFramed):
    """Replace ``case``'s image and label by their registered network-frame versions (in place)."""
    d = framer({
        "image": MetaTensor(torch.as_tensor(np.asarray(case.image, np.float32)), affine=torch.as_tensor(case.affine)),
        "label": MetaTensor(torch.as_tensor(np.asarray(case.label, np.float32)), affine=torch.as_tensor(case.affine)),
    })
    case.image = d["image"].numpy().astype(np.float32)
    case.label = np.rint(d["label"].numpy()).astype(np.uint8)
    case.affine = np.asarray(d["image"].affine, np.float64)
    case.extra = {}
    case.meta = dict(case.meta, icac_frame_transform=d["image"].meta["icac_frame"]["transform_parameters"])
    return case


def score(root, pred_dir, case_seeds) -> int:
    """Print per-case Dice of predicted segmentations against the labels at >= 130 HU, and the mean
    with the sample SD (ddof 1, as ``evaluate.json``'s ``ctbundles.metrics.icac_evaluation.summarize``)."""
    import nibabel as nib

    dices, n_pred, n_ref = [], 0, 0
    for seed in case_seeds:
        cid = f"icac_synth_{seed:04d}"
        image = np.asarray(nib.load(f"{root}/{nifti_folder.IMAGES}/{cid}.nii.gz").dataobj)
        ref = (np.asarray(nib.load(f"{root}/{nifti_folder.LABELS}/{cid}.nii.gz").dataobj) > 0) & (image >= 130.0)
        pred = np.asarray(nib.load(f"{pred_dir}/{cid}_seg.nii.gz").dataobj) > 0
        _, case_pred, case_ref = dice_counts(pred, ref)
        dices.append(dice_score(pred, ref, empty=0.0))
        n_pred, n_ref = n_pred + case_pred, n_ref + case_ref
        print(f"{cid}: Dice {dices[-1]:.3f} ({case_pred} predicted, {case_ref} reference voxels)")
    sd = float(np.std(dices, ddof=1)) if len(dices) > 1 else 0.0
    print(f"mean Dice {np.mean(dices):.3f} +/- {sd:.3f} (sample SD) over {len(dices)} heads; "
          f"{n_pred} predicted, {n_ref} reference voxels")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", nargs="+", required=True, help="seeds or ranges, e.g. 2000-2023 2100-2103")
    p.add_argument("--val_seeds", nargs="*", default=None, help="seeds of fold 0 (default: all)")
    p.add_argument("--raw_out", default=None, help="also write the unregistered heads here")
    p.add_argument("--raw_only", action="store_true", help="write the unregistered heads only")
    p.add_argument("--score", default=None, help="folder of <case>_seg.nii.gz to score against --out")
    p.add_argument("--reference", default=str(BUNDLE / "models" / "reference_head.nii.gz"))
    p.add_argument("--raw_grid", choices=("fine", "clinical"), default="fine",
                   help="grid of the generated heads: fine = 400 x 400 x 150 of 0.5 x 0.5 x 1 mm (default), "
                        "clinical = 512 x 512 x 200 of 0.45 x 0.45 x 0.7 mm (ctbundles synth head's default)")
    p.add_argument("--raw_shape", type=int, nargs=3, default=None, help="voxels, replaces the preset's")
    p.add_argument("--raw_spacing", type=float, nargs=3, default=None, help="mm, replaces the preset's")
    a = p.parse_args(argv)
    if a.score:
        return score(a.out, a.score, seeds(a.seeds))
    try:
        shape, spacing = raw_grid(a.raw_grid, a.raw_shape, a.raw_spacing)
    except ValueError as e:
        p.error(str(e))
    print(f"raw grid {shape} voxels of {spacing} mm", file=sys.stderr)
    framer = ToNetworkFramed(keys="image", label_keys="label", reference=a.reference)  # inference.json's frame
    all_seeds = seeds(a.seeds)
    val = set(seeds(a.val_seeds)) if a.val_seeds is not None else set(all_seeds)
    folds = {}
    for i, seed in enumerate(all_seeds):
        t0 = time.perf_counter()
        case = generate_head(seed, shape=shape, spacing=spacing, n_calcifications=(1, 4))
        case.case_id = f"icac_synth_{seed:04d}"
        if a.raw_out or a.raw_only:
            nifti_folder.write_case(case, a.out if a.raw_only else a.raw_out)
        if a.raw_only:
            print(f"[{i + 1}/{len(all_seeds)}] {case.case_id} ICAC {case.truth['total_mm3']:.1f} mm3 (raw, "
                  f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
            continue
        raw_icac = int((np.asarray(case.label) > 0).sum())
        register_case(case, framer)
        nifti_folder.write_case(case, a.out)
        folds[case.case_id] = 0 if seed in val else 1
        print(f"[{i + 1}/{len(all_seeds)}] {case.case_id} ICAC {case.truth['total_mm3']:.1f} mm3, "
              f"{raw_icac} raw -> {int((case.label > 0).sum())} frame voxels ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    datalist = nifti_folder.build_datalist(a.out, folds=1, seed=0)
    for item in datalist["training"]:
        item["fold"] = folds.get(Path(item["image"]).name.split(".nii")[0], 0)
    write_datalist_json(datalist, f"{a.out}/datalist.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
