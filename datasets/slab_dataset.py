"""In-memory 2.5D sampling for DenseRAUnet training (Ma and Zhang 2019, section 2.2): 9-slice stacks
with the centre slice's label, drawn from volumes held in memory (a MONAI ``CacheDataset``), so
that no sample re-reads a scan from disk."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
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

    Args:
        data: a sequence of volume dicts, normally a ``monai.data.CacheDataset`` (use
            ``copy_cache=False``: samples are copied by the slab extraction, never written back).
        transform: applied to every 2D sample (random crop and resize, ...).
        image_key: key of the image volume.
        label_key: key of the label volume (may be absent at inference).
        slab_size: number of consecutive slices stacked as channels (9 in the paper).
        positive_fraction: probability of drawing a slice with calcium; ``None`` enumerates slices.
        samples_per_epoch: epoch length when sampling at random (default: the number of slices).
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
        self.random = positive_fraction is not None or samples_per_epoch is not None
        self.length = int(samples_per_epoch) if samples_per_epoch is not None else int(self.offsets[-1])

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(volume, centre slice) of a global slice index (enumeration mode)."""
        v = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return v, int(index - self.offsets[v])

    def randomize(self, data=None) -> tuple[int, int]:
        if self.positives and self.positive_fraction and self.R.rand() < self.positive_fraction:
            return self.positives[self.R.randint(len(self.positives))]
        return self.locate(int(self.R.randint(int(self.offsets[-1]))))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} outside an epoch of {self.length}")
        v, z = self.randomize() if self.random else self.locate(index)
        item = self.data[v]
        sample = {
            self.image_key: extract_slab(torch.as_tensor(item[self.image_key]), z, self.slab_size),
            "slice_index": z,
            "volume_index": v,
        }
        if self.label_key in item:
            sample[self.label_key] = extract_slab(torch.as_tensor(item[self.label_key]), z, 1)
        return apply_transform(self.transform, sample) if self.transform is not None else sample
