"""`ctbundles orcascore-reference`: select and store the histogram-matching reference of the orCaScore
cascade bundle (Araújo et al., Sect. 3.2.1): the training slice whose heart is segmented best (F1)
by an initial heart-ROI segmentation.

Also runnable as ``python -m ctbundles.commands.orcascore_reference``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ctbundles.atomic_io import atomic_write, atomic_write_json
from ctbundles.errors import CTInputError

DESCRIPTION = """\
Run an initial heart segmentation (a stage-1 OrcaScoreHeartUNet checkpoint, applied slice by slice
to scans WITHOUT histogram matching) over the training items of a datalist whose items hold
"image" (CT) and "label" (heart mask), compute each slice's F1 against the heart mask, and store
the best slice (HU, float32) as a .npy file (default: the bundle's models/histogram_reference.npy)
with a .json record of where it came from."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "orcascore-reference",
        help="select the orCaScore cascade's histogram reference slice (best initial heart F1)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _arguments(parser):
    parser.add_argument("--datalist", required=True, help="decathlon-style JSON with items {image, label = heart mask}")
    parser.add_argument("--key", default="training", help="datalist key of the items (default training)")
    parser.add_argument("--checkpoint", required=True, help="stage-1 heart network state dict (model_roi.pt)")
    parser.add_argument("--out", required=True, help="output .npy (a .json record is written beside it)")
    parser.add_argument("--intensity-min", type=float, default=-1000.0, help="HU mapped to 0 before the network (default -1000)")
    parser.add_argument("--intensity-max", type=float, default=1500.0, help="HU mapped to 1 before the network (default 1500)")
    parser.add_argument("--features", default="64,128,256,512,1024,64", help="stage-1 filter counts (default the paper's)")
    parser.add_argument("--max-cases", type=int, default=0, help="use at most this many items (0 = all)")


def heart_segmenter(checkpoint, intensity_min=-1000.0, intensity_max=1500.0, features=(64, 128, 256, 512, 1024, 64)):
    """``segment(image_hu (X, Y, Z)) -> (X, Y, Z)`` heart masks from a stage-1 checkpoint, slice by slice."""
    import torch

    from ctbundles.networks.orcascore_heart_unet import OrcaScoreHeartUNet

    net = OrcaScoreHeartUNet(features=tuple(features))
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CTInputError(f"{checkpoint}: cannot read the stage-1 checkpoint ({err})") from err
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    net.eval()

    def segment(image_hu):
        x = np.clip((np.asarray(image_hu, np.float32) - intensity_min) / (intensity_max - intensity_min), 0.0, 1.0)
        slices = torch.as_tensor(np.moveaxis(x, 2, 0)[:, None])
        with torch.no_grad():
            masks = torch.cat([net(slices[i : i + 4]).argmax(1) for i in range(0, slices.shape[0], 4)])
        return np.moveaxis(masks.numpy() == 1, 0, 2)

    return segment


def run(args) -> int:
    from monai.data import load_decathlon_datalist

    from ctbundles.transforms.ct_io import load_ct, load_label
    from ctbundles.transforms.orcascore_cascade import select_histogram_reference

    if not Path(args.datalist).is_file():
        raise CTInputError(f"{args.datalist}: datalist does not exist")
    items = load_decathlon_datalist(args.datalist, True, args.key)
    if args.max_cases:
        items = items[: args.max_cases]
    segment = heart_segmenter(args.checkpoint, args.intensity_min, args.intensity_max, [int(v) for v in args.features.split(",")])

    def cases():
        for item in items:
            image = load_ct(item["image"])
            heart = load_label(item["label"], like=image)
            yield item["image"], np.asarray(image), np.asarray(heart)

    best = select_histogram_reference(cases(), segment)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: np.save(tmp, best["reference"]), suffix=".npy")
    record = {k: v for k, v in best.items() if k != "reference"}
    record.update({"shape": list(best["reference"].shape), "datalist": str(args.datalist), "checkpoint": str(args.checkpoint),
                   "method": "Araujo et al. Sect. 3.2.1: training slice with the best F1 of an initial heart segmentation"})
    atomic_write_json(out.with_suffix(".json"), record)
    print(f"histogram reference: slice {best['slice']} of {best['case']} (F1 {best['f1']:.3f} among {best['n_slices']} slices) -> {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctbundles.commands.orcascore_reference", description=DESCRIPTION)
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CTInputError as err:
        print(f"orcascore-reference: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
