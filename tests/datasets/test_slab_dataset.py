"""SlabDataset: 2.5D samples drawn from cached volumes in memory."""

from __future__ import annotations

import numpy as np
import pytest
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


def hard_negative_volume():
    """(1, 40, 40, 5) image at 0 with, in slice 2: an unlabelled 2 x 2 spot of peak 500 at
    x 10-11, y 30-31 (the candidate); a labelled 2 x 2 spot at 500; a 12 x 12 block at 500 (area
    144, too large); a single pixel at 150 (below the 200 peak floor). In slice 3: one unlabelled
    pixel at 300 at (5, 5), a separate 2D component (never merged with slice 2 across z)."""
    img = torch.zeros(1, 40, 40, 5)
    lab = torch.zeros(1, 40, 40, 5)
    img[0, 10:12, 30:32, 2] = torch.tensor([[500.0, 300.0], [300.0, 300.0]])
    img[0, 20:22, 20:22, 2] = 500.0
    lab[0, 20:22, 20:22, 2] = 1
    img[0, 26:38, 2:14, 2] = 500.0
    img[0, 2, 2, 2] = 150.0
    img[0, 5, 5, 3] = 300.0
    return {"image": img, "label": lab}


def test_find_hard_negatives_keeps_small_bright_unlabelled_components():
    v = hard_negative_volume()
    rows = SlabDataset.find_hard_negatives(v["image"], v["label"], 130.0, max_area=100, volume_index=7, min_peak=200.0)
    # centroid of the 2 x 2 spot (10.5, 30.5) rounds half to even: (10, 30)
    assert rows.tolist() == [[7, 2, 10, 30], [7, 3, 5, 5]]
    # the 150 pixel becomes a candidate once the peak floor is the 130 threshold itself
    rows = SlabDataset.find_hard_negatives(v["image"], v["label"], 130.0, max_area=100)
    assert sorted(rows.tolist()) == [[0, 2, 2, 2], [0, 2, 10, 30], [0, 3, 5, 5]]
    # the 144-pixel block counts when the area limit allows it; the labelled spot never does
    rows = SlabDataset.find_hard_negatives(v["image"], v["label"], 130.0, max_area=144, min_peak=200.0)
    assert sorted(rows.tolist()) == [[0, 2, 10, 30], [0, 2, 32, 8], [0, 3, 5, 5]]
    assert len(SlabDataset.find_hard_negatives(v["image"], None, 130.0, max_area=4, min_peak=200.0)) == 3


def test_hard_negative_samples_are_windows_around_a_candidate():
    v = hard_negative_volume()
    ds = SlabDataset([v], hard_negative_fraction=1.0, hard_negative_threshold=130.0, hard_negative_min_peak=200.0,
                     hard_negative_window=16, samples_per_epoch=10)
    ds.set_random_state(0)
    assert ds.hard_negatives.tolist() == [[0, 2, 10, 30], [0, 3, 5, 5]]
    seen = set()
    for i in range(10):
        s = ds[i]
        assert s["image"].shape == (9, 16, 16) and s["label"].shape == (1, 16, 16)
        z = s["slice_index"]
        seen.add(z)
        if z == 2:  # window x 2-17, y 22-37: the 500 pixel lands at (8, 8), its label is background
            assert float(s["image"][4, 8, 8]) == 500.0 and float(s["image"].max()) == 500.0
            assert float(s["label"].sum()) == 0.0
        else:  # (5, 5) at the border: the window is shifted to x 0-15, y 0-15
            assert z == 3 and float(s["image"][4, 5, 5]) == 300.0
    assert seen == {2, 3}


def test_hard_negative_fraction_off_keeps_the_draws():
    """Fraction 0 (or None) draws exactly the samples of the dataset without the option."""
    a = SlabDataset(volumes(), positive_fraction=0.5, samples_per_epoch=30)
    b = SlabDataset(volumes(), positive_fraction=0.5, samples_per_epoch=30, hard_negative_fraction=0.0)
    a.set_random_state(3)
    b.set_random_state(3)
    drawn = [[(d[i]["volume_index"], d[i]["slice_index"]) for i in range(30)] for d in (a, b)]
    assert drawn[0] == drawn[1]
    with pytest.raises(ValueError, match="no volume holds"):
        SlabDataset(volumes(), hard_negative_fraction=0.3, hard_negative_threshold=100.0)
    with pytest.raises(ValueError, match="needs hard_negative_threshold"):
        SlabDataset(volumes(), hard_negative_fraction=0.3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SlabDataset(volumes(), hard_negative_fraction=1.5, hard_negative_threshold=1.0)
