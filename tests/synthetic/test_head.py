"""Synthetic head CT (ICAC): anatomy, calcifications, ground truth and the reference head."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ctbundles.synthetic.head import HEAD_LABELS, generate_head, ica_centreline, reference_head

SMALL = dict(shape=(128, 128, 80), spacing=(1.8, 1.8, 1.75))  # the default 230 x 230 x 140 mm field, coarse
EXACT = dict(pose=False, noise_sd=0.0, blur_sigma_mm=None)


def _hu_at(case, world_mm, half=1):
    """Mean HU of the (2 half + 1)^3 voxels around a world point."""
    ijk = np.rint(np.linalg.solve(case.affine[:3, :3], np.asarray(world_mm, float) - case.affine[:3, 3])).astype(int)
    sl = tuple(slice(i - half, i + half + 1) for i in ijk)
    return float(case.image[sl].mean())


@pytest.fixture(scope="module")
def small_cases():
    return {seed: generate_head(seed, **SMALL) for seed in range(4)}


def test_same_seed_same_case_other_seed_other_case(small_cases):
    again = generate_head(1, **SMALL)
    np.testing.assert_array_equal(again.image, small_cases[1].image)
    np.testing.assert_array_equal(again.label, small_cases[1].label)
    np.testing.assert_array_equal(again.affine, small_cases[1].affine)
    assert again.truth == small_cases[1].truth
    assert not np.array_equal(small_cases[0].image, small_cases[1].image)
    assert small_cases[0].meta["pose"] != small_cases[1].meta["pose"]


def test_grid_dtypes_and_hu_range(small_cases):
    case = small_cases[0]
    assert case.kind == "head"
    assert case.image.shape == (128, 128, 80) and case.image.dtype == np.float32
    assert case.label.shape == case.image.shape and case.label.dtype == np.uint8
    assert case.label_names == {"ICA_left": 1, "ICA_right": 2}
    np.testing.assert_allclose(case.spacing, [1.8, 1.8, 1.75])
    assert case.image.min() == -1024.0  # air outside the head (raw CT floor)
    assert 1000.0 < case.image.max() < 3000.0  # cortical / petrous bone
    assert np.array_equal(case.image, np.rint(case.image))  # integer HU like a reconstruction
    assert set(np.unique(case.label)) <= {0, 1, 2}


def test_default_grid_geometry():
    """The default grid is the raw head CT geometry (checked on the affine, not rendered)."""
    from ctbundles.synthetic import head

    affine = head._grid_affine(head.DEFAULT_SHAPE, head.DEFAULT_SPACING)
    assert head.DEFAULT_SHAPE == (512, 512, 200)
    assert 0.45 <= head.DEFAULT_SPACING[0] <= 0.5 and 0.5 <= head.DEFAULT_SPACING[2] <= 1.0
    z = affine[2, 3] + np.array([0, head.DEFAULT_SHAPE[2] - 1]) * head.DEFAULT_SPACING[2]
    assert z[0] < -55.0 and z[1] > 75.0  # below the petrous carotid to above the vertex


@pytest.mark.parametrize(
    "point, low, high, what",
    [
        ((30.0, -20.0, 35.0), 20.0, 45.0, "brain"),
        ((0.0, 12.0, -45.0), -1000.0, -500.0, "sphenoid sinus air"),
        ((9.0, 2.0, 18.0), 0.0, 15.0, "lateral ventricle CSF"),
        ((35.5, -21.5, -50.0), 1300.0, 2100.0, "petrous bone"),
        ((0.0, -6.0, 65.5), 1000.0, 1800.0, "outer table at the vertex"),
    ],
)
def test_anatomy_in_the_canonical_pose(point, low, high, what):
    case = generate_head(3, **SMALL, **EXACT, vary_anatomy=False, calcifications=[])
    hu = _hu_at(case, point, half=0)
    assert low <= hu <= high, f"{what}: {hu} HU at {point}"


def test_icac_label_is_calcium_on_the_right_side(small_cases):
    fractions = []
    for case in small_cases.values():
        hu = case.image[case.label > 0]
        if hu.size:
            fractions.append(np.mean(hu >= 130.0))
        assert case.truth["total_mm3"] == pytest.approx(
            np.count_nonzero((case.label > 0) & (case.image >= 130)) * np.prod(case.spacing))
    assert fractions and min(fractions) >= 0.8
    # with the pose off, ICA_left (patient left) lies at x < 0 in RAS
    case = generate_head(2, **SMALL, pose=False)
    xs = {v: (np.argwhere(case.label == v) @ case.affine[:3, :3].T + case.affine[:3, 3])[:, 0] for v in (1, 2)}
    assert xs[1].size and xs[2].size
    assert np.all(xs[1] < 0) and np.all(xs[2] > 0)


def test_truth_is_icac_volume_per_side(small_cases):
    for case in small_cases.values():
        per = case.truth["per_label"]
        for name, value in HEAD_LABELS.items():
            expected = np.count_nonzero((case.label == value) & (case.image >= 130.0)) * np.prod(case.spacing)
            assert per[name]["volume_mm3"] == pytest.approx(expected)
        assert case.truth["total_mm3"] == pytest.approx(sum(p["volume_mm3"] for p in per.values()))


def test_bone_adjacent_calcifications_occur(small_cases):
    flags = [r["near_bone"] for case in small_cases.values() for r in case.meta["calcifications"]]
    assert any(flags) and not all(flags)


@pytest.mark.parametrize("t, angle, near", [(0.15, 90.0, True), (0.3, 180.0, True), (0.9, 90.0, False), (0.95, 0.0, False)])
def test_near_bone_flag_matches_the_image(t, angle, near):
    """A 300 HU plaque, no noise/blur: bone is every voxel >= 450 HU; a 'near bone' plaque has
    labelled calcium within 1 mm (plus one voxel diagonal) of it, a free one has none."""
    case = generate_head(0, **SMALL, **EXACT, calcifications=[dict(side="right", t=t, angle_deg=angle, radius_mm=1.0,
                                                                      length_mm=3.0, hu=300)])
    record = case.meta["calcifications"][0]
    assert record["near_bone"] is near
    bone = case.image >= 450.0
    dist = ndimage.distance_transform_edt(~bone, sampling=case.spacing)
    labelled = case.label == HEAD_LABELS["ICA_right"]
    assert labelled.any()
    gap = dist[labelled].min()
    if near:
        assert gap <= 1.0 + np.linalg.norm(case.spacing)
    else:
        assert gap > 1.0


@pytest.mark.parametrize("hu, n_voxels", [(129, 0), (130, 12), (600, 12), (1200, 12)])
def test_box_calcification_gives_the_hand_computed_icac_volume(hu, n_voxels):
    """A 3 x 2 x 2-voxel box (5.4 x 3.6 x 3.6 mm on a 1.8 x 1.8 x 1.75 mm grid) in the left ICA
    lumen, noise and blur off: ICAC volume = 12 x 1.8 x 1.8 x 1.75 mm^3 at >= 130 HU, 0 below."""
    case = generate_head(0, **SMALL, **EXACT, vary_anatomy=False, calcifications=[
        dict(side="left", t=0.85, angle_deg=0.0, radius_mm=1.8, length_mm=5.4, hu=hu, depth=0.0, shape="box")])
    expected = n_voxels * 1.8 * 1.8 * 1.75
    assert case.truth["total_mm3"] == pytest.approx(expected)
    assert case.truth["per_label"]["ICA_left"]["volume_mm3"] == pytest.approx(expected)
    assert case.truth["per_label"]["ICA_right"]["volume_mm3"] == 0.0
    # the box is there whatever its density: exactly 12 voxels carry its HU
    assert np.count_nonzero(case.image == hu) == 12
    assert case.meta["calcifications"][0]["voxels_occupied"] == 12


def test_sphere_calcification_matches_its_analytic_volume():
    """A 2 mm-radius sphere at 218 HU in 42 HU blood: a voxel reaches 130 HU when at least half
    of it is calcium, so the ICAC volume is the sphere's, 4/3 pi r^3 = 33.51 mm^3."""
    line, frac = ica_centreline("left")
    centre = line[np.searchsorted(frac, 0.85)]
    case = generate_head(0, shape=(80, 80, 80), spacing=(0.25, 0.25, 0.25), **EXACT, vary_anatomy=False,
                         grid_centre_mm=centre, calcifications=[
                             dict(side="left", t=0.85, angle_deg=0.0, radius_mm=2.0, length_mm=4.0, hu=218, depth=0.0)])
    analytic = 4.0 / 3.0 * np.pi * 2.0**3
    assert case.truth["total_mm3"] == pytest.approx(analytic, rel=0.04)
    # and voxel by voxel: the counted voxels are those whose centre lies in the sphere
    ijk = np.indices(case.image.shape).reshape(3, -1).T
    world = ijk @ case.affine[:3, :3].T + case.affine[:3, 3]
    inside = np.linalg.norm(world - np.asarray(case.meta["calcifications"][0]["centre_mm"]), axis=1) <= 2.0
    counted = ((case.label > 0) & (case.image >= 130)).reshape(-1)
    assert np.count_nonzero(counted != inside) <= 0.02 * inside.sum()


def test_pose_moves_the_head_and_can_be_disabled():
    posed = generate_head(5, **SMALL, calcifications=[])
    canonical = generate_head(5, **SMALL, pose=False, calcifications=[])
    rot = np.asarray(posed.meta["pose"]["rotation"])
    assert not np.allclose(rot, np.eye(3))
    assert np.allclose(canonical.meta["pose"]["rotation"], np.eye(3))
    assert np.abs(posed.image - canonical.image).mean() > 20.0


def test_reference_head_is_deterministic_pose_and_noise_free():
    a = reference_head(shape=(96, 96, 64), spacing=(2.4, 2.4, 2.2))
    b = reference_head(shape=(96, 96, 64), spacing=(2.4, 2.4, 2.2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.label_names == HEAD_LABELS
    # noise free: the white matter is one flat value (blur only acts at edges)
    centre = np.rint(np.linalg.solve(a.affine[:3, :3], np.array([25.0, -10.0, 30.0]) - a.affine[:3, 3])).astype(int)
    block = a.image[tuple(slice(i - 1, i + 2) for i in centre)]
    assert np.ptp(block) == 0.0
    # the carotid region of interest follows the ICA centre lines, left at x < 0
    for side, value in (("left", 1), ("right", 2)):
        line, _ = ica_centreline(side)
        mid = line[len(line) // 2]
        ijk = np.rint(np.linalg.solve(a.affine[:3, :3], mid - a.affine[:3, 3])).astype(int)
        assert a.label[tuple(ijk)] == value
    xs = np.argwhere(a.label == 1)[:, 0] * 2.4 + a.affine[0, 3]
    assert np.all(xs < 0)
