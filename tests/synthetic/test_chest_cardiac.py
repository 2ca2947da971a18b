"""Synthetic chest / cardiac CT: determinism, protocol geometry, tissue HU, hard negatives, labels and
ground truth against analytic Agatston and volume expectations."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage

from ctbundles.synthetic.chest_cardiac import CORONARY_LABELS, PROTOCOLS, generate_cardiac, generate_chest
from ctbundles.synthetic.registry import GENERATORS, generate, resolve_generator

GEN = {"cardiac": generate_cardiac, "chest": generate_chest}


def _voxel(case, lps):
    """Index of the voxel nearest to an LPS point (mm)."""
    aff = np.asarray(case.affine)
    ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
    return tuple(int(round(v)) for v in (np.linalg.inv(aff) @ ras)[:3])


@pytest.fixture(scope="module")
def noisy_cases():
    """One small realistic (noise + PSF) case per kind, shared by the read-only tests."""
    return {k: GEN[k](11, small=True, n_plaques=6) for k in GEN}


@pytest.fixture(scope="module")
def clean_cases():
    """Noise-free, blur-free small cases: tissue values are the painted ones."""
    return {k: GEN[k](5, small=True, noise_std=0, psf=False, n_plaques=4) for k in GEN}


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_same_seed_same_case_different_seed_different(kind):
    a = GEN[kind](3, shape=(64, 64, 16), spacing=(2.0, 2.0, 3.0), score=False)
    b = GEN[kind](3, shape=(64, 64, 16), spacing=(2.0, 2.0, 3.0), score=False)
    c = GEN[kind](4, shape=(64, 64, 16), spacing=(2.0, 2.0, 3.0), score=False)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.extra["heart_mask"], b.extra["heart_mask"])
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.meta == b.meta
    assert not np.array_equal(a.image, c.image)


def test_registry_resolves_kinds_and_names_missing_modules():
    assert set(GENERATORS) == {"chest", "cardiac", "head", "ctp"}
    case = generate("cardiac", 2, shape=(48, 48, 12), spacing=(3.0, 3.0, 3.0), score=False)
    assert case.kind == "cardiac" and case.image.shape == (48, 48, 12)
    with pytest.raises(ImportError, match="ctbundles.synthetic.not_there"):
        resolve_generator("ctbundles.synthetic.not_there:generate_x")
    with pytest.raises(ValueError, match="unknown synthetic CT kind"):
        generate("knee", 0)


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_protocol_spacing_and_meta(kind):
    proto = PROTOCOLS[kind]
    for seed in range(4):
        case = GEN[kind](seed, shape=(32, 32, 8), score=False, n_plaques=0)
        sx, sy, sz = case.spacing
        assert sx == pytest.approx(sy)
        assert proto["pixel_mm"][0] - 1e-3 <= sx <= proto["pixel_mm"][1] + 1e-3
        assert any(sz == pytest.approx(s) for s in proto["slice_mm"])
        assert case.meta["kvp"] == 120
        assert case.meta["slice_thickness_mm"] == pytest.approx(sz)
        assert case.meta["slice_increment_mm"] == pytest.approx(sz)
        assert case.meta["patient_id"].endswith(f"{seed:06d}")
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        np.testing.assert_array_equal(case.image, np.rint(case.image))  # integer HU
    if kind == "cardiac":
        assert case.spacing[0] == pytest.approx(0.4) and case.spacing[2] == pytest.approx(3.0)


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_default_size_case(kind, capsys):
    t0 = time.perf_counter()
    case = GEN[kind](21)
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[default-size {kind} case: {case.image.shape}, spacing {np.round(case.spacing, 3).tolist()}: {elapsed:.1f} s]")
    assert case.image.shape[:2] == (512, 512)
    fov = 512 * case.spacing[0]
    if kind == "cardiac":
        assert fov == pytest.approx(204.8)
        assert case.spacing[2] == pytest.approx(3.0) and 40 <= case.image.shape[2] <= 52
    else:
        assert 330 <= fov <= 380
        assert 1.0 <= case.spacing[2] <= 2.5
        assert 170 <= case.image.shape[2] * case.spacing[2] <= 200
    assert case.image.min() >= -1024 and case.image.max() <= 3071
    assert "agatston" in case.truth


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_tissue_hu_noise_free(clean_cases, kind):
    case = clean_cases[kind]
    lm = case.truth["generator"]["landmarks_lps_mm"]
    hu = case.truth["generator"]["tissue_hu"]
    img = case.image
    blood = img[_voxel(case, lm["blood_pool_center"])]
    assert 35 <= blood <= 45 and blood == pytest.approx(hu["blood"], abs=1)
    lung = img[_voxel(case, lm["lung_centers"][0])]
    assert -880 <= lung <= -830
    z_mid = [z for z in lm["vertebra_centers_z"] if abs(z - lm["heart_center"][2]) < 40][0]
    idx = _voxel(case, [lm["spine_xy"][0], lm["spine_xy"][1], z_mid])
    if kind == "chest":  # the small cardiac field of view, centred on the heart, ends before the spine
        assert 180 <= img[idx] <= 280
    # the bony cortex and the hard negatives are the only voxels far above the cancellous bone
    assert img.max() >= 550
    if kind == "chest":
        assert img.min() == -1000  # air outside the body (the cardiac field of view lies inside it)


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_noise_level_in_blood_pool(noisy_cases, kind):
    case = noisy_cases[kind]
    lm = case.truth["generator"]["landmarks_lps_mm"]
    i, j, k = _voxel(case, lm["blood_pool_center"])
    patch = case.image[i - 5 : i + 6, j - 5 : j + 6, k - 1 : k + 2]
    assert patch.mean() == pytest.approx(case.truth["generator"]["tissue_hu"]["blood"], abs=12)
    # std at the body centre is the protocol's noise (the map falls off outwards by at most 30 %)
    assert 0.6 * case.meta["noise_std_hu"] <= patch.std() <= 1.25 * case.meta["noise_std_hu"]


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_hard_negatives_bright_and_unlabelled(clean_cases, noisy_cases, kind):
    for case in (clean_cases[kind], noisy_cases[kind]):
        negs = case.truth["generator"]["hard_negatives"]
        kinds = {n["kind"] for n in negs}
        assert "aortic_valve" in kinds and "aortic_wall" in kinds
        found = 0
        for neg in negs:
            idx = _voxel(case, neg["center_mm"])
            if not all(0 <= v < n for v, n in zip(idx, case.image.shape)):
                continue
            r = [max(1, int(math.ceil(s / 2 / sp))) for s, sp in zip(neg["size_mm"], case.spacing)]
            box = tuple(slice(max(v - q, 0), v + q + 1) for v, q in zip(idx, r))
            assert case.image[box].max() >= 130, neg
            assert not case.label[box].any(), neg
            found += 1
        assert found >= 2
        # the aortic valve calcification lies inside the heart mask, bright and unlabelled
        valve = [n for n in negs if n["kind"] == "aortic_valve"][0]
        assert case.extra["heart_mask"][_voxel(case, valve["center_mm"])] == 1


def test_calcium_touching_bone_merges_with_bone():
    # seeds chosen freely: find a case with a bone-touching negative in the grid
    for seed in range(12):
        case = generate_chest(seed, small=True, noise_std=0, psf=False, n_plaques=0)
        touching = [n for n in case.truth["generator"]["hard_negatives"] if n["kind"].startswith("touching_")]
        for neg in touching:
            idx = _voxel(case, neg["center_mm"])
            if not all(0 <= v < n for v, n in zip(idx, case.image.shape)):
                continue
            comp, _ = ndimage.label(case.image >= 130)
            region = comp == comp[idx]
            assert comp[idx] > 0
            ext = (np.ptp(np.nonzero(region)[0]) + 1) * case.spacing[0]
            assert ext > max(neg["size_mm"]) + 2.0  # the bright region continues into the bone
            assert not (case.label[region]).any()
            return
    pytest.fail("no bone-touching calcification inside the grid in 12 seeds")


@pytest.mark.parametrize("kind", ["cardiac", "chest"])
def test_labels_cover_plaques_inside_heart(noisy_cases, kind):
    case = noisy_cases[kind]
    lab = case.label
    assert set(np.unique(lab).tolist()) <= {0, *CORONARY_LABELS.values()}
    assert case.label_names == CORONARY_LABELS
    plaques = [p for p in case.truth["generator"]["plaques"] if p["in_grid"]]
    assert plaques
    for p in plaques:
        v = lab[_voxel(case, p["center_mm"])]
        assert v in (0, CORONARY_LABELS[p["artery"]])  # 0 only where another plaque won the voxel
    present = {p["artery"] for p in plaques}
    for name in present:
        assert (lab == CORONARY_LABELS[name]).any(), name
    # coronaries run in the epicardial fat: the label lies in the pericardial heart mask
    assert (case.extra["heart_mask"][lab > 0] == 1).mean() > 0.95
    # the truth is the project's scoring of exactly this image and label
    from ctbundles.transforms.calcium_scoring import CalciumScoreParams, score_calcium

    again = score_calcium(case.image, lab, case.spacing, params=CalciumScoreParams(artery_labels=CORONARY_LABELS))
    assert case.truth["agatston"] == pytest.approx(again["agatston"])
    assert case.truth["volume_mm3"] == pytest.approx(again["volume_mm3"])


def _weight(hu):
    return 1 if hu < 200 else 2 if hu < 300 else 3 if hu < 400 else 4


@pytest.mark.parametrize("hu", [150.0, 250.0, 350.0, 800.0])
@pytest.mark.parametrize(
    "kind,spacing,size_vox,nz_grid",
    [("cardiac", (0.8, 0.8, 3.0), (3, 2, 2), 48), ("chest", (1.0, 1.0, 1.25), (4, 3, 5), 128), ("cardiac", (0.5, 0.5, 3.0), (2, 2, 1), 48)],
)
def test_single_box_plaque_matches_analytic_agatston_and_volume(kind, spacing, size_vox, nz_grid, hu):
    """A noise-free, blur-free box plaque filling whole voxels: Agatston and volume by hand."""
    size_mm = [n * s for n, s in zip(size_vox, spacing)]
    plaque = {"artery": "LAD", "position": 0.3, "shape": "box", "size_mm": size_mm, "hu": hu, "snap_to_grid": True}
    case = GEN[kind](9, shape=(192, 192, nz_grid), spacing=spacing, plaques=[plaque], noise_std=0, psf=False, hard_negatives=False)
    nx, ny, nz = size_vox
    # geometry: exactly the box's voxels are labelled LAD and hold the plaque HU
    assert int((case.label == CORONARY_LABELS["LAD"]).sum()) == nx * ny * nz
    assert int((case.label > 0).sum()) == nx * ny * nz
    np.testing.assert_array_equal(case.image[case.label > 0], np.rint(hu))
    # analytic scores: area per slice x weight x (increment / 3), volume = voxels x voxel volume
    area = nx * ny * spacing[0] * spacing[1]
    expected_agatston = nz * area * _weight(hu) * spacing[2] / 3.0 if area >= 1.0 else 0.0
    expected_volume = nx * ny * nz * spacing[0] * spacing[1] * spacing[2] if area >= 1.0 else 0.0
    assert case.truth["agatston"] == pytest.approx(expected_agatston)
    assert case.truth["volume_mm3"] == pytest.approx(expected_volume)
    assert case.truth["per_artery"]["LAD"]["agatston"] == pytest.approx(expected_agatston)
    assert case.truth["per_artery"]["RCA"]["agatston"] == 0.0
    assert case.truth["n_lesions"] == (nz if area >= 1.0 else 0)


def test_ellipsoid_plaque_volume_matches_analytic():
    """A noise-free, blur-free ellipsoid plaque: its partial-volume content equals 4/3 pi abc.

    The same seed without the plaque gives the background b; each voxel's plaque fraction is
    (HU - b) / (1000 - b), and their sum times the voxel volume is the plaque's volume.
    """
    spacing = (0.5, 0.5, 0.5)
    d = (8.0, 5.0, 4.0)
    plaque = {"artery": "RCA", "position": 0.25, "shape": "ellipsoid", "size_mm": list(d), "hu": 1000.0}
    opts = dict(shape=(256, 256, 160), spacing=spacing, noise_std=0, psf=False, hard_negatives=False)
    case = generate_cardiac(4, plaques=[plaque], **opts)
    empty = generate_cardiac(4, plaques=[], **opts)
    analytic = 4 / 3 * math.pi * np.prod(np.array(d) / 2)
    voxel = np.prod(spacing)
    fraction = (case.image - empty.image) / (1000.0 - empty.image)
    assert fraction.sum() * voxel == pytest.approx(analytic, rel=0.02)
    lab = case.label == CORONARY_LABELS["RCA"]
    assert fraction[~lab].sum() == pytest.approx(0.0, abs=1e-6)  # the label holds the whole plaque
    # scored volume: voxels >= 130 HU, i.e. at least ~10 % plaque, so a little above the analytic volume
    assert analytic <= case.truth["volume_mm3"] <= 1.3 * analytic
    assert case.truth["per_artery"]["RCA"]["volume_mm3"] == pytest.approx(case.truth["volume_mm3"])
    assert empty.truth["agatston"] == 0.0 and not empty.label.any()
