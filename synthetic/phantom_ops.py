"""Building blocks of the synthetic CT phantoms: a voxel grid, shapes rasterized with partial volume,
the scanner point-spread function, CT noise and HU quantization.

Every generator (chest, cardiac, head, ctp) paints its anatomy with these pieces:

1. :class:`Grid` maps array indices (i, j, k) to world millimetres. The world frame is LPS
   (x to the patient's left, y posterior, z superior), the DICOM patient frame, so a grid with
   positive spacings has the RAS affine ``diag(-sx, -sy, sz)`` that ``monai.transforms.LoadImage``
   gives for an ordinary axial DICOM series.
2. Shapes return ``(slices, occupancy)``: the fraction of each voxel inside the shape (0..1),
   computed only inside the shape's bounding box. Axis-aligned boxes are exact (separable box
   overlap); ellipsoids, elliptic cylinders and tubes use an analytic soft edge, a linear ramp
   across the surface whose width is the voxel's extent along the surface normal
   (``sqrt(sum((n_i * s_i)^2))``, the width with the variance of a box voxel projected on the
   normal), which is exact for faces normal to an array axis and close (a few percent of the edge
   voxels) elsewhere. Pass ``supersample=n`` to average ``n^3`` point samples per voxel instead.
3. :func:`paint` mixes a tissue into the image by its occupancy,
   ``hu_new = hu_old * (1 - f) + hu_tissue * f`` (the linear partial-volume model).
4. :func:`psf_blur` applies a Gaussian point-spread function given as FWHM in millimetres per axis
   (scanner in-plane resolution and slice sensitivity profile).
5. :func:`add_noise` adds Gaussian noise of a prescribed standard deviation that may vary in space
   (a quantum-noise-like map: noisier in the thick centre of the body). Adding white noise BEFORE
   :func:`psf_blur` and asking for the post-blur standard deviation (:func:`blurred_noise_gain`)
   gives noise with the kernel's spatial correlation, as filtered back-projection does.
6. :func:`quantize_hu` rounds to integer HU and clips to the int16 range a scanner stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (X, Y, Z), ``spacing`` (mm) and ``origin`` (LPS mm of voxel (0, 0, 0)'s centre).

    Array axes are aligned with the LPS axes (no rotation), so voxel (i, j, k) has its centre at
    ``origin + (i, j, k) * spacing``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centered(cls, shape, spacing, center_mm) -> "Grid":
        """The grid of ``shape`` and ``spacing`` whose centre lies at ``center_mm`` (LPS)."""
        shape = tuple(int(n) for n in shape)
        spacing = tuple(float(s) for s in spacing)
        origin = tuple(float(c) - (n - 1) / 2.0 * s for c, n, s in zip(center_mm, shape, spacing))
        return cls(shape, spacing, origin)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world matrix in RAS (MONAI convention): LPS with the first two axes negated."""
        aff = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])
        aff[:3, 3] = [-self.origin[0], -self.origin[1], self.origin[2]]
        return aff

    def axis_coords(self, axis: int, sl: slice | None = None) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along ``axis`` (optionally a slice of them)."""
        idx = np.arange(self.shape[axis])
        if sl is not None:
            idx = idx[sl]
        return self.origin[axis] + idx * self.spacing[axis]

    def open_coords(self, slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x (n,1,1), y (1,n,1), z (1,1,n) coordinates (float32) of the voxels in ``slices``."""
        x = self.axis_coords(0, slices[0]).astype(np.float32)[:, None, None]
        y = self.axis_coords(1, slices[1]).astype(np.float32)[None, :, None]
        z = self.axis_coords(2, slices[2]).astype(np.float32)[None, None, :]
        return x, y, z

    def bbox(self, lo_mm, hi_mm, pad_voxels: int = 1) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in [lo_mm, hi_mm] (LPS), padded; None if empty."""
        out = []
        for a in range(3):
            lo = int(np.floor((lo_mm[a] - self.origin[a]) / self.spacing[a])) - pad_voxels
            hi = int(np.ceil((hi_mm[a] - self.origin[a]) / self.spacing[a])) + pad_voxels + 1
            lo, hi = max(lo, 0), min(hi, self.shape[a])
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)


def _ramp(signed_distance, width):
    """Soft-edge occupancy: 1 well inside, 0 well outside, linear across ``width`` centred on the surface."""
    return np.clip(0.5 - signed_distance / width, 0.0, 1.0)


def _normal_width(nx, ny, nz, spacing):
    """Extent of a box voxel along the unit normal (n_x, n_y, n_z): sqrt(sum((n_i * s_i)^2))."""
    return np.sqrt((nx * spacing[0]) ** 2 + (ny * spacing[1]) ** 2 + (nz * spacing[2]) ** 2)


def box_occupancy(grid: Grid, center, size):
    """Exact occupancy of an axis-aligned box (``size`` full lengths in mm) in box-shaped voxels.

    Separable: the overlap of two intervals per axis, multiplied. Returns ``(slices, occ)`` or None.
    """
    center = np.asarray(center, float)
    half = np.asarray(size, float) / 2.0
    sl = grid.bbox(center - half, center + half)
    if sl is None:
        return None
    parts = []
    for a in range(3):
        c = grid.axis_coords(a, sl[a])
        s = grid.spacing[a]
        overlap = np.minimum(c + s / 2, center[a] + half[a]) - np.maximum(c - s / 2, center[a] - half[a])
        parts.append(np.clip(overlap / s, 0.0, 1.0).astype(np.float32))
    occ = parts[0][:, None, None] * parts[1][None, :, None] * parts[2][None, None, :]
    return sl, occ


def snap_box_center(grid: Grid, center, size) -> np.ndarray:
    """Move a box's centre so that its faces lie on voxel boundaries (box occupancy then is 0 or 1).

    ``size`` should be a multiple of the spacing along each axis for the box to fill whole voxels.
    """
    center = np.asarray(center, float)
    out = np.empty(3)
    for a in range(3):
        s, o = grid.spacing[a], grid.origin[a]
        lo = center[a] - size[a] / 2.0
        lo_snapped = o + (np.round((lo - o) / s + 0.5) - 0.5) * s
        out[a] = lo_snapped + size[a] / 2.0
    return out


def _supersample_offsets(spacing, n):
    """Offsets (mm) of n^3 sub-voxel sample points of a voxel, per axis."""
    f = (np.arange(n) + 0.5) / n - 0.5
    return [f * s for s in spacing]


def ellipsoid_occupancy(grid: Grid, center, semi_axes, rotation=None, supersample: int | None = None):
    """Occupancy of an ellipsoid: ``center`` (mm), ``semi_axes`` (mm) along the columns of ``rotation``.

    ``rotation`` is a 3x3 matrix whose columns are the ellipsoid's axes in LPS (identity if None).
    Soft edge from the first-order signed distance ``(f - 1) / |grad f|`` with
    ``f = sqrt(sum((p_i / a_i)^2))`` in the ellipsoid frame, or ``supersample^3`` point samples.
    Returns ``(slices, occ)`` (float32) or None when the ellipsoid misses the grid.
    """
    c = np.asarray(center, float)
    a = np.asarray(semi_axes, float)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, float)
    half_extent = np.sqrt(((rot * a[None, :]) ** 2).sum(axis=1))  # bounding box of a rotated ellipsoid
    sl = grid.bbox(c - half_extent, c + half_extent)
    if sl is None:
        return None
    x, y, z = grid.open_coords(sl)
    dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    r = rot.astype(np.float32)
    inv = (1.0 / a).astype(np.float32)
    if supersample and supersample > 1:
        occ = np.zeros(tuple(s.stop - s.start for s in sl), np.float32)
        offs = _supersample_offsets(grid.spacing, supersample)
        for ox in offs[0]:
            for oy in offs[1]:
                for oz in offs[2]:
                    f2 = 0.0
                    for k in range(3):
                        u = (dx + ox) * r[0, k] + (dy + oy) * r[1, k] + (dz + oz) * r[2, k]
                        f2 = f2 + (u * inv[k]) ** 2
                    occ += f2 <= 1.0
        return sl, occ / np.float32(supersample**3)
    # local coordinates u_k = R[:, k] . (p - c); f = 1 on the surface
    u = [dx * r[0, k] + dy * r[1, k] + dz * r[2, k] for k in range(3)]
    f = np.sqrt((u[0] * inv[0]) ** 2 + (u[1] * inv[1]) ** 2 + (u[2] * inv[2]) ** 2)
    occ = (f < 1.0).astype(np.float32)
    # soft edge only in a shell around the surface (|f - 1| below the ramp's reach)
    band = 1.5 * float(np.sqrt(np.sum(np.square(grid.spacing)))) / float(a.min())
    shell = np.abs(f - 1.0) < band
    if shell.any():
        us = [np.broadcast_to(uk, f.shape)[shell] for uk in u]
        fs = np.maximum(f[shell], np.float32(1e-6))
        g_local = [us[k] * inv[k] ** 2 / fs for k in range(3)]  # grad f in the ellipsoid frame
        gnorm = np.maximum(np.sqrt(g_local[0] ** 2 + g_local[1] ** 2 + g_local[2] ** 2), np.float32(1e-12))
        d = (fs - 1.0) / gnorm
        n_world = [(r[i, 0] * g_local[0] + r[i, 1] * g_local[1] + r[i, 2] * g_local[2]) / gnorm for i in range(3)]
        occ[shell] = _ramp(d, _normal_width(*n_world, grid.spacing))
    return sl, occ


def ellipse_2d_occupancy(grid: Grid, center_xy, semi_axes_xy, angle_rad: float = 0.0, sl_xy=None):
    """In-plane occupancy (X, Y) of an ellipse rotated by ``angle_rad`` about z; soft edge as above.

    Returns ``(slices_xy, occ2d)`` (float32) or None.
    """
    c = np.asarray(center_xy, float)
    a = np.asarray(semi_axes_xy, float)
    ca, sa = np.cos(angle_rad), np.sin(angle_rad)
    rot = np.array([[ca, -sa], [sa, ca]])
    half = np.sqrt(((rot * a[None, :]) ** 2).sum(axis=1))
    lo = [c[0] - half[0], c[1] - half[1], grid.origin[2]]
    hi = [c[0] + half[0], c[1] + half[1], grid.origin[2]]
    sl = grid.bbox(lo, hi)
    if sl is None:
        return None
    x = (grid.axis_coords(0, sl[0]) - c[0]).astype(np.float32)[:, None]
    y = (grid.axis_coords(1, sl[1]) - c[1]).astype(np.float32)[None, :]
    u = [x * rot[0, k] + y * rot[1, k] for k in range(2)]
    f = np.sqrt((u[0] / a[0]) ** 2 + (u[1] / a[1]) ** 2)
    f_safe = np.maximum(f, 1e-6)
    g = [u[k] / a[k] ** 2 / f_safe for k in range(2)]
    gnorm = np.maximum(np.sqrt(g[0] ** 2 + g[1] ** 2), 1e-12)
    d = (f - 1.0) / gnorm
    nx = (rot[0, 0] * g[0] + rot[0, 1] * g[1]) / gnorm
    ny = (rot[1, 0] * g[0] + rot[1, 1] * g[1]) / gnorm
    w = _normal_width(nx, ny, 0.0, grid.spacing)
    return sl[:2], _ramp(d, w).astype(np.float32)


def z_interval_occupancy(grid: Grid, z_lo: float, z_hi: float):
    """Exact fraction of each slice (box of one slice spacing) inside [z_lo, z_hi]; (slice, occ1d) or None."""
    sl = grid.bbox([grid.origin[0], grid.origin[1], z_lo], [grid.origin[0], grid.origin[1], z_hi])
    if sl is None:
        return None
    z = grid.axis_coords(2, sl[2])
    s = grid.spacing[2]
    overlap = np.minimum(z + s / 2, z_hi) - np.maximum(z - s / 2, z_lo)
    return sl[2], np.clip(overlap / s, 0.0, 1.0).astype(np.float32)


def elliptic_cylinder_occupancy(grid: Grid, center_xy, semi_axes_xy, z_lo=-np.inf, z_hi=np.inf, angle_rad=0.0):
    """Occupancy of an elliptic cylinder parallel to z between ``z_lo`` and ``z_hi`` (mm).

    The product of the in-plane ellipse occupancy and the exact slice overlap. Returns
    ``(slices, occ)`` or None.
    """
    e = ellipse_2d_occupancy(grid, center_xy, semi_axes_xy, angle_rad)
    if e is None:
        return None
    z_lo = max(z_lo, grid.origin[2] - grid.spacing[2])
    z_hi = min(z_hi, grid.origin[2] + grid.shape[2] * grid.spacing[2])
    zz = z_interval_occupancy(grid, z_lo, z_hi)
    if zz is None:
        return None
    (sx, sy), occ2 = e
    sz, occz = zz
    return (sx, sy, sz), occ2[:, :, None] * occz[None, None, :]


def sample_curve(control_points, step_mm: float = 0.2, radii=None):
    """A smooth curve through ``control_points`` (N x 3, mm), resampled every ``step_mm`` of arc length.

    Cubic spline (scipy) through the points parameterized by chord length. ``radii`` (N values) is
    interpolated linearly along the arc. Returns ``(points (M, 3), radii (M,) or None, arc (M,))``.
    """
    from scipy.interpolate import CubicSpline

    p = np.asarray(control_points, float)
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    spline = CubicSpline(t, p, axis=0, bc_type="natural")
    dense_t = np.linspace(0, t[-1], max(int(t[-1] / (step_mm / 4)) + 2, 8))
    dense = spline(dense_t)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    n = max(int(arc[-1] / step_mm) + 1, 2)
    target = np.linspace(0, arc[-1], n)
    tt = np.interp(target, arc, dense_t)
    pts = spline(tt)
    r = None if radii is None else np.interp(tt, t, np.asarray(radii, float))
    return pts, r, target


def tube_signed_distance(grid: Grid, points, radii, reach_mm: float = 0.0, segment_mm: float | None = None):
    """Signed distance (mm) to a tube of varying radius around a centreline, near the tube only.

    The centreline (``points``, M x 3 mm, e.g. from :func:`sample_curve`) is cut into straight
    segments of about ``segment_mm`` (default half the radius, 1 to 6 mm, so the chord error on
    curved vessels stays far below a voxel); for each segment the distance to it is computed
    analytically, only inside the segment's bounding box grown by the radius plus ``reach_mm``,
    and the minimum over segments is kept. The radius is interpolated linearly along each segment.

    Returns ``(slices, sd, width)``: the tube's bounding box (grown by ``reach_mm``), the signed
    distance (``inf`` where no segment reached) and the voxel extent along the surface normal, for
    :func:`tube_layer` (occupancy of the tube, or of a tube grown or shrunk by an offset).
    """
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radii, float), (len(pts),)).astype(float)
    rmax = float(rad.max()) + reach_mm
    sl_all = grid.bbox(pts.min(axis=0) - rmax, pts.max(axis=0) + rmax)
    if sl_all is None:
        return None
    shape_all = tuple(s.stop - s.start for s in sl_all)
    sd_all = np.full(shape_all, np.inf, np.float32)
    w_all = np.ones(shape_all, np.float32)
    if segment_mm is None:
        segment_mm = float(np.clip(0.5 * float(rad.mean()), 1.0, 6.0))
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    n_seg = max(int(np.ceil(arc[-1] / segment_mm)), 1)
    knots = np.unique(np.searchsorted(arc, np.linspace(0, arc[-1], n_seg + 1)).clip(0, len(pts) - 1))
    if len(knots) < 2:
        knots = np.array([0, len(pts) - 1]) if len(pts) > 1 else np.array([0, 0])
    for i0, i1 in zip(knots[:-1], knots[1:]):
        a, b = pts[i0], pts[i1]
        ra, rb = rad[i0], rad[i1]
        reach = max(ra, rb) + reach_mm
        sl = grid.bbox(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if sl is None:
            continue
        x, y, z = grid.open_coords(sl)
        ab = (b - a).astype(np.float32)
        l2 = float(np.dot(ab, ab))
        px, py, pz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
        if l2 > 0:
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / np.float32(l2), 0.0, 1.0)
        else:
            t = np.zeros(np.broadcast_shapes(px.shape, py.shape, pz.shape), np.float32)
        dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        sd = dist - (np.float32(ra) + t * np.float32(rb - ra))
        local = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(sl, sl_all))
        cur = sd_all[local]
        better = sd < cur
        if not better.any():
            continue
        inv = 1.0 / np.maximum(dist, np.float32(1e-6))
        w = _normal_width(dx * inv, dy * inv, dz * inv, grid.spacing).astype(np.float32)
        cur[better] = sd[better]
        w_all[local][better] = w[better]
    return sl_all, sd_all, w_all


def tube_layer(tube_sd, offset_mm: float = 0.0):
    """Occupancy ``(slices, occ)`` of a tube from :func:`tube_signed_distance`, grown by ``offset_mm`` (negative: shrunk)."""
    if tube_sd is None:
        return None
    sl, sd, w = tube_sd
    return sl, _ramp(sd - np.float32(offset_mm), w).astype(np.float32)


def tube_occupancy(grid: Grid, points, radii):
    """Occupancy ``(slices, occ)`` of a tube of (varying) ``radii`` around the centreline ``points``; see :func:`tube_signed_distance`."""
    return tube_layer(tube_signed_distance(grid, points, radii))


def paint(image: np.ndarray, shape_occ, hu: float) -> None:
    """Mix a tissue of ``hu`` into ``image`` in place by its occupancy: ``hu_old * (1 - f) + hu * f``."""
    if shape_occ is None:
        return
    sl, occ = shape_occ
    sub = image[sl]
    sub += occ * (np.float32(hu) - sub)


def scatter_mask(mask: np.ndarray, shape_occ, threshold: float = 0.5, value=1) -> None:
    """Set ``mask`` to ``value`` where the occupancy is at least ``threshold`` (in place)."""
    if shape_occ is None:
        return
    sl, occ = shape_occ
    sub = mask[sl]
    sub[np.broadcast_to(occ, sub.shape) >= threshold] = value


def fwhm_to_sigma_voxels(fwhm_mm, spacing) -> tuple[float, ...]:
    """Gaussian sigma in voxels for a FWHM in mm per axis."""
    return tuple(float(f) * FWHM_TO_SIGMA / float(s) for f, s in zip(fwhm_mm, spacing))


def psf_blur(image: np.ndarray, spacing, fwhm_mm, truncate: float = 3.0) -> np.ndarray:
    """Gaussian point-spread function of FWHM ``fwhm_mm`` (mm per axis; 0 skips an axis), in float32."""
    sigma = fwhm_to_sigma_voxels(fwhm_mm, spacing)
    if not any(s > 0 for s in sigma):
        return image.astype(np.float32, copy=False)
    return ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma, mode="nearest", truncate=truncate)


def _gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def blurred_noise_gain(spacing, fwhm_mm, truncate: float = 3.0) -> float:
    """Factor by which :func:`psf_blur` scales the standard deviation of white noise (exact, interior).

    The blurred noise has variance ``sum(k^2)`` times the white variance for a normalized kernel k,
    and the 3D kernel is separable, so the factor is the product over axes of ``sqrt(sum(k_a^2))``.
    """
    gain = 1.0
    for s in fwhm_to_sigma_voxels(fwhm_mm, spacing):
        if s > 0:
            gain *= float(np.sqrt((_gaussian_weights(s, truncate) ** 2).sum()))
    return gain


def add_noise(image: np.ndarray, rng: np.random.Generator, std, out_gain: float = 1.0) -> np.ndarray:
    """Add zero-mean Gaussian noise of standard deviation ``std / out_gain`` (scalar or broadcastable map).

    Use ``out_gain = blurred_noise_gain(...)`` when the PSF is applied afterwards, so that the noise
    in the final image has standard deviation ``std``. Returns ``image`` (float32, modified in place).
    """
    image = image.astype(np.float32, copy=False)
    if np.all(np.asarray(std) == 0):
        return image
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.asarray(std, np.float32) / np.float32(out_gain)
    image += noise
    return image


def quantize_hu(image: np.ndarray, lo: float = -1024.0, hi: float = 3071.0) -> np.ndarray:
    """Round to integer HU and clip to the stored range of a 12-bit CT scanner (int16)."""
    return np.clip(np.rint(image), lo, hi).astype(np.int16)


def orthonormal_frame(axis, hint) -> np.ndarray:
    """3x3 rotation whose first column is ``axis`` (normalized) and second the part of ``hint`` orthogonal to it."""
    u = np.asarray(axis, float)
    u = u / np.linalg.norm(u)
    v = np.asarray(hint, float) - np.dot(hint, u) * u
    v = v / np.linalg.norm(v)
    w = np.cross(u, v)
    return np.stack([u, v, w], axis=1)
