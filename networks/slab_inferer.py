"""Whole-volume 2.5D inference for slab networks such as DenseRAUnet (Ma and Zhang 2019, sections
2.3 and 2.5): every axial slice is segmented from the stack of the ``slab_size`` slices around it,
and the slices are batched, one forward pass per ``batch_size`` centre slices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from monai.data import MetaTensor
from monai.inferers import Inferer

from ctbundles.transforms.slab_sampling import slab_indices

__all__ = ["SlabInferer"]


class SlabInferer(Inferer):
    """MONAI inferer: (B, C, X, Y, Z) volume -> (B, out_channels, X, Y, Z) network outputs, the
    output at slice z coming from the (C * slab_size)-channel stack of slices z - 4 ... z + 4.

    Slices before the first and after the last are replicated (the edge handling used in
    training). ``batch_size`` centre slices go through the network in one forward pass. With
    ``in_plane_size`` each stack is resized (bilinear) to the network's training matrix and the
    outputs are resized back to the input grid, so the prediction is always on the input grid.
    The network runs on ``device`` (default: where its parameters are; a GPU when the bundle puts it
    there), the stitched output is kept on ``output_device`` (default: the input's device).

    Args:
        slab_size: number of stacked slices (9 in the paper).
        batch_size: centre slices per forward pass.
        in_plane_size: (X, Y) matrix the network expects, or ``None`` to use the input grid.
        device: device of the forward passes (default: the network's).
        output_device: device of the returned volume (default: the input's).
    """

    def __init__(
        self,
        slab_size: int = 9,
        batch_size: int = 16,
        in_plane_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        output_device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        slab_indices(0, 1, slab_size)  # validates slab_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.slab_size = int(slab_size)
        self.batch_size = int(batch_size)
        self.in_plane_size = None if in_plane_size is None else tuple(int(s) for s in in_plane_size)
        self.device = device
        self.output_device = output_device

    @staticmethod
    def _network_device(network: Callable) -> torch.device | None:
        params = getattr(network, "parameters", None)
        if params is None:
            return None
        for p in params():
            return p.device
        return None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim != 5:
            raise ValueError(f"SlabInferer expects (B, C, X, Y, Z) volumes, got shape {tuple(inputs.shape)}")
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        device = torch.device(self.device) if self.device is not None else self._network_device(network)
        device = device if device is not None else x.device
        out_device = torch.device(self.output_device) if self.output_device is not None else x.device
        b, c, nx, ny, nz = x.shape
        # all slab index lists at once: (Z, slab_size), replicate edges
        idx = torch.as_tensor([slab_indices(z, nz, self.slab_size) for z in range(nz)], device=x.device)
        # the stitched output is allocated once and filled batch by batch: no list of chunks and no
        # concatenated copy, so peak memory is one output volume (a 480-slice chest CT: 1 GB less)
        result: torch.Tensor | None = None
        for i in range(b):
            vol = x[i]  # (C, X, Y, Z)
            for start in range(0, nz, self.batch_size):
                sel = idx[start : start + self.batch_size]  # (n, slab)
                lo, hi = int(sel.min()), int(sel.max())
                # one contiguous, slice-major copy of the slices this batch needs, then cheap indexing
                block = vol[..., lo : hi + 1].permute(3, 0, 1, 2).to(device=device, dtype=torch.float32)
                stack = block.contiguous()[(sel - lo).to(device)]  # (n, slab, C, X, Y)
                stack = stack.transpose(1, 2).reshape(sel.shape[0], c * self.slab_size, nx, ny)
                if self.in_plane_size is not None and tuple(stack.shape[-2:]) != self.in_plane_size:
                    stack = F.interpolate(stack, size=self.in_plane_size, mode="bilinear", align_corners=False)
                pred = network(stack, *args, **kwargs)
                if tuple(pred.shape[-2:]) != (nx, ny):
                    pred = F.interpolate(pred, size=(nx, ny), mode="bilinear", align_corners=False)
                if result is None:
                    result = torch.empty((b, pred.shape[1], nx, ny, nz), dtype=pred.dtype, device=out_device)
                result[i, ..., start : start + sel.shape[0]] = pred.permute(1, 2, 3, 0)  # (out, X, Y, n)
        if isinstance(inputs, MetaTensor):
            return MetaTensor(result, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return result
