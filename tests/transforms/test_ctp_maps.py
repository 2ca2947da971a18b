"""CT perfusion map loading, per-map normalisation and lesion volume (MS-DCNN bundle)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, MedianSmooth, Resized

from ctbundles.errors import CTInputError
from ctbundles.transforms.ctp_maps import (
    CTP_MAP_ORDER,
    DEFAULT_MAP_RULES,
    LesionVolume,
    LesionVolumed,
    LoadCTPMaps,
    LoadCTPMapsd,
    NormalizeCTPMaps,
    NormalizeCTPMapsd,
    normalize_map,
)
from tests_support.ctp_cases import make_ctp_case, write_isles_case, write_stacked


def test_load_isles_layout_matches_stacked_file(tmp_path):
    item = write_isles_case(tmp_path, 1, seed=3)
    stacked, _ = write_stacked(tmp_path / "case.nii.gz", seed=3)
    a = LoadCTPMapsd()(item)["image"]
    b = LoadCTPMapsd()({"image": stacked})["image"]
    assert a.shape == b.shape == (4, 40, 40, 4)
    assert torch.equal(a.as_tensor(), b.as_tensor())
    maps, _, _ = make_ctp_case(3)
    for i, name in enumerate(CTP_MAP_ORDER):  # channel order CBF, CBV, MTT, Tmax
        np.testing.assert_allclose(a[i].numpy(), maps[name].astype(np.float32))
    assert a.meta["filename_or_obj"].endswith("case_1")
    assert set(a.meta["ctp_sources"]) == set(CTP_MAP_ORDER)
    np.testing.assert_allclose(a.pixdim, [0.9, 0.9, 5.0], rtol=1e-6)


@pytest.mark.parametrize("keys", [lambda m: f"CT_{m}", lambda m: m.lower()])
def test_load_map_key_aliases(tmp_path, keys):
    item = write_isles_case(tmp_path, 2)
    aliased = {keys(m): item[m] for m in CTP_MAP_ORDER}
    assert LoadCTPMapsd()(aliased)["image"].shape == (4, 40, 40, 4)


@pytest.mark.parametrize("drop", [["MTT"], ["CBF", "Tmax"]])
def test_missing_map_is_named(tmp_path, drop):
    item = write_isles_case(tmp_path, 3)
    for m in drop:
        item.pop(m)
    with pytest.raises(CTInputError, match=r"missing CT perfusion map\(s\) " + repr(drop).replace("[", r"\[").replace("]", r"\]")):
        LoadCTPMapsd()(item)


def test_missing_file_and_no_input(tmp_path):
    item = write_isles_case(tmp_path, 4)
    item["CBV"] = str(tmp_path / "gone.nii")
    with pytest.raises(CTInputError, match="gone.nii: file not found"):
        LoadCTPMapsd()(item)
    with pytest.raises(CTInputError, match="no CT perfusion input"):
        LoadCTPMapsd()({"label": "x.nii"})


def test_stacked_with_wrong_channels(tmp_path):
    maps, _, affine = make_ctp_case(0)
    three = np.stack([maps[m].astype(np.float32) for m in ("CBF", "CBV", "MTT")], axis=-1)
    nib.save(nib.Nifti1Image(three, affine), str(tmp_path / "three.nii.gz"))
    nib.save(nib.Nifti1Image(maps["CBF"].astype(np.float32), affine), str(tmp_path / "one.nii.gz"))
    with pytest.raises(CTInputError, match="3 channels, expected 4"):
        LoadCTPMaps()(str(tmp_path / "three.nii.gz"))
    with pytest.raises(CTInputError, match="expected one stacked 4-channel image"):
        LoadCTPMaps()(str(tmp_path / "one.nii.gz"))


def test_maps_on_different_grids(tmp_path):
    item = write_isles_case(tmp_path, 5)
    maps, _, affine = make_ctp_case(0, shape=(40, 40, 3))
    nib.save(nib.Nifti1Image(maps["Tmax"], affine), item["Tmax"])
    with pytest.raises(CTInputError, match="map Tmax is on another grid"):
        LoadCTPMapsd()(item)


@pytest.mark.parametrize(
    "values, mode, upper, expected",
    [
        ([0.0, 5.0, 10.0, 30.0], "fixed", 20.0, [0.0, 0.25, 0.5, 1.0]),
        ([-3.0, 6.0, 40.0], "fixed", 20.0, [0.0, 0.3, 1.0]),
        # positive voxels 10, 20, 30, 100 -> median 25; x / 25 clipped at 2, / 2
        ([0.0, 10.0, 20.0, 30.0, 100.0], "relative", 2.0, [0.0, 0.2, 0.4, 0.6, 1.0]),
        ([0.0, 0.0], "relative", 2.0, [0.0, 0.0]),
    ],
)
def test_normalize_map_rules(values, mode, upper, expected):
    np.testing.assert_allclose(normalize_map(np.array(values), mode, upper).numpy(), expected, atol=1e-6)


def test_normalize_each_map_by_its_rule():
    maps, _, affine = make_ctp_case(1)
    img = MetaTensor(torch.stack([torch.as_tensor(maps[m], dtype=torch.float32) for m in CTP_MAP_ORDER]), affine=affine)
    out = NormalizeCTPMapsd()({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.meta["ctp_normalization"]["Tmax"] == DEFAULT_MAP_RULES["Tmax"]
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Tmax: fixed 20 s scale, so a 10 s voxel reads 0.5 whatever the case
    np.testing.assert_allclose(out[3].numpy(), np.clip(maps["Tmax"], 0, 20) / 20, atol=1e-6)
    cbf = maps["CBF"].astype(np.float32)
    np.testing.assert_allclose(out[0].numpy(), np.clip(cbf / np.median(cbf[cbf > 0]), 0, 2) / 2, atol=1e-6)
    # the relative rule does not depend on the scanner's scale
    img2 = img.clone()
    img2[0] *= 7.0
    np.testing.assert_allclose(NormalizeCTPMaps()(img2)[0].numpy(), out[0].numpy(), atol=1e-6)


def test_normalize_bad_arguments():
    with pytest.raises(ValueError, match="no normalisation rule"):
        NormalizeCTPMaps(rules={"CBF": {"mode": "fixed", "upper": 1.0}})
    with pytest.raises(ValueError, match="expected 4 channels"):
        NormalizeCTPMaps()(torch.zeros(3, 4, 4, 2))
    with pytest.raises(ValueError, match="'fixed' or 'relative'"):
        normalize_map(np.ones(3), "zscore", 1.0)


def test_resize_to_160_and_back_is_inverted():
    """Slices go to 160 x 160 (slice count kept) and Invertd brings a prediction back to the grid."""
    maps, label, affine = make_ctp_case(2, shape=(40, 36, 3))
    img = MetaTensor(torch.as_tensor(label[None], dtype=torch.float32), affine=affine)
    pre = Compose([Resized(keys="image", spatial_size=(160, 160, -1), mode="bilinear")])
    d = pre({"image": img})
    assert d["image"].shape == (1, 160, 160, 3)
    d["pred"] = d["image"].clone()
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert back.shape == (1, 40, 36, 3)
    dice = 2 * ((back[0] > 0.5).numpy() & (label > 0)).sum() / ((back[0] > 0.5).numpy().sum() + label.sum())
    assert dice > 0.95


def test_slice_median_filter_does_not_mix_slices():
    """MONAI MedianSmooth with radius (1, 1, 0) is the paper's 2D median filter applied per slice."""
    m = torch.zeros(1, 9, 9, 3)
    m[0, 4, 4, 1] = 1.0  # isolated voxel: removed
    m[0, 2:5, 2:5, 0] = 1.0  # 3x3 square: its 4 corners go (only 4 of 9 neighbours set)
    m[0, :, :, 2] = 1.0
    out = MedianSmooth(radius=(1, 1, 0))(m)
    assert float(out[0, ..., 1].sum()) == 0.0
    assert float(out[0, ..., 0].sum()) == 5.0
    assert float(out[0, ..., 2].sum()) == 81.0


@pytest.mark.parametrize("spacing, n, ml", [((1.0, 1.0, 1.0), 1000, 1.0), ((0.9, 0.9, 5.0), 200, 0.81)])
def test_lesion_volume(spacing, n, ml):
    mask = torch.zeros(1, 20, 20, 10)
    mask.view(-1)[:n] = 1.0
    img = MetaTensor(mask, affine=torch.diag(torch.tensor([*spacing, 1.0])), meta={"filename_or_obj": "/d/case_7"})
    rep = LesionVolumed(parameters={"median_radius": [1, 1, 0]})({"pred": img})["lesion_volume"]
    assert rep["n_voxels"] == n
    assert rep["volume_ml"] == pytest.approx(ml)
    assert rep["total_mm3"] == pytest.approx(ml * 1000)
    assert rep["ln_total"] == pytest.approx(math.log(ml * 1000 + 1))
    assert rep["parameters"]["median_radius"] == [1, 1, 0] and rep["source_image"] == "/d/case_7"
    empty = LesionVolume(spacing=spacing)(torch.zeros(5, 5, 5))
    assert empty["volume_ml"] == 0.0 and empty["warnings"] == ["no lesion predicted"]


def test_load_datalist_image_list_and_loaded_tensor(tmp_path):
    """``image`` as the four files (synth_head's build_datalist) or as an image MONAI Label loaded."""
    item = write_isles_case(tmp_path, 6, seed=2)
    by_keys = LoadCTPMapsd()(dict(item))["image"]
    as_list = LoadCTPMaps()([item[m] for m in CTP_MAP_ORDER])
    assert torch.equal(as_list.as_tensor(), by_keys.as_tensor())
    with pytest.raises(CTInputError, match="3 map file"):
        LoadCTPMaps()([item[m] for m in CTP_MAP_ORDER[:3]])
    stacked, _ = write_stacked(tmp_path / "s.nii.gz", seed=2)
    from monai.transforms import LoadImage

    loaded = LoadImage(image_only=True)(stacked)  # channel-last, original_channel_dim -1
    assert torch.equal(LoadCTPMapsd()({"image": loaded})["image"].as_tensor(), by_keys.as_tensor())
    assert LoadCTPMaps()(by_keys.as_tensor()).shape == (4, 40, 40, 4)
