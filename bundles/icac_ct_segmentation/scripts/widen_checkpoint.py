"""Widen a trained ICAC FCN checkpoint to more feature maps per level, computing the same function.

The warm start of session 7 (``docs/training_log.md``, "Session 7"): the reduced-width weights
(``features`` [4, 8, 16], shipped as ``models/model_reduced_width.pt`` since 0.7.0) become a checkpoint of the paper's width [16, 32, 64] (Bortsova et al.,
MICCAI 2017, Fig. 1) whose output equals theirs (``ctbundles.networks.icac_fcn_widening``), so
fine-tuning at the paper's width starts from what the narrow network learned, not from scratch.

Usage (from the bundle folder)::

    python scripts/widen_checkpoint.py --ckpt models/model_reduced_width.pt --old_features 4 8 16 \
        --new_features 16 32 64 --out /tmp/icac7/wide_init.pt

The script checks on a random volume that the two networks agree (eval mode) before writing, and
writes the file atomically.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ctbundles.atomic_io import atomic_write
from ctbundles.networks.icac_fcn import ICACFCN
from ctbundles.networks.icac_fcn_widening import widen_icac_state_dict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="state dict of the narrow network")
    p.add_argument("--old_features", type=int, nargs=3, required=True)
    p.add_argument("--new_features", type=int, nargs=3, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the new channels' initialisation")
    a = p.parse_args(argv)
    state = torch.load(a.ckpt, map_location="cpu", weights_only=True)
    deep = any(k.startswith("heads.") for k in state)
    narrow = ICACFCN(features=a.old_features, deep_supervision=deep)
    try:
        narrow.load_state_dict(state)
    except RuntimeError as e:
        print(f"error: {a.ckpt} is not an ICACFCN checkpoint of features {a.old_features}: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    wide = ICACFCN(features=a.new_features, deep_supervision=deep)
    wide.load_state_dict(widen_icac_state_dict(state, a.old_features, wide))
    narrow.eval()
    wide.eval()
    x = torch.randn(1, 1, 97, 97, 41, generator=torch.Generator().manual_seed(a.seed))
    with torch.no_grad():
        diff = (narrow(x) - wide(x)).abs().max().item()
    if diff > 1e-4:
        print(f"error: the widened network differs from {a.ckpt} by {diff:.3g}", file=sys.stderr)
        return 1
    atomic_write(a.out, lambda tmp: torch.save(wide.state_dict(), tmp), inputs=[a.ckpt])
    print(f"{a.out}: features {a.old_features} -> {a.new_features}, max |difference| {diff:.2g}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
