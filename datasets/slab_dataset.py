"""In-memory 2.5D sampling for DenseRAUnet training (Ma and Zhang 2019, section 2.2): 9-slice stacks
with the centre slice's label, drawn from volumes held in memory (a MONAI ``CacheDataset``), so
that no sample re-reads a scan from disk."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from monai.transforms import Randomizable, apply_transform

from ctbundles.transforms.slab_sampling import extract_slab

__all__ = ["SlabDataset"]


class SlabDataset(Dataset, Randomizable):
    """2D samples ``{image: (C * slab_size, X, Y), label: (C, X, Y), slice_index, volume_index}``
    drawn from cached 3D volumes ``{image: (C, X, Y, Z), label: (C, X, Y, Z)}``.

    By default an epoch visits every slice of every volume once as a centre slice (the paper trains
    on all 9-slice stacks; shuffle in the DataLoader). With ``positive_fraction`` (or
    ``samples_per_epoch``) samples are random instead: with probability ``positive_fraction`` a
    slice whose label holds calcium, otherwise any slice. Edge slices are replicated.

    Hard negatives (opt-in, ``hard_negative_fraction``; a training-recipe choice, not in the paper):
    the paper's bootstrap loss learns from the negatives the network still gets wrong (section
    2.4), but a random crop of a random slice seldom holds the few bright structures that are not
    coronary calcium. With probability ``hard_negative_fraction`` a sample is instead centred on a
    *calcium-like candidate without label*: a 2D 8-connected component of the centre slice at or
    above ``hard_negative_threshold`` (130 HU in the cached intensity units) whose peak reaches
    ``hard_negative_min_peak``, of at most ``hard_negative_max_area`` pixels, and with no calcium
    label pixel: small bright spots such as aortic-wall or valve calcifications, while the large
    bone components and the many single noise pixels just above 130 HU of a low-dose scan are
    left out. The slab is cut to a ``hard_negative_window`` square around the
    candidate's centroid (shifted inside the image at the borders) before ``transform``. A random
    crop of that window keeps a centred candidate when its side exceeds half the window (the
    synthetic recipe: window 160, crops of 96-160 pixels). The candidates are found once, from the
    cached volumes, at construction.

    Args:
        data: a sequence of volume dicts, normally a ``monai.data.CacheDataset`` (use
            ``copy_cache=False``: samples are copied by the slab extraction, never written back).
        transform: applied to every 2D sample (random crop and resize, ...).
        image_key: key of the image volume.
        label_key: key of the label volume (may be absent at inference).
        slab_size: number of consecutive slices stacked as channels (9 in the paper).
        positive_fraction: probability of drawing a slice with calcium; ``None`` enumerates slices.
        samples_per_epoch: epoch length when sampling at random (default: the number of slices).
        hard_negative_fraction: probability of drawing a hard-negative candidate (see above);
            ``None`` or 0 draws none (and leaves the random sequence of the other draws unchanged).
        hard_negative_threshold: intensity (cached units) at or above which a pixel is bright.
        hard_negative_min_peak: smallest peak intensity (cached units) of a candidate; ``None``:
            ``hard_negative_threshold``.
        hard_negative_max_area: largest component, in pixels, that counts as a candidate.
        hard_negative_window: side in pixels of the square cut around a candidate.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Callable | None = None,
        image_key: str = "image",
        label_key: str = "label",
        slab_size: int = 9,
        positive_fraction: float | None = None,
        samples_per_epoch: int | None = None,
        hard_negative_fraction: float | None = None,
        hard_negative_threshold: float | None = None,
        hard_negative_min_peak: float | None = None,
        hard_negative_max_area: int = 100,
        hard_negative_window: int = 160,
    ) -> None:
        self.data = data
        self.transform = transform
        self.image_key = image_key
        self.label_key = label_key
        self.slab_size = slab_size
        if positive_fraction is not None and not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.positive_fraction = positive_fraction
        self.n_slices: list[int] = []
        self.positives: list[tuple[int, int]] = []
        for v in range(len(data)):
            item = data[v]
            self.n_slices.append(int(item[self.image_key].shape[-1]))
            if label_key in item:
                lab = torch.as_tensor(item[label_key])
                zs = torch.nonzero(lab.reshape(-1, lab.shape[-1]).amax(dim=0) > 0).flatten().tolist()
                self.positives += [(v, int(z)) for z in zs]
        self.offsets = np.concatenate([[0], np.cumsum(self.n_slices)]).astype(int)
        if hard_negative_fraction is not None and not 0.0 <= hard_negative_fraction <= 1.0:
            raise ValueError(f"hard_negative_fraction must be in [0, 1], got {hard_negative_fraction}")
        self.hard_negative_fraction = hard_negative_fraction or 0.0
        self.hard_negative_window = int(hard_negative_window)
        #: (volume, centre slice, x, y) of every hard-negative candidate, an (N, 4) int array
        self.hard_negatives = np.zeros((0, 4), dtype=int)
        if self.hard_negative_fraction > 0:
            if hard_negative_threshold is None:
                raise ValueError(
                    "hard_negative_fraction needs hard_negative_threshold (130 HU in the cached intensity units)"
                )
            found = [
                self.find_hard_negatives(
                    data[v][image_key], data[v].get(label_key), hard_negative_threshold,
                    hard_negative_max_area, v, hard_negative_min_peak,
                )
                for v in range(len(data))
            ]
            self.hard_negatives = np.concatenate(found) if found else self.hard_negatives
            if not len(self.hard_negatives):
                raise ValueError("hard_negative_fraction > 0 but no volume holds a hard-negative candidate")
        self.random = positive_fraction is not None or samples_per_epoch is not None or self.hard_negative_fraction > 0
        self.length = int(samples_per_epoch) if samples_per_epoch is not None else int(self.offsets[-1])

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(volume, centre slice) of a global slice index (enumeration mode)."""
        v = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return v, int(index - self.offsets[v])

    @staticmethod
    def find_hard_negatives(
        image, label, threshold: float, max_area: int, volume_index: int = 0, min_peak: float | None = None
    ) -> np.ndarray:
        """(N, 4) rows (volume_index, z, x, y), sorted: the rounded centroids of the 2D 8-connected
        components of each slice of ``image[0] >= threshold`` with ``1 <= area <= max_area`` pixels,
        a peak of at least ``min_peak`` (default ``threshold``) and no nonzero ``label`` pixel
        (``label`` may be None). ``image`` and ``label`` are (C, X, Y, Z)."""
        img = np.asarray(image[0].detach().cpu() if isinstance(image, torch.Tensor) else image[0])
        bright = img >= threshold
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[:, :, 1] = True  # 8-connected within a slice, never across slices
        comp, n = ndimage.label(bright, structure=structure)
        if n == 0:
            return np.zeros((0, 4), dtype=int)
        ids = comp[bright]
        area = np.bincount(ids, minlength=n + 1)
        labelled = np.zeros(n + 1, dtype=bool)
        if label is not None:
            lab = np.asarray(label[0].detach().cpu() if isinstance(label, torch.Tensor) else label[0]) > 0
            labelled[np.unique(comp[lab & bright])] = True
        xs, ys, zs = np.nonzero(bright)
        cx = np.bincount(ids, weights=xs, minlength=n + 1)
        cy = np.bincount(ids, weights=ys, minlength=n + 1)
        cz = np.bincount(ids, weights=zs, minlength=n + 1)
        peak = np.full(n + 1, -np.inf)
        np.maximum.at(peak, ids, img[bright])
        floor = threshold if min_peak is None else min_peak
        keep = np.nonzero((area >= 1) & (area <= max_area) & (peak >= floor) & ~labelled)[0]
        keep = keep[keep > 0]
        a = area[keep]
        centroids = [np.rint(c[keep] / a) for c in (cz, cx, cy)]
        rows = np.stack([np.full(len(keep), volume_index), *centroids], axis=1)
        rows = rows.astype(int)
        return rows[np.lexsort(rows.T[::-1])]  # sorted by (z, x, y)

    def randomize(self, data=None) -> tuple[int, ...]:
        if self.hard_negative_fraction > 0 and self.R.rand() < self.hard_negative_fraction:
            return tuple(int(c) for c in self.hard_negatives[self.R.randint(len(self.hard_negatives))])
        if self.positives and self.positive_fraction and self.R.rand() < self.positive_fraction:
            return self.positives[self.R.randint(len(self.positives))]
        return self.locate(int(self.R.randint(int(self.offsets[-1]))))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} outside an epoch of {self.length}")
        drawn = self.randomize() if self.random else self.locate(index)
        v, z = drawn[:2]
        item = self.data[v]
        sample = {
            self.image_key: extract_slab(torch.as_tensor(item[self.image_key]), z, self.slab_size),
            "slice_index": z,
            "volume_index": v,
        }
        if self.label_key in item:
            sample[self.label_key] = extract_slab(torch.as_tensor(item[self.label_key]), z, 1)
        if len(drawn) == 4:  # a hard-negative candidate: cut the window around it
            window = [self._window(c, n) for c, n in zip(drawn[2:], sample[self.image_key].shape[1:])]
            for key in (self.image_key, self.label_key):
                if key in sample:
                    sample[key] = sample[key][:, window[0], window[1]]
        return apply_transform(self.transform, sample) if self.transform is not None else sample

    def _window(self, centre: int, size: int) -> slice:
        """The ``hard_negative_window`` pixels around ``centre``, shifted to lie inside ``size``."""
        w = min(self.hard_negative_window, int(size))
        start = min(max(int(centre) - w // 2, 0), int(size) - w)
        return slice(start, start + w)
