"""The whole orCaScore cascade as one MONAI inferer (Araújo et al., Sect. 3.2, Fig. 1).

``network`` (the one a MONAI bundle / MONAI Label passes to the inferer) is the calcification
network of stage 2; the heart-ROI network (stage 1) and the false-positive network (stage 3) are held
by the inferer. Input: histogram-matched, intensity-scaled volumes ``(B, 1, X, Y, Z)``; every stage
works on 2D axial slices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import convert_to_dst_type, convert_to_tensor
from scipy import ndimage

from ctbundles.errors import CTInputError
from ctbundles.transforms.orcascore_cascade import (
    component_crop_boxes,
    extract_crops,
    heart_roi_box,
    paste_crops,
    widen_range,
)
from ctbundles.switches import require_bool

__all__ = ["OrcaScoreCascadeInferer", "calcium_labels", "load_stage_weights"]


def load_stage_weights(network: nn.Module, path: str | None, device: torch.device | str | None = None) -> nn.Module:
    """``network`` with the weights of a cascade stage loaded from ``path`` (strict), moved to ``device``.

    Stages 1 and 3 live inside the inferer, so their weights are loaded where the config builds the
    networks (``roi_network``, ``fp_network``), not by ``CheckpointLoader`` handlers: MONAI Label's
    bundle tasks build ``network_def`` and load ``models/model.pt`` themselves but run no handlers,
    and a handler-only load would leave stages 1 and 3 with random weights there. ``path`` may hold
    a ``CheckpointSaver`` dict (``{"model": state_dict}``) or a bare state dict; ``None`` means the
    stage is switched off and the network is returned untrained.
    """
    if path is not None:
        if not os.path.isfile(path):
            raise CTInputError(f"{path}: cascade stage weights not found (train the stage or restore the file shipped in models/)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CTInputError(f"{path}: weights do not fit the configured network ({str(e).splitlines()[0]})") from None
    return network.to(device) if device is not None else network


def calcium_labels(probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Label map ``(N, ...)`` from softmax probabilities ``(N, K, ...)`` (channel 0 = background).

    ``threshold`` ``None``: the argmax. Otherwise class ``1 + argmax(probs[:, 1:])`` where
    ``1 - probs[:, 0] > threshold``, else 0 (with ``K = 2``: ``p(calcium) > threshold``).
    """
    if threshold is None:
        return probs.argmax(1)
    artery = probs[:, 1:].argmax(1) + 1
    return torch.where(1.0 - probs[:, 0] > threshold, artery, torch.zeros_like(artery))


def _run_slices(net: nn.Module, slices: torch.Tensor, batch: int) -> torch.Tensor:
    """``net`` over ``(N, C, h, w)`` in chunks of ``batch``; returns softmax probabilities."""
    outs = [torch.softmax(net(slices[i : i + batch]), dim=1) for i in range(0, slices.shape[0], batch)]
    return torch.cat(outs) if outs else slices.new_zeros((0,))


class OrcaScoreCascadeInferer(Inferer):
    """Heart ROI -> calcification segmentation -> false-positive removal (Araújo et al., Sects. 3.2.1-3.2.3).

    For every volume of the batch:

    1. ``roi_network`` segments the heart on every axial slice; the patient's ROI is the bounding box
       of the OR of all slice masks after an opening with a ``opening_size`` x ``opening_size``
       rectangle (:func:`~ctbundles.transforms.orcascore_cascade.heart_roi_box`); without any heart,
       the whole slice is used. The box is widened by ``roi_box_margin`` pixels on each side (clipped to
       the slice), then to ``min_roi_size`` pixels at least.
    2. ``network`` (stage 2) segments calcium on every slice of the ROI crop; outside the ROI the
       output is background.
    3. When ``fp_network`` is given and ``use_fp_stage`` is true, every 2D component of the stage-2
       foreground gets a ``crop_size`` x ``crop_size`` window of the input slice; ``fp_network``
       keeps or removes calcium in each window, the windows' masks are pasted back (OR), and stage-2
       voxels outside the pasted mask become background. The artery class of a kept voxel is stage 2's.
       Two options beyond the paper (both off by default): ``fp_views="both"`` runs stage 3 on two views
       of each window and averages its softmax, and ``fp_whole_lesions`` keeps or removes whole 3D lesions.

    All networks are put in eval mode. Returns a float one-hot tensor ``(B, n_classes, X, Y, Z)`` (``n_classes`` = stage 2's outputs), so
    ``AsDiscreted(argmax=True)`` gives the label map. The 130 HU rule is applied after this, on HU.

    Args:
        roi_network: stage-1 heart network (2D, 1 channel in; output channel 1 = heart, or 1 channel + sigmoid).
        fp_network: stage-3 network (2D, 1 channel in, 2 channels out), or ``None`` to skip stage 3.
        opening_size: opening element side for the heart ROI (7).
        roi_box_margin: pixels added on each side of the stage-1 bounding box before the crop. 0 is the
            paper (Sect. 3.2.1: the crop is the bounding box). A margin gives stage 2 context around
            calcium on the heart's border (the RCA in the right atrioventricular groove), as the
            training crops have (the reference calcium's box + ``roi_margin``); with the shipped weights it
            lowered the synthetic validation lesion F1 (the bundle's training log, Session 11).
        min_roi_size: smallest ROI side in pixels (32, one EfficientNet down-sampling step of 32).
        crop_size: stage-3 window side (96).
        slice_batch_size: slices per forward pass of stages 1 and 2 (memory knob).
        fp_batch_size: windows per forward pass of stage 3.
        use_fp_stage: switch for the paper's Table 5 (with / without false-positive removal).
        divisible: the ROI crop is zero-padded to a multiple of this before stage 2 (32: the five
            down-samplings of the EfficientNet / ResNet encoders); the padding is cut off the output.
        roi_size: when given, stage 2 runs as a sliding window of this size over the ROI crop (MONAI
            ``sliding_window_inference``, overlap 0.25), i.e. on inputs of the size it was trained on:
            EfficientNet's squeeze-and-excitation blocks pool over the whole input, so a network trained
            on patches changes its output on a larger crop. ``None``: the whole (padded) crop at once.
        calcium_threshold: ``None`` (the paper): a voxel's class is stage 2's argmax. A number ``t``: a voxel
            is calcium when its summed artery probability ``1 - p(background)`` exceeds ``t``, and its
            artery is the most probable one. A class-weighted focal loss (``focal_alpha``) moves the
            operating point away from the argmax; ``t`` is chosen on the validation fold.
        fp_threshold: the same for stage 3: ``None`` keeps a voxel where stage 3's argmax is calcium, a
            number keeps it where stage 3's p(calcium) exceeds it.
        calcium_input_transform: ``None``: all three stages see the inferer's input. A callable (e.g. a
            MONAI ``Compose``) on a ``(1, X, Y, Z)`` volume: stages 2 and 3 see its output while stage 1
            sees the input as given, for stages trained on differently prepared images (the shipped
            stage 1 was trained without histogram matching, stages 2-3 with it: ``inference.json``
            gives stage 1 the unmatched scan and matches the volume here for stages 2-3).
        fp_views: ``"calcium_input"`` (the paper): stage 3 sees the volume stage 2 sees. ``"both"``: stage 3
            also sees the inferer's input (with ``calcium_input_transform`` = histogram matching: the
            unmatched scan) and the two softmax outputs are averaged per window. The matching darkens faint
            lesions (the bundle's training log, Sessions 11 and 14); the unmatched view keeps them visible.
        fp_whole_lesions: ``False`` (the paper): stage 3 keeps or removes voxels, so it can cut a lesion.
            ``True``: a 3D lesion (6-connected component of the stage-2 foreground) is kept whole when stage 3
            keeps any voxel of it, and removed whole otherwise; stage 3 then decides per lesion, the unit
            the orCaScore protocol counts.
    """

    def __init__(
        self,
        roi_network: nn.Module,
        fp_network: nn.Module | None = None,
        opening_size: int = 7,
        roi_box_margin: int = 0,
        min_roi_size: int = 32,
        crop_size: int = 96,
        slice_batch_size: int = 4,
        fp_batch_size: int = 24,
        use_fp_stage: bool = True,
        divisible: int = 32,
        roi_size: Sequence[int] | None = None,
        calcium_threshold: float | None = None,
        fp_threshold: float | None = None,
        calcium_input_transform: Callable | None = None,
        fp_views: str = "calcium_input",
        fp_whole_lesions: bool = False,
    ) -> None:
        super().__init__()
        if fp_views not in ("calcium_input", "both"):
            raise ValueError(f"fp_views must be 'calcium_input' or 'both', got {fp_views!r}")
        self.fp_views = fp_views
        self.fp_whole_lesions = require_bool(fp_whole_lesions, "fp_whole_lesions", "OrcaScoreCascadeInferer")
        for name, value in (("calcium_threshold", calcium_threshold), ("fp_threshold", fp_threshold)):
            if value is not None and not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1) or None, got {value}")
        self.calcium_threshold = None if calcium_threshold is None else float(calcium_threshold)
        self.fp_threshold = None if fp_threshold is None else float(fp_threshold)
        self.roi_network = roi_network
        self.fp_network = fp_network
        self.opening_size = opening_size
        try:
            self.roi_box_margin = int(roi_box_margin)
        except (TypeError, ValueError):
            self.roi_box_margin = -1
        if self.roi_box_margin < 0 or self.roi_box_margin != float(roi_box_margin):
            raise ValueError(f"roi_box_margin must be a whole number of pixels >= 0, got {roi_box_margin!r}")
        self.min_roi_size = min_roi_size
        self.crop_size = crop_size
        self.slice_batch_size = slice_batch_size
        self.fp_batch_size = fp_batch_size
        self.use_fp_stage = require_bool(use_fp_stage, "use_fp_stage", "OrcaScoreCascadeInferer")
        self.divisible = max(int(divisible), 1)
        self.roi_size = None if roi_size is None else tuple(int(r) for r in roi_size)
        self.calcium_input_transform = calcium_input_transform
        self.last_roi_boxes: list = []

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"the cascade expects (B, 1, X, Y, Z) volumes, got shape {tuple(inputs.shape)}")
        for net in (network, self.roi_network, self.fp_network):
            if net is not None:
                net.eval()
        outs, self.last_roi_boxes = [], []
        for vol in inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs:
            out, box = self._one(vol, network)
            outs.append(out)
            self.last_roi_boxes.append(box)
        # the output keeps the input's type and metadata (MetaTensor), so SaveImaged writes it on the input grid
        return convert_to_dst_type(torch.stack(outs), inputs)[0]

    def heart_masks(self, vol: torch.Tensor) -> np.ndarray:
        """Stage 1: ``(X, Y, Z)`` heart masks of the slices of ``vol`` ``(1, X, Y, Z)``."""
        slices = vol.permute(3, 0, 1, 2)  # (Z, 1, X, Y)
        logits = torch.cat([self.roi_network(slices[i : i + self.slice_batch_size]) for i in range(0, slices.shape[0], self.slice_batch_size)])
        fg = logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(1) == 1
        return fg.permute(1, 2, 0).cpu().numpy()

    def _one(self, vol: torch.Tensor, network: nn.Module):
        label, box, calcium_vol, n_classes = self.stage2_labels(vol, network)
        if self.use_fp_stage and self.fp_network is not None:
            # without calcium_input_transform the two views are one volume: stage 3 runs on it once
            views = [calcium_vol] if self.fp_views == "calcium_input" or calcium_vol is vol else [calcium_vol, vol]
            label = label * torch.as_tensor(self.keep_mask(views, label > 0), device=label.device)
        onehot = torch.nn.functional.one_hot(label, n_classes).permute(3, 0, 1, 2).to(vol.dtype)
        return onehot, box

    def stage2_labels(self, vol: torch.Tensor, network: nn.Module):
        """Stages 1-2 of one volume ``(1, X, Y, Z)`` (the inferer's input, i.e. stage 1's).

        Returns the stage-2 label map ``(X, Y, Z)`` (long; 0 outside the stage-1 ROI box, no 130 HU rule),
        the ROI box ``[[x0, x1], [y0, y1]]``, the volume stages 2-3 see (after ``calcium_input_transform``)
        and the number of stage-2 classes. The foreground of the label map is exactly what stage 3 gets in
        :meth:`__call__`, which is why :class:`~ctbundles.transforms.orcascore_cascade.PredictedCandidatesd`
        uses it for stage 3's training candidates.
        """
        _, nx, ny, nz = vol.shape
        box = heart_roi_box(self.heart_masks(vol), self.opening_size, margin=self.roi_box_margin)
        if box is None:
            box = ((0, nx), (0, ny))
        box = tuple(widen_range(lo, hi, self.min_roi_size, n) for (lo, hi), n in zip(box, (nx, ny)))
        (x0, x1), (y0, y1) = box
        if self.calcium_input_transform is not None:  # stages 2-3 see their own input (e.g. histogram-matched)
            vol = convert_to_tensor(self.calcium_input_transform(vol), dtype=vol.dtype, device=vol.device, track_meta=False)
        crop = vol[:, x0:x1, y0:y1].permute(3, 0, 1, 2)  # (Z, 1, h, w)
        # encoder U-Nets halve the size 5 times: pad the crop (value 0 = the lowest intensity) to a multiple
        # of ``divisible`` so the output grid matches the input, then cut the padding off again
        h, w = crop.shape[-2:]
        if self.roi_size is not None:  # windows of the training patch size over the ROI crop
            probs = torch.softmax(
                sliding_window_inference(crop, self.roi_size, self.slice_batch_size, network, overlap=0.25), dim=1
            )
        else:
            pad_h, pad_w = (-h) % self.divisible, (-w) % self.divisible
            crop = torch.nn.functional.pad(crop, (0, pad_w, 0, pad_h))
            probs = _run_slices(network, crop, self.slice_batch_size)[..., :h, :w]  # (Z, K, h, w)
        label = torch.zeros((nx, ny, nz), dtype=torch.long, device=vol.device)
        label[x0:x1, y0:y1] = calcium_labels(probs, self.calcium_threshold).permute(1, 2, 0)
        return label, [[x0, x1], [y0, y1]], vol, probs.shape[1]

    def keep_mask(self, views: torch.Tensor | Sequence[torch.Tensor], fg: torch.Tensor) -> np.ndarray:
        """Stage 3: ``(X, Y, Z)`` mask of the stage-2 foreground ``fg`` that the false-positive network keeps.

        ``views``: one ``(1, X, Y, Z)`` volume, or several whose stage-3 softmax outputs are averaged per window
        (``fp_views``). With ``fp_whole_lesions`` the kept voxels grow back to their whole 3D lesions.
        """
        views = [views] if isinstance(views, torch.Tensor) else list(views)
        fg_np = fg.cpu().numpy()
        keep = np.zeros(fg_np.shape, bool)
        jobs = [(z, component_crop_boxes(fg_np[:, :, z], self.crop_size)) for z in range(fg_np.shape[2])]
        jobs = [(z, c) for z, c in jobs if c]
        if not jobs:
            return keep
        probs = 0
        for view in views:
            img = view[0].cpu().numpy()
            crops = np.concatenate([extract_crops(img[:, :, z], c, self.crop_size) for z, c in jobs])
            x = torch.as_tensor(crops[:, None], dtype=view.dtype, device=view.device)
            probs = probs + _run_slices(self.fp_network, x, self.fp_batch_size) / len(views)
        kept = (calcium_labels(probs, self.fp_threshold) > 0).cpu().numpy().astype(np.float32)
        start = 0
        for z, corners in jobs:
            pasted = paste_crops(kept[start : start + len(corners)], corners, fg_np.shape[:2])
            keep[:, :, z] = pasted > 0
            start += len(corners)
        keep &= fg_np
        if self.fp_whole_lesions and keep.any():
            # grow the kept voxels through the 6-connected stage-2 foreground: whole lesions in or out
            keep = ndimage.binary_propagation(keep, structure=ndimage.generate_binary_structure(3, 1), mask=fg_np)
        return keep
