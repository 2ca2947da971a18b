"""Patch-wise inference for valid-convolution networks (Bortsova et al., MICCAI 2017, Sec. 3).

"During testing, a network was applied on the images patch-wise. The output patches were tiled
and averaged (at locations of overlap) to yield a segmentation of a whole scan."

A valid-convolution network (``ICACFCN``) predicts a region smaller than its input patch, so
MONAI's ``SlidingWindowInferer`` (which expects an output the size of its input window) does not
apply. ``ValidTilingInferer`` pads the volume by the network's border, runs the patch on a grid of
positions whose output tiles cover every input voxel, averages overlapping outputs and returns a
prediction on the input grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

__all__ = ["ValidTilingInferer", "tile_starts"]


def tile_starts(n: int, out: int, step: int, multiple: int) -> list[int]:
    """Output-tile origins (in output = input voxels) covering ``[0, n)`` with tiles of ``out`` voxels.

    Origins are multiples of ``multiple`` and at most ``step`` apart; the last origin is the smallest
    multiple of ``multiple`` whose tile reaches ``n`` (it may reach past ``n``; the volume is padded).
    """
    if out < multiple:
        raise ValueError(f"output tile of {out} voxels is smaller than the grid period {multiple}")
    step = max(multiple, (min(step, out) // multiple) * multiple)
    last = max(0, math.ceil((n - out) / multiple) * multiple)
    starts = list(range(0, last, step)) + [last]
    return sorted(set(starts))


class ValidTilingInferer(Inferer):
    """Overlapping patch-wise inference that pads and stitches for a valid-convolution network.

    For each spatial axis with input size ``n``, patch size ``roi`` and network output ``out``
    (``geometry.output_size(roi)``), output tiles start at multiples of the network's grid period
    ``geometry.size_multiple`` (so that a tile computes exactly what a whole-volume pass would), at
    most ``out * (1 - overlap)`` apart; the input is padded by ``geometry.border_lo`` voxels before
    and by what the last tile needs after. Overlapping outputs are averaged; the result has the
    spatial size of ``inputs`` and, for a MetaTensor input, its metadata.

    Args:
        roi_size: input patch size (X, Y, Z); the paper: 178 x 178 x 98.
        geometry: an object with ``output_size(input_size)``, ``border_lo`` and ``size_multiple``
            (``ICACFCN``); None = read them from the network passed at call time.
        overlap: fraction of an output tile shared with its neighbour (0 <= overlap < 1).
        sw_batch_size: patches per network call.
        padding_mode: ``"constant"`` (with ``cval``), ``"replicate"`` or ``"reflect"``.
        cval: padding value for ``"constant"``.
        sw_device: device the network runs on (None: the device of ``inputs``).
        device: device of the stitched output (None: the device of ``inputs``).
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        geometry: Any = None,
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: str | torch.device | None = None,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        if len(roi_size) != 3:
            raise ValueError(f"roi_size must give 3 sizes, got {roi_size}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if padding_mode not in ("constant", "replicate", "reflect"):
            raise ValueError(f"padding_mode must be constant, replicate or reflect, got {padding_mode!r}")
        self.roi_size = tuple(int(r) for r in roi_size)
        self.geometry = geometry
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.padding_mode = padding_mode
        self.cval = float(cval)
        self.sw_device = sw_device
        self.device = device

    def plan(self, spatial: Sequence[int], geometry: Any = None):
        """Tile origins per axis and the padding (before, after) per axis for a volume of ``spatial``."""
        geo = geometry if geometry is not None else self.geometry
        if geo is None:
            raise ValueError("ValidTilingInferer needs the network geometry (output_size, border_lo, size_multiple)")
        out = geo.output_size(self.roi_size)
        lo = geo.border_lo
        mult = geo.size_multiple
        starts, pads = [], []
        for a in range(3):
            step = int(out[a] * (1.0 - self.overlap))
            s = tile_starts(int(spatial[a]), out[a], max(step, 1), int(mult[a]))
            starts.append(s)
            total = s[-1] + self.roi_size[a]  # padded length the last patch needs
            pads.append((int(lo[a]), total - int(lo[a]) - int(spatial[a])))
        return starts, pads, out

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.dim() != 5:
            raise ValueError(f"ValidTilingInferer expects (B, C, X, Y, Z) inputs, got shape {tuple(inputs.shape)}")
        geometry = self.geometry if self.geometry is not None else network
        spatial = tuple(inputs.shape[2:])
        starts, pads, out = self.plan(spatial, geometry)
        device = self.device if self.device is not None else inputs.device
        sw_device = self.sw_device if self.sw_device is not None else inputs.device
        x = torch.as_tensor(inputs).as_subclass(torch.Tensor) if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
        pad_arg = [p for a in (2, 1, 0) for p in pads[a]]  # F.pad wants the last axis first
        if self.padding_mode == "constant":
            xp = F.pad(x, pad_arg, mode="constant", value=self.cval)
        else:
            xp = F.pad(x, pad_arg, mode=self.padding_mode)
        origins = [(i, j, k) for i in starts[0] for j in starts[1] for k in starts[2]]
        padded_out = [starts[a][-1] + out[a] for a in range(3)]
        acc: torch.Tensor | None = None
        count = torch.zeros((1, 1, *padded_out), device=device)
        r = self.roi_size
        for b in range(0, len(origins), self.sw_batch_size):
            chunk = origins[b : b + self.sw_batch_size]
            patches = torch.cat([xp[:, :, i : i + r[0], j : j + r[1], k : k + r[2]] for i, j, k in chunk], dim=0)
            pred = network(patches.to(sw_device), *args, **kwargs)
            if pred.dim() == 6:  # a deeply supervised network left in training mode: main output only
                pred = pred[:, 0]
            if tuple(pred.shape[2:]) != tuple(out):
                raise ValueError(f"network output {tuple(pred.shape[2:])} differs from the geometry's {tuple(out)}")
            pred = pred.to(device)
            if acc is None:
                acc = torch.zeros((inputs.shape[0], pred.shape[1], *padded_out), dtype=pred.dtype, device=device)
            nb = inputs.shape[0]
            for t, (i, j, k) in enumerate(chunk):
                acc[:, :, i : i + out[0], j : j + out[1], k : k + out[2]] += pred[t * nb : (t + 1) * nb]
                count[:, :, i : i + out[0], j : j + out[1], k : k + out[2]] += 1
        assert acc is not None
        result = (acc / count)[:, :, : spatial[0], : spatial[1], : spatial[2]]
        if isinstance(inputs, torch.Tensor) and type(inputs) is not torch.Tensor:
            result, *_ = convert_to_dst_type(result, inputs, dtype=result.dtype, device=device)
        return result
