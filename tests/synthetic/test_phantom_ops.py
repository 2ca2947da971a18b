"""Partial-volume rasterization, PSF and noise of the phantom building blocks, against analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbundles.synthetic import phantom_ops as ops


def _grid(spacing=(0.5, 0.5, 1.5), shape=(80, 80, 40)):
    return ops.Grid.centered(shape, spacing, (0.0, 0.0, 0.0))


def test_grid_affine_is_ras_of_lps_axes():
    g = ops.Grid((4, 5, 6), (0.4, 0.5, 3.0), (10.0, -20.0, 30.0))
    aff = g.affine
    np.testing.assert_allclose(aff[:3, :3], np.diag([-0.4, -0.5, 3.0]))
    # voxel (1, 2, 3) is at LPS (10.4, -19.0, 39.0) = RAS (-10.4, 19.0, 39.0)
    np.testing.assert_allclose(aff @ [1, 2, 3, 1], [-10.4, 19.0, 39.0, 1.0])


@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (0.13, -0.31, 0.77)])
@pytest.mark.parametrize("size", [(3.0, 2.0, 4.5), (2.3, 1.7, 5.1)])
def test_box_occupancy_is_exact(center, size):
    g = _grid()
    sl, occ = ops.box_occupancy(g, center, size)
    voxel = np.prod(g.spacing)
    assert occ.sum() * voxel == pytest.approx(np.prod(size), rel=1e-5)
    assert occ.max() <= 1.0 and occ.min() >= 0.0


def test_snapped_box_fills_whole_voxels():
    g = _grid()
    size = (2.0, 1.5, 4.5)  # 4 x 3 x 3 voxels
    c = ops.snap_box_center(g, (0.37, -0.21, 0.4), size)
    sl, occ = ops.box_occupancy(g, c, size)
    vals = np.unique(np.round(occ, 6))
    assert set(vals.tolist()) <= {0.0, 1.0}
    assert int((occ == 1).sum()) == 4 * 3 * 3


@pytest.mark.parametrize("supersample", [None, 4])
@pytest.mark.parametrize("axes", [(10.0, 6.0, 8.0), (4.0, 2.5, 6.0)])
def test_ellipsoid_volume_matches_analytic(axes, supersample):
    g = _grid()
    rot = ops.orthonormal_frame([1.0, 0.7, -0.4], [0.0, 1.0, 0.0])
    sl, occ = ops.ellipsoid_occupancy(g, (0.3, -0.2, 0.5), axes, rot, supersample=supersample)
    vol = occ.sum() * np.prod(g.spacing)
    expected = 4.0 / 3.0 * math.pi * np.prod(axes)
    assert vol == pytest.approx(expected, rel=0.02)


def test_axis_aligned_ellipsoid_face_is_exact_box_fraction():
    # a flat ellipsoid face normal to z, crossing a slice: occupancy at the centre column is the
    # exact overlap of the slice with [-c, c] (linear ramp of width = slice spacing)
    g = ops.Grid((21, 21, 11), (0.5, 0.5, 2.0), (-5.0, -5.0, -10.0))
    sl, occ = ops.ellipsoid_occupancy(g, (0.0, 0.0, 0.0), (4.0, 4.0, 2.5))
    col = occ[10 - sl[0].start, 10 - sl[1].start]
    z = g.axis_coords(2, sl[2])
    expected = np.clip((np.minimum(z + 1.0, 2.5) - np.maximum(z - 1.0, -2.5)) / 2.0, 0, 1)
    np.testing.assert_allclose(col, expected, atol=1e-5)


def test_tube_volume_matches_cylinder_and_torus():
    g = _grid(spacing=(0.4, 0.4, 1.0), shape=(120, 120, 60))
    # straight oblique tube: volume pi r^2 L (+ the rounded caps 4/3 pi r^3)
    a, b = np.array([-10.0, -8.0, -12.0]), np.array([9.0, 7.0, 12.0])
    pts = a + np.linspace(0, 1, 200)[:, None] * (b - a)
    r = 2.0
    sl, occ = ops.tube_occupancy(g, pts, r)
    L = np.linalg.norm(b - a)
    assert occ.sum() * np.prod(g.spacing) == pytest.approx(math.pi * r**2 * L + 4 / 3 * math.pi * r**3, rel=0.02)
    # closed ring (torus) in a tilted plane: 2 pi^2 R r^2
    t = np.linspace(0, 2 * np.pi, 800)
    R = 15.0
    ring = np.stack([R * np.cos(t), R * np.sin(t) * 0.8, R * np.sin(t) * 0.6], -1)
    sl, occ = ops.tube_occupancy(g, ring, 1.5)
    assert occ.sum() * np.prod(g.spacing) == pytest.approx(2 * math.pi**2 * R * 1.5**2, rel=0.03)


def test_tube_layer_offsets_are_concentric():
    g = _grid(spacing=(0.4, 0.4, 1.0), shape=(100, 100, 40))
    pts = np.stack([np.zeros(100), np.zeros(100), np.linspace(-15, 15, 100)], -1)
    sd = ops.tube_signed_distance(g, pts, 4.0, reach_mm=2.0)
    vol = {off: ops.tube_layer(sd, off)[1].sum() * np.prod(g.spacing) for off in (-1.5, 0.0, 2.0)}
    for off, v in vol.items():
        r = 4.0 + off
        assert v == pytest.approx(math.pi * r**2 * 30 + 4 / 3 * math.pi * r**3, rel=0.03), off


def test_paint_mixes_linearly():
    img = np.full((4, 4, 4), -100.0, np.float32)
    occ = np.zeros((4, 4, 4), np.float32)
    occ[1, 1, 1], occ[2, 2, 2] = 1.0, 0.25
    ops.paint(img, ((slice(0, 4),) * 3, occ), 300.0)
    assert img[1, 1, 1] == pytest.approx(300.0)
    assert img[2, 2, 2] == pytest.approx(-100 * 0.75 + 300 * 0.25)
    assert img[0, 0, 0] == -100.0


@pytest.mark.parametrize("fwhm", [(0.7, 0.7, 1.0), (1.2, 1.2, 0.0)])
def test_noise_after_psf_has_requested_std(fwhm):
    rng = np.random.default_rng(0)
    spacing = (0.4, 0.4, 3.0)
    img = np.zeros((96, 96, 24), np.float32)
    img = ops.add_noise(img, rng, 25.0, out_gain=ops.blurred_noise_gain(spacing, fwhm))
    img = ops.psf_blur(img, spacing, fwhm)
    assert img[10:-10, 10:-10, 3:-3].std() == pytest.approx(25.0, rel=0.05)


def test_psf_fwhm_of_a_line():
    spacing = (0.2, 0.2, 1.0)
    img = np.zeros((101, 5, 5), np.float32)
    img[50] = 1.0
    out = ops.psf_blur(img, spacing, (1.0, 0.0, 0.0))[:, 2, 2]
    half = out.max() / 2
    above = np.nonzero(out >= half)[0]
    # FWHM of the sampled profile within one sample of 1.0 mm
    assert abs((above[-1] - above[0] + 1) * 0.2 - 1.0) <= 0.2 + 1e-9


def test_quantize_hu_rounds_and_clips():
    q = ops.quantize_hu(np.array([-2000.0, -0.4, 0.6, 129.5, 5000.0]))
    assert q.dtype == np.int16
    assert q.tolist() == [-1024, 0, 1, 130, 3071]
