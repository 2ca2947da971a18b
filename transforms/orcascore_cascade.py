"""Pre- and post-processing of the orCaScore cascade (Araújo et al., Sects. 3.2.1-3.2.3).

* :class:`HistogramMatch` / :class:`HistogramMatchd`: every scan matched to one reference slice
  (Sect. 3.2.1, scikit-image ``match_histograms``).
* :func:`heart_roi_box`, :class:`HeartROICropd`, :class:`HeartROIPasted`: OR of the heart masks of all
  slices of the patient, opening with a 7 x 7 rectangle, bounding box, crop, and the inverse paste-back
  (Sect. 3.2.1, Figs. 3-5).
* :func:`component_crop_boxes`, :func:`extract_crops`, :func:`paste_crops`,
  :class:`FalsePositiveCropsd`: a 96 x 96 window around the bounding box of every predicted 2D
  component, and the windows' outputs placed back into the full slice (Sect. 3.2.3, Figs. 6-7).
* :class:`PredictedCandidatesd`: the false-positive stage's training candidates, the calcification
  network's predicted voxels and the reference calcium (Sect. 3.1).
* :func:`lesion_sampling_weights`, :class:`LesionSamplingWeightsd`: patch-centre weights that give every
  reference lesion (not every voxel) the same chance, per artery, plus bright non-calcium voxels (for
  MONAI ``RandWeightedCropd``; a training-sampling choice of this project, not the paper's).
* :func:`select_histogram_reference`: the histogram reference, the training slice with the best F1
  in an initial heart segmentation (Sect. 3.2.1).

Arrays are channel-first ``(C, X, Y, Z)`` (axis 3 = axial slices) in the dictionary transforms, as
MONAI pipelines hold them after ``EnsureChannelFirstd``; the pure functions take plain 2D/3D arrays.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage
from skimage.exposure import match_histograms

from ctbundles.errors import CTInputError

__all__ = [
    "load_histogram_reference",
    "HistogramMatch",
    "HistogramMatchd",
    "heart_roi_box",
    "crop_to_box",
    "paste_box",
    "widen_range",
    "HeartROICropd",
    "HeartROIPasted",
    "PredictedHeartMaskd",
    "component_crop_boxes",
    "extract_crops",
    "paste_crops",
    "FalsePositiveCropsd",
    "PredictedCandidatesd",
    "lesion_sampling_weights",
    "fold_to_patch_centres",
    "LesionSamplingWeightsd",
    "slice_f1",
    "select_histogram_reference",
]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _like(array: np.ndarray, template):
    """``array`` as the type of ``template`` (MetaTensor keeps the template's metadata)."""
    if isinstance(template, MetaTensor):
        out = MetaTensor(torch.as_tensor(array), meta=dict(template.meta))
        return out
    if isinstance(template, torch.Tensor):
        return torch.as_tensor(array, device=template.device)
    return array


# ------------------------------------------------------------------------------ histogram matching
def load_histogram_reference(reference) -> np.ndarray:
    """The reference image of the histogram matching: an array, or a ``.npy`` / ``.nii(.gz)`` file."""
    if not isinstance(reference, (str, Path)):
        return _numpy(reference).astype(np.float32)
    path = Path(reference)
    if not path.is_file():
        raise CTInputError(f"{path}: histogram reference file does not exist (make one with `python -m ctbundles.commands.orcascore_reference`)")
    try:
        if path.suffix == ".npy":
            arr = np.load(path)
        else:
            import nibabel as nib

            arr = np.asarray(nib.load(str(path)).dataobj)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad reference file
        raise CTInputError(f"{path}: cannot read the histogram reference ({err})") from err
    arr = np.asarray(arr, dtype=np.float32)
    if arr.size < 2 or not np.isfinite(arr).all():
        raise CTInputError(f"{path}: histogram reference must be a finite image with at least 2 pixels, got shape {arr.shape}")
    return arr


class HistogramMatch(Transform):
    """Match the grey-level histogram of a whole scan to a reference slice (Araújo et al., Sect. 3.2.1).

    The paper matches every scan to the patient slice that had the best F1-score in an initial ROI
    segmentation (see :mod:`ctbundles.commands.orcascore_reference`). The cumulative histogram of all
    voxels of the input is mapped onto that of the reference (scikit-image ``match_histograms``,
    Gonzalez & Woods). The output has the reference's value range; keep a copy of the HU image
    (``CopyItemsd``) for the 130 HU threshold and the scoring.

    Args:
        reference: the reference image (array) or a ``.npy`` / ``.nii(.gz)`` file holding it; ``None``
            switches the matching off (the paper's Table 2 ablation, "without histogram matching").
    """

    def __init__(self, reference) -> None:
        self.reference = None if reference is None else load_histogram_reference(reference)

    def __call__(self, img):
        if self.reference is None:
            return img
        arr = _numpy(img).astype(np.float32)
        # the whole scan against the reference slice: both flattened (match_histograms needs equal ndim)
        matched = match_histograms(arr.ravel(), self.reference.ravel()).reshape(arr.shape).astype(np.float32)
        return _like(matched, img)


class HistogramMatchd(MapTransform):
    """Dictionary version of :class:`HistogramMatch`."""

    def __init__(self, keys: KeysCollection, reference, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.matcher = HistogramMatch(reference)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.matcher(d[key])
        return d


# ------------------------------------------------------------------------------------- heart ROI
def heart_roi_box(slice_masks, opening_size: int = 7, margin: int = 0) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """In-plane bounding box of the heart ROI of one patient (Araújo et al., Sect. 3.2.1, Figs. 3-5).

    1. OR of the masks of all slices: a pixel is in the ROI when at least one slice's mask has it.
    2. Morphological opening with a ``opening_size`` x ``opening_size`` rectangle (7 x 7 in the
       paper) removes small objects and thin lines.
    3. The bounding box of what remains, widened by ``margin`` pixels and clipped to the image.

    Args:
        slice_masks: ``(X, Y, Z)`` (or ``(C, X, Y, Z)``, channels ORed too) binary masks, or one 2D mask.
        opening_size: side of the square structuring element (pixels).
        margin: pixels added on each side of the box.

    Returns:
        ``((x0, x1), (y0, y1))`` half-open ranges, or ``None`` when nothing survives the opening.
    """
    m = _numpy(slice_masks) > 0
    if m.ndim == 4:
        m = m.any(axis=0)
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.ndim != 2:
        raise ValueError(f"slice masks must be 2D, (X, Y, Z) or (C, X, Y, Z), got shape {m.shape}")
    if opening_size > 1:
        m = ndimage.binary_opening(m, structure=np.ones((opening_size, opening_size), bool))
    if not m.any():
        return None
    xs, ys = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    x0, x1 = max(int(xs[0]) - margin, 0), min(int(xs[-1]) + 1 + margin, m.shape[0])
    y0, y1 = max(int(ys[0]) - margin, 0), min(int(ys[-1]) + 1 + margin, m.shape[1])
    return (x0, x1), (y0, y1)


def crop_to_box(array, box):
    """Crop axes 0 and 1 of ``array`` (``(X, Y, ...)``) to ``box`` = ``((x0, x1), (y0, y1))``
    (channel-first volumes: :class:`HeartROICropd`)."""
    (x0, x1), (y0, y1) = box
    return array[x0:x1, y0:y1]


def paste_box(cropped, box, shape: Sequence[int], fill=0):
    """Inverse of :func:`crop_to_box`: ``cropped`` placed at ``box`` in a new array of ``shape`` filled with ``fill``."""
    cropped = _numpy(cropped)
    out = np.full(tuple(shape), fill, dtype=cropped.dtype)
    (x0, x1), (y0, y1) = box
    out[x0:x1, y0:y1] = cropped
    return out


class HeartROICropd(MapTransform):
    """Crop channel-first volumes to the heart ROI of :func:`heart_roi_box` (Araújo et al., Sect. 3.2.1).

    Args:
        keys: channel-first ``(C, X, Y, Z)`` items cropped in plane (all slices kept).
        mask_key: the stage-1 heart masks (per slice) the box is computed from.
        box_key: where the box ``[[x0, x1], [y0, y1]]`` and the original in-plane size are stored,
            for :class:`HeartROIPasted`.
        opening_size: side of the square opening element (7 in the paper).
        margin: pixels added around the box.
        min_size: the box is widened (centred, clipped to the image) to at least this many pixels per
            axis, so encoders with 32x down-sampling get a usable input (0 = off).
        allow_missing_keys: don't raise for missing keys.

    When no heart survives the opening, the whole slice is used and ``box_key`` records ``"empty": True``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "roi_mask",
        box_key: str = "roi_box",
        opening_size: int = 7,
        margin: int = 0,
        min_size: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.box_key = mask_key, box_key
        self.opening_size, self.margin, self.min_size = opening_size, margin, min_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = _numpy(d[self.mask_key])
        size = mask.shape[-3:-1] if mask.ndim >= 3 else mask.shape
        box = heart_roi_box(mask, self.opening_size, self.margin)
        empty = box is None
        if empty:
            box = ((0, int(size[0])), (0, int(size[1])))
        box = tuple(widen_range(lo, hi, self.min_size, n) for (lo, hi), n in zip(box, size))
        (x0, x1), (y0, y1) = box
        for key in self.key_iterator(d):
            d[key] = d[key][:, x0:x1, y0:y1]
        d[self.box_key] = {"box": [[x0, x1], [y0, y1]], "size": [int(size[0]), int(size[1])], "empty": empty}
        return d


def widen_range(lo: int, hi: int, min_size: int, n: int) -> tuple[int, int]:
    """``[lo, hi)`` widened about its centre to ``min_size`` (at most ``n``), shifted to stay inside ``[0, n)``."""
    if hi - lo >= min_size or min_size <= 0:
        return int(lo), int(hi)
    target = min(min_size, n)
    lo = max(min(lo - (target - (hi - lo)) // 2, n - target), 0)
    return int(lo), int(lo + target)


class PredictedHeartMaskd(MapTransform):
    """Stage-1 heart masks of the cascade, as a training item (Araújo et al., Sect. 3.2.1-3.2.2).

    The paper trains and runs the calcification network on the ROI that stage 1 extracts ("the input
    image in this stage is only the ROI extracted in the previous stage"). With this transform before
    :class:`HeartROICropd` (``mask_key`` = ``mask_key`` here, ``margin`` 0), stage 2 is trained on the
    crop inference gives it, so calcium on the heart's border (the right coronary artery in the
    atrioventricular groove) sits at the crop's edge in training as it does at inference.

    Args:
        keys: stage 1's input ``(1, X, Y, Z)``: the scan scaled as ``inference.json`` scales it (no
            histogram matching).
        cascade: an :class:`~ctbundles.networks.orcascore_cascade.OrcaScoreCascadeInferer` whose
            ``roi_network`` holds the trained stage-1 weights; only its ``heart_masks`` is used.
        mask_key: where the ``(1, X, Y, Z)`` boolean masks go.
    """

    def __init__(self, keys: KeysCollection, cascade: Any, mask_key: str = "roi_mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cascade, self.mask_key = cascade, mask_key

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.cascade.roi_network.eval()
        for key in self.key_iterator(d):
            vol = torch.as_tensor(_numpy(d[key]), dtype=torch.float32)
            if vol.ndim != 4 or vol.shape[0] != 1:
                raise ValueError(f"PredictedHeartMaskd: {key!r} must be a (1, X, Y, Z) volume, got shape {tuple(vol.shape)}")
            d[self.mask_key] = self.cascade.heart_masks(vol)[None]
        return d


class HeartROIPasted(MapTransform):
    """Inverse of :class:`HeartROICropd`: channel-first items pasted back into the full slice (zeros outside).

    Args:
        keys: items to paste back, ``(C, x1 - x0, y1 - y0, Z)``.
        box_key: the record :class:`HeartROICropd` wrote.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, box_key: str = "roi_box", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rec = d[self.box_key]
        (x0, x1), (y0, y1) = rec["box"]
        for key in self.key_iterator(d):
            src = d[key]
            shape = list(src.shape)
            shape[1:3] = rec["size"]
            if isinstance(src, torch.Tensor):
                out = torch.zeros(shape, dtype=src.dtype, device=src.device)
                out[:, x0:x1, y0:y1] = src
                out = MetaTensor(out, meta=dict(src.meta)) if isinstance(src, MetaTensor) else out
            else:
                out = np.zeros(shape, dtype=np.asarray(src).dtype)
                out[:, x0:x1, y0:y1] = src
            d[key] = out
        return d


# ------------------------------------------------------------------------- false-positive crops
def component_crop_boxes(mask2d, size: int = 96, connectivity: int = 2) -> list[tuple[int, int]]:
    """Top-left corners of the ``size`` x ``size`` windows around every 2D component (Sect. 3.2.3, Fig. 6).

    Each component's bounding box is expanded to a ``size`` x ``size`` window centred on the box and
    shifted inside the image when it would cross the border. A component wider than ``size`` gets
    several windows tiling its box. Windows are returned in component order (scipy labelling),
    duplicates removed. An image smaller than ``size`` gives corner 0 (see :func:`extract_crops`).

    Args:
        mask2d: 2D binary prediction of one slice.
        size: window side (96 in the paper).
        connectivity: 1 = 4-connected, 2 = 8-connected components.
    """
    m = _numpy(mask2d) > 0
    if m.ndim != 2:
        raise ValueError(f"component_crop_boxes needs a 2D slice, got shape {m.shape}")
    labels, n = ndimage.label(m, structure=ndimage.generate_binary_structure(2, connectivity))
    corners: list[tuple[int, int]] = []
    for sl in ndimage.find_objects(labels):
        starts = []
        for axis_slice, n_axis in zip(sl, m.shape):
            lo, hi = axis_slice.start, axis_slice.stop
            if hi - lo <= size:
                first = [lo + (hi - lo) // 2 - size // 2]
            else:
                first = list(range(lo, hi - size, size)) + [hi - size]
            starts.append([int(min(max(s, 0), max(n_axis - size, 0))) for s in first])
        for sx in starts[0]:
            for sy in starts[1]:
                if (sx, sy) not in corners:
                    corners.append((sx, sy))
    return corners


def extract_crops(image2d, corners: Sequence[tuple[int, int]], size: int = 96, pad_value: float | None = None) -> np.ndarray:
    """``(N, size, size)`` windows of ``image2d`` at ``corners``; an image smaller than ``size`` is padded
    at its far side with ``pad_value`` (default: the image minimum)."""
    img = _numpy(image2d)
    if pad_value is None:
        pad_value = float(img.min()) if img.size else 0.0
    px, py = max(size - img.shape[0], 0), max(size - img.shape[1], 0)
    if px or py:
        img = np.pad(img, ((0, px), (0, py)), constant_values=pad_value)
    if not corners:
        return np.zeros((0, size, size), img.dtype)
    return np.stack([img[x : x + size, y : y + size] for x, y in corners])


def paste_crops(crops, corners: Sequence[tuple[int, int]], shape: Sequence[int], reduce: str = "max") -> np.ndarray:
    """Place the windows' outputs back into a slice of ``shape`` (Sect. 3.2.3, Fig. 7).

    Pixels outside every window are 0; where windows overlap, ``reduce`` = ``"max"`` keeps the largest
    value (for binary masks: a pixel is calcium if any window says so), ``"mean"`` averages.
    """
    crops = _numpy(crops).astype(np.float32)
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    if len(crops) != len(corners):
        raise ValueError(f"{len(crops)} crops but {len(corners)} corners")
    size = crops.shape[-1] if len(crops) else 0
    big = (max(shape[0], size), max(shape[1], size))
    out = np.full(big, -np.inf if reduce == "max" else 0.0, np.float32)
    count = np.zeros(big, np.int32)
    for crop, (x, y) in zip(crops, corners):
        window = out[x : x + size, y : y + size]
        if reduce == "max":
            np.maximum(window, crop, out=window)
        else:
            window += crop
        count[x : x + size, y : y + size] += 1
    if reduce == "mean":
        out = np.divide(out, count, out=np.zeros_like(out), where=count > 0)
    out[count == 0] = 0.0
    return out[: shape[0], : shape[1]]


class FalsePositiveCropsd(MapTransform):
    """Training samples of the false-positive stage: one 96 x 96 crop per candidate component per slice.

    For every axial slice of the channel-first volumes and every 2D component of ``candidate_key``
    (the calcification stage's prediction in the paper, Sect. 3.1), the window of
    :func:`component_crop_boxes` is cut from every key in ``keys``. Returns a list of dicts (a MONAI
    multi-sample transform), each ``(C, size, size)`` with ``crop_slice`` and ``crop_corner`` added.
    Slices without candidates give no sample; a volume without any candidate gives one window at the
    centre of the middle slice, so the dataset never yields an empty list.

    Args:
        keys: channel-first ``(C, X, Y, Z)`` items to crop (image, label...).
        candidate_key: ``(C, X, Y, Z)`` candidate mask whose components are cropped (>0 = candidate).
        size: window side (96).
        max_crops: at most this many crops per volume, chosen at random (0 = all).
    """

    def __init__(self, keys: KeysCollection, candidate_key: str = "candidates", size: int = 96, max_crops: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.candidate_key, self.size, self.max_crops = candidate_key, size, max_crops
        self.rng = np.random.default_rng(0)

    def set_random_state(self, seed: int | None = None, state=None):
        self.rng = np.random.default_rng(seed)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        cand = _numpy(d[self.candidate_key]) > 0
        cand = cand.any(axis=0) if cand.ndim == 4 else cand
        jobs = [(z, c) for z in range(cand.shape[2]) for c in component_crop_boxes(cand[:, :, z], self.size)]
        if not jobs:
            jobs = [(cand.shape[2] // 2, (max(cand.shape[0] // 2 - self.size // 2, 0), max(cand.shape[1] // 2 - self.size // 2, 0)))]
        if self.max_crops and len(jobs) > self.max_crops:
            jobs = [jobs[i] for i in sorted(self.rng.choice(len(jobs), self.max_crops, replace=False))]
        samples = []
        for z, corner in jobs:
            s = {k: v for k, v in d.items() if k not in self.keys and k != self.candidate_key}
            for key in self.key_iterator(d):
                arr = _numpy(d[key])
                crops = np.stack([extract_crops(arr[c, :, :, z], [corner], self.size)[0] for c in range(arr.shape[0])])
                s[key] = torch.as_tensor(crops)
            s["crop_slice"], s["crop_corner"] = int(z), [int(corner[0]), int(corner[1])]
            samples.append(s)
        return samples


class PredictedCandidatesd(MapTransform):
    """Training candidates of the false-positive stage from the calcification network (Araújo et al., Sect. 3.1).

    The paper's stage-3 data set is cut "from the predictions made in the calcification segmentation
    step, as well as ROIs from the masks": the windows of :class:`FalsePositiveCropsd` then sit on the
    stage-2 true and false positives the false-positive network must tell apart. ``network`` (stage 2,
    eval mode, no gradients) runs on every axial slice of ``image_key`` (the network's input: matched and
    scaled), as a sliding window of ``roi_size`` (the size it was trained on) when given; a voxel is a
    candidate when the argmax is not background and ``hu_key`` > ``threshold_hu``, or (``include_label``)
    when ``label_key`` > 0 and ``hu_key`` > ``threshold_hu``. Writes ``(1, X, Y, Z)`` float masks to ``keys``.

    With ``cascade`` (an :class:`~ctbundles.networks.orcascore_cascade.OrcaScoreCascadeInferer`, as
    ``inference.json`` builds it) the predicted part is instead exactly the stage-2 foreground the
    inferer hands to stage 3: stage 1 on ``cascade_input_key`` (the inferer's input, e.g. the scaled
    unmatched scan), stage 2 (``network``) on the ROI crop of the volume its ``calcium_input_transform``
    makes, at its ``calcium_threshold`` and ``roi_size``, without the 130 HU rule (inference applies it
    after stage 3, so stage 3's windows sit on these components); ``image_key``, ``roi_size`` and
    ``overlap`` are then unused. The reference calcium (``include_label``) is added as before.

    Args:
        keys: where the candidate masks go.
        network: the trained stage-2 network (2D, 1 channel in, background = channel 0).
        image_key: the network's input ``(1, X, Y, Z)``.
        hu_key: the same scan in HU (before histogram matching and scaling).
        label_key: the reference label ``(1, X, Y, Z)``.
        threshold_hu: the lesion threshold (130 HU, orCaScore).
        include_label: add the reference calcium to the predictions.
        roi_size: sliding-window size, or ``None`` for whole slices.
        sw_batch_size: slices or windows per forward pass.
        overlap: overlap of the sliding windows (MONAI ``sliding_window_inference``).
        cascade: the cascade inferer whose stages 1-2 make the predicted candidates, or ``None``.
        cascade_input_key: the inferer's input ``(1, X, Y, Z)`` (required with ``cascade``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        network: torch.nn.Module,
        image_key: str = "image",
        hu_key: str = "image_hu",
        label_key: str = "label",
        threshold_hu: float = 130.0,
        include_label: bool = True,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 8,
        overlap: float = 0.25,
        cascade: Any = None,
        cascade_input_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if cascade is not None and cascade_input_key is None:
            raise ValueError("PredictedCandidatesd: cascade_input_key is required with cascade")
        self.cascade, self.cascade_input_key = cascade, cascade_input_key
        self.overlap = float(overlap)
        self.network, self.image_key, self.hu_key, self.label_key = network, image_key, hu_key, label_key
        self.threshold_hu, self.include_label, self.sw_batch_size = float(threshold_hu), include_label, int(sw_batch_size)
        self.roi_size = None if roi_size is None else tuple(int(r) for r in roi_size)

    @torch.no_grad()
    def predict(self, image) -> np.ndarray:
        """``(X, Y, Z)`` stage-2 foreground (argmax not background) of a ``(1, X, Y, Z)`` image."""
        from monai.inferers import sliding_window_inference

        self.network.eval()
        img = torch.as_tensor(_numpy(image), dtype=torch.float32)
        slices = img.permute(3, 0, 1, 2)  # (Z, 1, X, Y)
        if self.roi_size is not None:
            logits = sliding_window_inference(slices, self.roi_size, self.sw_batch_size, self.network, overlap=self.overlap)
        else:
            logits = torch.cat([self.network(slices[i : i + self.sw_batch_size]) for i in range(0, slices.shape[0], self.sw_batch_size)])
        return (logits.argmax(1) > 0).permute(1, 2, 0).numpy()

    @torch.no_grad()
    def predict_cascade(self, volume) -> np.ndarray:
        """``(X, Y, Z)`` stage-2 foreground of the cascade (stages 1-2) for its input ``(1, X, Y, Z)``."""
        self.network.eval()
        self.cascade.roi_network.eval()
        vol = torch.as_tensor(_numpy(volume), dtype=torch.float32)
        return (self.cascade.stage2_labels(vol, self.network)[0] > 0).cpu().numpy()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        bright = _numpy(d[self.hu_key])[0] > self.threshold_hu
        if self.cascade is not None:
            cand = self.predict_cascade(d[self.cascade_input_key])
        else:
            cand = self.predict(d[self.image_key]) & bright
        if self.include_label:
            cand |= (_numpy(d[self.label_key])[0] > 0) & bright
        for key in self.keys:  # new items: written whether or not they exist
            d[key] = _like(cand[None].astype(np.float32), d[self.image_key])
        return d


# ------------------------------------------------------------------ lesion-balanced patch sampling
def lesion_sampling_weights(label, bright, class_weights: Sequence[float], negative_fraction: float = 0.2) -> np.ndarray:
    """Patch-centre weights that sample reference lesions, not reference voxels, uniformly (per class).

    Not in Araujo et al. (their Sect. 3.1 samples whole slices): on a small training set, voxel-weighted
    centres (MONAI ``RandCropByPosNegLabeld``) draw a 30-voxel plaque 30 times as often as a 1-voxel
    one, and small, faint lesions are the ones a stage-2 network misses. Lesions are the 3D 6-connected
    components of ``label > 0`` (the whole labelled plaque: a faint lesion of 131-175 HU is darker than
    the 130 HU threshold after histogram matching, so ``bright`` must not decide what a lesion is); a
    lesion of class ``c`` (its most frequent label) gets the total weight ``class_weights[c]``, spread
    evenly over its voxels. Bright voxels without a label (bone, aortic and valve calcium, noise: the
    hard negatives) share ``negative_fraction`` of the total weight evenly. Without any lesion the
    bright voxels take all the weight; without bright voxels every voxel has weight 1.

    Args:
        label: integer label array (any dimensionality; 0 = background).
        bright: boolean array of the same shape (voxels above the lesion threshold: the negatives).
        class_weights: weight of one lesion of each class, indexed by label value (index 0 unused).
        negative_fraction: share of the total weight on bright unlabelled voxels, in [0, 1).

    Returns:
        float64 weights of the shape of ``label``.
    """
    lab, bright = np.asarray(label).astype(np.int64), np.asarray(bright).astype(bool)
    if lab.shape != bright.shape:
        raise ValueError(f"label {lab.shape} and bright {bright.shape} must have the same shape")
    if not 0.0 <= negative_fraction < 1.0:
        raise ValueError(f"negative_fraction must be in [0, 1), got {negative_fraction}")
    cw = np.asarray(class_weights, np.float64)
    if lab.max(initial=0) >= cw.size:
        raise ValueError(f"label value {lab.max()} has no entry in class_weights {list(cw)}")
    weights = np.zeros(lab.shape, np.float64)
    pos = lab > 0
    ids, n = ndimage.label(pos, structure=ndimage.generate_binary_structure(lab.ndim, 1))
    if n:
        counts = np.zeros((n + 1, cw.size), np.int64)
        np.add.at(counts, (ids[pos], lab[pos]), 1)
        size = counts.sum(axis=1)
        mass = cw[counts.argmax(axis=1)]
        weights[pos] = mass[ids[pos]] / size[ids[pos]]
    neg = bright & (lab == 0)
    total = weights.sum()
    if total > 0:
        if neg.any() and negative_fraction > 0:
            weights[neg] = negative_fraction / (1.0 - negative_fraction) * total / neg.sum()
    elif neg.any():
        weights[neg] = 1.0
    else:
        weights[:] = 1.0
    return weights


def fold_to_patch_centres(weights, spatial_size: Sequence[int]) -> np.ndarray:
    """Moves every voxel's weight onto the nearest patch centre that MONAI ``RandWeightedCropd`` can draw.

    ``RandWeightedCropd`` (``monai.transforms.utils.weighted_patch_samples``) only draws centres whose whole
    patch lies inside the image (per axis ``[w // 2, m - w + w // 2)`` for a patch ``w`` of an axis of length
    ``m > w``; ``m // 2`` when ``m <= w``) and ignores the weight elsewhere: a lesion closer to the border
    than half a patch would never be drawn. Clipping each voxel's index into that range keeps its weight on
    the centre of a patch that contains it (as ``RandCropByPosNegLabeld`` shifts its centres; the last
    index of an axis with ``m > w`` is reachable by no centre and goes to the nearest one).
    """
    w = np.asarray(weights, np.float64)
    size = [int(v) for v in spatial_size]
    if len(size) != w.ndim:
        raise ValueError(f"spatial_size {size} must have one entry per axis of weights {w.shape}")
    idx = np.nonzero(w)
    clipped = []
    for i, win, m in zip(idx, size, w.shape):
        lo, hi = (win // 2, m - win + win // 2 - 1) if m > win else (m // 2, m // 2)
        clipped.append(np.clip(i, lo, hi))
    out = np.zeros_like(w)
    np.add.at(out, tuple(clipped), w[idx])
    return out


class LesionSamplingWeightsd(MapTransform):
    """Writes :func:`lesion_sampling_weights` of ``label_key`` / ``image_key`` as a ``(1, ...)`` float map
    under ``keys``, the ``w_key`` of MONAI ``RandWeightedCropd``. ``bright`` is ``image_key > image_threshold``
    (on the network's input scale: the 130 HU threshold after matching and scaling). With ``spatial_size``
    (the crop's patch size) the weights are moved onto the centres ``RandWeightedCropd`` can draw
    (:func:`fold_to_patch_centres`), so lesions near the border of the ROI crop keep their share."""

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        image_key: str = "image",
        image_threshold: float = 0.0,
        class_weights: Sequence[float] = (0.0, 1.0, 1.0, 1.0),
        negative_fraction: float = 0.2,
        spatial_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key, self.image_key, self.image_threshold = label_key, image_key, float(image_threshold)
        self.spatial_size = None if spatial_size is None else [int(v) for v in spatial_size]
        self.class_weights, self.negative_fraction = [float(w) for w in class_weights], float(negative_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label, image = _numpy(d[self.label_key])[0], _numpy(d[self.image_key])[0]
        w = lesion_sampling_weights(np.rint(label), image > self.image_threshold, self.class_weights, self.negative_fraction)
        if self.spatial_size is not None:
            w = fold_to_patch_centres(w, self.spatial_size)
        for key in self.keys:
            d[key] = _like(w[None].astype(np.float32), d[self.label_key])
        return d


# ------------------------------------------------------------------ histogram reference selection
def slice_f1(prediction2d, truth2d) -> float:
    """Pixel F1 (Dice) of one slice's masks; NaN when both are empty."""
    p, t = _numpy(prediction2d) > 0, _numpy(truth2d) > 0
    den = int(p.sum()) + int(t.sum())
    return 2.0 * int((p & t).sum()) / den if den else float("nan")


def select_histogram_reference(cases, segment) -> dict:
    """The paper's histogram reference: the training slice best segmented by an initial ROI segmentation.

    Araújo et al., Sect. 3.2.1: "we performed an initial ROI segmentation. The patient slice with the
    highest F1-Score in this initial segmentation was selected as the reference image."

    Args:
        cases: iterable of ``(image_hu, heart_mask)`` pairs, ``(X, Y, Z)`` arrays (HU, binary), or
            ``(name, image_hu, heart_mask)`` triples.
        segment: the initial segmentation: ``segment(image_hu)`` -> ``(X, Y, Z)`` binary heart masks
            (e.g. a stage-1 network trained without histogram matching, applied slice by slice).

    Returns:
        ``{"reference": 2D HU slice (float32), "f1", "case", "slice", "n_slices"}``; slices whose
        heart mask is empty are not candidates. Ties keep the first slice.
    """
    best = {"f1": -1.0}
    n = 0
    for index, case in enumerate(cases):
        name, image, heart = case if len(case) == 3 else (index, *case)
        image, heart = _numpy(image), _numpy(heart)
        if image.shape != heart.shape or image.ndim != 3:
            raise CTInputError(f"case {name}: image {image.shape} and heart mask {heart.shape} must be equal (X, Y, Z) arrays")
        pred = _numpy(segment(image))
        for z in range(image.shape[2]):
            if not (heart[:, :, z] > 0).any():
                continue
            n += 1
            f1 = slice_f1(pred[:, :, z], heart[:, :, z])
            if f1 > best["f1"]:
                best = {"f1": float(f1), "case": name, "slice": int(z), "reference": image[:, :, z].astype(np.float32)}
    if n == 0:
        raise CTInputError("no training slice has a heart mask: cannot select a histogram reference")
    best["n_slices"] = n
    return best
