"""2.5D slab sampling for DenseRAUnet (Ma and Zhang 2019, sections 2.2 and 2.3): the network input is
a stack of ``slab_size`` (9) consecutive axial slices as channels, and its label is the label of the
centre slice.

Volumes follow the project convention (C, X, Y, Z) with axis -1 the axial slice axis. Slices beyond
the first or last one are replicated (edge padding), so every slice of a scan can be a centre slice,
in training and in inference alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["slab_indices", "extract_slab", "ExtractSlab", "ExtractSlabd", "CentreSliceThresholdd"]


def slab_indices(centre: int, n_slices: int, slab_size: int = 9) -> list[int]:
    """Indices of the ``slab_size`` slices centred on ``centre``, clamped to ``[0, n_slices - 1]``
    (replicate edge handling). ``slab_size`` must be odd."""
    if slab_size < 1 or slab_size % 2 == 0:
        raise ValueError(f"slab_size must be a positive odd number, got {slab_size}")
    if not 0 <= centre < n_slices:
        raise IndexError(f"centre slice {centre} outside a volume of {n_slices} slices")
    half = slab_size // 2
    return [min(max(k, 0), n_slices - 1) for k in range(centre - half, centre + half + 1)]


def extract_slab(volume, centre: int, slab_size: int = 9):
    """(C, X, Y, Z) volume -> (C * slab_size, X, Y) stack of the slices around ``centre``, channel
    order c-major then slice (for C = 1: slice ``centre - 4`` ... ``centre + 4``).

    The slices are read as one contiguous range (a view) and only the out-of-volume ones are
    replicated, which is two orders of magnitude faster than a fancy-index gather on a volume whose
    slice axis is the last (fastest-varying) one."""
    if volume.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) volume, got shape {tuple(volume.shape)}")
    n = int(volume.shape[-1])
    idx = slab_indices(int(centre), n, slab_size)
    lo, hi = idx[0], idx[-1]
    half = slab_size // 2
    before, after = max(half - int(centre), 0), max(int(centre) + half - (n - 1), 0)
    if isinstance(volume, torch.Tensor):
        v = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
        block = v[..., lo : hi + 1]
        if before or after:
            block = torch.cat([block[..., :1]] * before + [block] + [block[..., -1:]] * after, dim=-1)
        return block.permute(0, 3, 1, 2).reshape(-1, *v.shape[1:3])
    a = np.asarray(volume)
    block = a[..., lo : hi + 1]
    if before or after:
        block = np.concatenate([block[..., :1]] * before + [block] + [block[..., -1:]] * after, axis=-1)
    return np.ascontiguousarray(np.moveaxis(block, -1, 1).reshape(-1, *a.shape[1:3]))


class ExtractSlab(Transform):
    """Array transform: (C, X, Y, Z) volume and a centre index -> (C * slab_size, X, Y) slab.

    Args:
        slab_size: number of consecutive slices (9 in the paper).
    """

    def __init__(self, slab_size: int = 9) -> None:
        slab_indices(0, 1, slab_size)  # validates slab_size
        self.slab_size = slab_size

    def __call__(self, volume, centre: int):
        return extract_slab(volume, centre, self.slab_size)


class ExtractSlabd(MapTransform):
    """Dictionary version: ``keys`` (images) become 9-slice stacks, ``label_keys`` become the centre
    slice only (C, X, Y); the centre index is read from ``centre_key``.

    Args:
        keys: image keys to stack.
        label_keys: keys whose centre slice is kept (the 2D training target).
        centre_key: key of the centre slice index in the data dict.
        slab_size: number of consecutive slices (9).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        centre_key: str = "slice_index",
        slab_size: int = 9,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)
        self.centre_key = centre_key
        self.extract = ExtractSlab(slab_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        centre = int(d[self.centre_key])
        for key in self.key_iterator(d):
            d[key] = self.extract(d[key], centre)
        for key in self.label_keys:
            if key in d:
                d[key] = extract_slab(d[key], centre, 1)
            elif not self.allow_missing_keys:
                raise KeyError(f"ExtractSlabd: label key {key!r} missing")
        return d


class CentreSliceThresholdd(MapTransform):
    """Removes label pixels whose centre-slice intensity is below ``threshold`` (paper section 2.2:
    "labels below 130 HU removed"), applied to a 2.5D sample *after* its random crop and resize.

    Resizing moves a label off its calcium in two ways: nearest-neighbour label interpolation
    and bilinear image interpolation sample different points (half a pixel apart with PyTorch's
    ``"nearest"``), and bilinear interpolation spreads a 1-3 pixel lesion into darker neighbours.
    On the small lesions of coronary calcium, 40 % of the resized label pixels of a synthetic
    chest cohort sat below 130 HU, so the network was taught to mark pixels it cannot tell from
    soft tissue. Re-applying the rule on the resized centre slice keeps the target what the
    network sees.

    Args:
        keys: label keys, (C, H, W) (or (C, H, W, D) for a 3D stack).
        image_key: key of the (slab_size * C, H, W) stack; the centre channel is used.
        threshold: the calcium threshold in the stack's intensity units (130 HU scaled like the
            image, e.g. (130 + 1000) / 3000 for a [-1000, 2000] HU -> [0, 1] window).
    """

    def __init__(
        self, keys: KeysCollection, image_key: str = "image", threshold: float = 130.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        centre = image[image.shape[0] // 2 : image.shape[0] // 2 + 1]
        for key in self.key_iterator(d):
            label = d[key]
            keep = centre >= self.threshold
            if isinstance(label, torch.Tensor):
                keep = torch.as_tensor(keep, device=label.device)
                d[key] = label * keep.to(label.dtype)
            else:
                d[key] = np.asarray(label) * np.asarray(keep).astype(np.asarray(label).dtype)
        return d
