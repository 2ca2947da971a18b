"""SlabDataset: 2.5D samples drawn from cached volumes in memory."""

from __future__ import annotations

import numpy as np
import torch

from monai.data import CacheDataset
from monai.transforms import Compose, Lambdad

from ctbundles.datasets.slab_dataset import SlabDataset


def volumes():
    out = []
    for n in (4, 6):
        img = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n).expand(1, 3, 3, n).clone()
        lab = torch.zeros(1, 3, 3, n)
        lab[0, 1, 1, n - 1] = 1
        out.append({"image": img, "label": lab})
    return out


def test_enumerates_every_slice_once():
    ds = SlabDataset(volumes())
    assert len(ds) == 10
    seen = [(s["volume_index"], s["slice_index"]) for s in ds]
    assert seen == [(0, z) for z in range(4)] + [(1, z) for z in range(6)]
    s = ds[4 + 5]
    assert s["image"].shape == (9, 3, 3) and s["label"].shape == (1, 3, 3)
    assert s["image"][:, 0, 0].tolist() == [1, 2, 3, 4, 5, 5, 5, 5, 5]
    assert float(s["label"].sum()) == 1.0
    assert ds.positives == [(0, 3), (1, 5)]


def test_positive_fraction_one_draws_only_calcium_slices():
    ds = SlabDataset(volumes(), positive_fraction=1.0, samples_per_epoch=20)
    ds.set_random_state(0)
    assert len(ds) == 20
    assert all(float(ds[i]["label"].sum()) == 1.0 for i in range(20))
    uniform = SlabDataset(volumes(), positive_fraction=0.0, samples_per_epoch=200)
    uniform.set_random_state(0)
    frac = np.mean([float(uniform[i]["label"].sum()) for i in range(200)])
    assert 0.05 < frac < 0.4  # 2 of 10 slices hold calcium


def test_reads_from_cache_not_disk():
    calls = []

    def loader(x):
        calls.append(1)
        return x

    cached = CacheDataset(volumes(), transform=Compose([Lambdad("image", loader)]), progress=False, copy_cache=False)
    ds = SlabDataset(cached, transform=Lambdad("image", lambda x: x * 2))
    n_after_cache = len(calls)
    samples = [ds[i] for i in range(len(ds))]
    assert len(calls) == n_after_cache == 2  # each volume was "loaded" once, at caching time
    assert samples[2]["image"][4, 0, 0] == 4.0  # the sample transform ran (slice 2 * 2)
