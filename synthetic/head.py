"""Synthetic non-contrast head CT with intracranial carotid artery calcification (ICAC).

The stand-in for the ICAC cohort of seed paper 1 (Bos et al., intracranial carotid artery
calcification on non-contrast head CT, Rotterdam Study practice; ``../shared/REFERENCES.md``
section 1, "ICAC volume"), which is not redistributable. A case is an analytic head model
rasterized on a raw-like CT grid: scalp, a three-layer calvarium (outer table, diploe, inner
table), the cranial floor with anterior/middle/posterior fossae, the petrous bones holding the
carotid canals, the sphenoid sinus and the anterior clinoid processes, brain (grey and white
matter), the subarachnoid CSF and the lateral ventricles, and both internal carotid arteries
from the petrous segment through the cavernous S-bend (the siphon) to the terminus.
Calcifications of controlled size and density (130 to 1000+ HU) sit in the carotid wall, some
touching the canal or sphenoid bone (the hard cases an ICAC method must not confuse with bone).

Coordinates. The model lives in a head frame (mm; x to the patient's right, y anterior, z
superior, origin near the brain centre). A random rigid pose (rotation and translation, per
seed; ``pose=False`` disables it) maps the head frame to the scanner's RAS world frame, so a
registration step has real work to do; anatomy (skull thickness, bone densities, lumen size,
grey/white contrast) varies per seed. Images follow the
project convention: spatial (X, Y, Z), axis 2 axial, HU float32 (integer-valued, like a
reconstructed CT), ``affine`` 4x4 RAS.

Ground truth. ``label`` holds {"ICA_left": 1, "ICA_right": 2} on the calcification voxels (the
voxels within one voxel of a calcification whose noise-free HU is >= 130 and that would not
reach 130 HU without the calcification, i.e. what an annotator outlines; noise later pushes a
few of them below 130, which the scoring's threshold removes). ``truth`` is the ICAC volume,
total and per side, computed by ``ctbundles.transforms.calcium_scoring.icac_volume`` on the
final noisy image (voxels >= 130 HU inside the label x voxel volume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ctbundles.synthetic.case import SyntheticCase

HEAD_LABELS = {"ICA_left": 1, "ICA_right": 2}
"""ICAC label values (the project's head convention)."""

DEFAULT_SHAPE = (512, 512, 200)
DEFAULT_SPACING = (0.45, 0.45, 0.7)
REFERENCE_SHAPE = (256, 256, 160)
REFERENCE_SPACING = (0.9, 0.9, 0.9)
GRID_CENTRE_MM = (0.0, 0.0, 10.0)
"""World position of the grid centre: the grid spans the head frame from below the skull base
(z about -60 mm) to the vertex (z about +80 mm) for the default 140 mm axial coverage."""

# Materials of the pre-blur material map, with their nominal HU (seed-dependent ones are set in
# ``_materials``).
AIR, SCALP, OUTER_TABLE, DIPLOE, INNER_TABLE, CSF, GREY, WHITE, VENTRICLE = range(9)
SKULL_BASE, PETROUS, CLINOID, SINUS_WALL, SINUS_AIR, SOFT, VESSEL_WALL, BLOOD = range(9, 17)
BONE_MATERIALS = (OUTER_TABLE, DIPLOE, INNER_TABLE, SKULL_BASE, PETROUS, CLINOID, SINUS_WALL)

# Centre line of the right internal carotid artery in the head frame (mm), from the vertical
# petrous segment, the horizontal petrous segment in the carotid canal, the foramen lacerum,
# the cavernous segment beside the sphenoid body, the anterior genu under the anterior clinoid
# process, to the supraclinoid segment and the terminus. The left one is its mirror (x -> -x).
ICA_CONTROL_POINTS = np.array(
    [
        (30.0, -21.0, -66.0),
        (30.0, -18.0, -55.0),
        (26.0, -11.0, -50.0),
        (21.0, -3.0, -47.5),
        (17.5, 4.0, -44.0),
        (16.5, 10.0, -39.0),
        (16.5, 17.0, -38.0),
        (16.5, 23.0, -36.5),
        (16.0, 27.0, -32.0),
        (15.5, 24.0, -27.5),
        (15.0, 18.0, -25.0),
        (16.5, 14.0, -19.0),
        (18.0, 12.0, -14.0),
    ]
)
# Arc-length fractions (of the whole centre line) where the segments change, used to place
# calcifications: [0, PETROUS_END) petrous, [PETROUS_END, CAVERNOUS_END) cavernous, rest
# supraclinoid.
PETROUS_END = 0.36
CAVERNOUS_END = 0.72


@dataclass(frozen=True)
class Calcification:
    """One calcified plaque in the carotid wall.

    Attributes:
        side: "left" or "right" (patient side; left is x < 0 in RAS).
        t: position along the centre line, fraction of its arc length (0 petrous .. 1 terminus).
        angle_deg: direction around the vessel in the cross-section (0 = lateral, 90 = up).
        radius_mm: cross-sectional radius of the plaque.
        length_mm: extent along the vessel (an ellipsoid with this long axis); for "box" the
            three edge lengths are (length_mm, 2 radius_mm, 2 radius_mm) along the world axes.
        hu: density of the calcium (the voxels fully inside the plaque take this value).
        depth: distance of the plaque centre from the centre line in lumen radii (1 = on the
            inner surface of the wall, about 1.1 = inside the wall).
        shape: "ellipsoid" (default) or "box" (axis-aligned box snapped to voxel boundaries,
            for exact analytic checks with ``pose=False``).
    """

    side: str
    t: float
    angle_deg: float
    radius_mm: float
    length_mm: float
    hu: float
    depth: float = 1.1
    shape: str = "ellipsoid"


# --------------------------------------------------------------------------------------------
# small phantom helpers (kept here so this module works without the chest helpers)
# --------------------------------------------------------------------------------------------


def _grid_affine(shape, spacing, centre_mm=GRID_CENTRE_MM) -> np.ndarray:
    """RAS affine of an axial grid with the given spacing whose centre is ``centre_mm``."""
    spacing = np.asarray(spacing, float)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(centre_mm, float) - spacing * (np.asarray(shape, float) - 1) / 2.0
    return affine


def gaussian_psf(volume: np.ndarray, spacing, sigma_mm) -> np.ndarray:
    """Scanner point-spread function: a Gaussian blur with per-axis sigma in mm."""
    sigma_vox = np.asarray(sigma_mm, float) / np.asarray(spacing, float)
    return ndimage.gaussian_filter(volume, sigma=sigma_vox, mode="nearest", truncate=3.0)


def _supersampled_occupancy(inside, lo, hi, factor=3):
    """Fraction of each voxel of the index box [lo, hi) for which ``inside(ijk_points)`` holds.

    ``inside`` receives (N, 3) voxel-index coordinates of sub-voxel sample points and returns a
    boolean (N,) array. ``factor`` samples per axis (factor**3 per voxel)."""
    lo = np.asarray(lo, int)
    hi = np.asarray(hi, int)
    size = hi - lo
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    axes = [lo[a] + (np.arange(size[a])[:, None] + offsets[None, :]).ravel() for a in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    hits = inside(grid).reshape(size[0], factor, size[1], factor, size[2], factor)
    return hits.mean(axis=(1, 3, 5))


# --------------------------------------------------------------------------------------------
# the head model
# --------------------------------------------------------------------------------------------


@dataclass
class _HeadModel:
    """Seed-dependent anatomy parameters (all in head-frame mm)."""

    skin_axes: tuple = (76.0, 96.0, 76.0)
    skin_lower_z: float = 115.0
    skin_centre: tuple = (0.0, -6.0, 0.0)
    scalp_mm: float = 5.0
    skull_mm: float = 6.5
    table_mm: float = 1.6
    csf_mm: float = 1.5
    white_inset_mm: float = 13.0
    floor_mm: float = 5.0
    lumen_radius_mm: float = 2.3
    wall_mm: float = 0.5
    hu_table: float = 1500.0
    hu_diploe: float = 650.0
    hu_base: float = 1150.0
    hu_petrous: float = 1750.0
    hu_grey: float = 38.0
    hu_white: float = 28.0
    hu_csf: float = 8.0
    hu_blood: float = 42.0


def _random_model(rng: np.random.Generator) -> _HeadModel:
    return _HeadModel(
        skull_mm=float(rng.uniform(5.5, 7.5)),
        table_mm=float(rng.uniform(1.3, 2.0)),
        lumen_radius_mm=float(rng.uniform(2.0, 2.6)),
        hu_table=float(rng.uniform(1200.0, 1750.0)),
        hu_diploe=float(rng.uniform(450.0, 800.0)),
        hu_base=float(rng.uniform(1000.0, 1400.0)),
        hu_petrous=float(rng.uniform(1500.0, 2000.0)),
        hu_grey=float(rng.uniform(35.0, 40.0)),
        hu_white=float(rng.uniform(26.0, 31.0)),
        hu_blood=float(rng.uniform(38.0, 48.0)),
    )


def _hu_table(m: _HeadModel) -> np.ndarray:
    lut = np.zeros(17, np.float32)
    lut[AIR] = -1000.0
    lut[SCALP] = 35.0
    lut[OUTER_TABLE] = m.hu_table
    lut[DIPLOE] = m.hu_diploe
    lut[INNER_TABLE] = m.hu_table
    lut[CSF] = m.hu_csf
    lut[GREY] = m.hu_grey
    lut[WHITE] = m.hu_white
    lut[VENTRICLE] = m.hu_csf
    lut[SKULL_BASE] = m.hu_base
    lut[PETROUS] = m.hu_petrous
    lut[CLINOID] = 0.8 * m.hu_base
    lut[SINUS_WALL] = 0.7 * m.hu_base
    lut[SINUS_AIR] = -950.0
    lut[SOFT] = 40.0
    lut[VESSEL_WALL] = 45.0
    lut[BLOOD] = m.hu_blood
    return lut


def _floor_z(x, y):
    """Height (mm) of the cranial floor under (x, y): anterior fossa about -24 mm, middle fossa
    about -46 mm, posterior fossa about -58 mm, with the sphenoid body (sella) raised
    medially."""
    s1 = 1.0 / (1.0 + np.exp((y - 14.0) / 2.5))  # 1 behind the lesser wings
    s2 = 1.0 / (1.0 + np.exp((y + 22.0) / 2.5))  # 1 behind the petrous ridges
    z = -24.0 - 22.0 * s1 - 12.0 * s2
    medial = 1.0 / (1.0 + np.exp((np.abs(x) - 12.0) / 1.5)) * (1.0 - s2) * s1
    return z + 8.0 * medial


def _ellipsoid_q(px, py, pz, centre, axes, rot=None):
    """Normalized squared radius of head-frame points w.r.t. an ellipsoid (<= 1 inside)."""
    dx, dy, dz = px - centre[0], py - centre[1], pz - centre[2]
    if rot is not None:  # rows of rot: the ellipsoid's axes in the head frame
        dx, dy, dz = (rot[0, 0] * dx + rot[0, 1] * dy + rot[0, 2] * dz,
                      rot[1, 0] * dx + rot[1, 1] * dy + rot[1, 2] * dz,
                      rot[2, 0] * dx + rot[2, 1] * dy + rot[2, 2] * dz)
    return (dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2


def _petrous_rotation(side_sign: float) -> np.ndarray:
    """Axes of a petrous bone: long axis pointing antero-medially at 45 degrees."""
    long_axis = np.array([-side_sign, 1.0, 0.0]) / np.sqrt(2.0)
    second = np.array([side_sign, 1.0, 0.0]) / np.sqrt(2.0)
    return np.stack([long_axis, second, [0.0, 0.0, 1.0]])


def _skin_depth(px, py, pz, m: _HeadModel):
    """Approximate depth (mm) of head-frame points below the skin surface (negative outside).

    The skin is an ellipsoid whose lower half is taller (face and neck); the depth is the
    first-order distance (1 - rho) / |grad rho| of the normalized radius rho, exact on the
    axes and within a fraction of a millimetre for the few-mm offsets used for the layers."""
    c = m.skin_centre
    a, b = m.skin_axes[0], m.skin_axes[1]
    cz = np.where(pz >= c[2], np.float32(m.skin_axes[2]), np.float32(m.skin_lower_z))
    x = (px - c[0]) / a
    y = (py - c[1]) / b
    z = (pz - c[2]) / cz
    rho = np.sqrt(x * x + y * y + z * z)
    grad = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / cz) ** 2)
    return (1.0 - rho) * rho / np.maximum(grad, 1e-6)


def _paint_head(px, py, pz, m: _HeadModel) -> np.ndarray:
    """Material map of the large structures (scalp, calvarium, floor, CSF, brain)."""
    mat = np.zeros(px.shape, np.uint8)
    depth = _skin_depth(px, py, pz, m)
    floor = _floor_z(px, py)
    above_floor = pz > floor - m.floor_mm
    mat[depth >= 0] = SCALP
    mat[(depth >= m.scalp_mm) & above_floor] = OUTER_TABLE
    mat[(depth >= m.scalp_mm + m.table_mm) & above_floor] = DIPLOE
    mat[(depth >= m.scalp_mm + m.skull_mm - m.table_mm) & above_floor] = INNER_TABLE
    inner = depth >= m.scalp_mm + m.skull_mm
    mat[inner & (pz <= floor) & above_floor] = SKULL_BASE
    mat[inner & ~above_floor] = SOFT
    mat[inner & (pz > floor)] = CSF
    mat[(depth >= m.scalp_mm + m.skull_mm + m.csf_mm) & (pz > floor + m.csf_mm)] = GREY
    mat[(depth >= m.scalp_mm + m.skull_mm + m.white_inset_mm) & (pz > floor + m.white_inset_mm)] = WHITE
    return mat


def _small_structures(m: _HeadModel):
    """Small structures painted after the large ones, in order: (centre, semi-axes, rotation,
    material, condition) with ``condition(block_material, px, py, pz)`` restricting where the
    ellipsoid paints (None: everywhere)."""
    out = []

    def below_floor_inside(mat, px, py, pz):
        return (pz <= _floor_z(px, py)) & (_skin_depth(px, py, pz, m) >= m.scalp_mm + m.skull_mm)

    # foramen magnum (CSF) with the brain stem through the posterior fossa floor
    out.append(((0.0, -32.0, -60.0), (14.0, 17.0, 12.0), None, CSF, below_floor_inside))
    out.append(((0.0, -30.0, -60.0), (9.0, 10.0, 30.0), None, GREY, below_floor_inside))
    for s in (-1.0, 1.0):
        out.append(((s * 9.0, 2.0, 18.0), (5.5, 24.0, 8.0), None, VENTRICLE, None))
        out.append(((s * 12.0, -22.0, 8.0), (4.0, 9.0, 9.0), None, VENTRICLE, None))
    # sphenoid sinus (air with a thin bony wall) under the sella
    out.append(((0.0, 12.0, -45.0), (14.5, 12.5, 9.5), None, SINUS_WALL, None))
    out.append(((0.0, 12.0, -45.0), (13.0, 11.0, 8.0), None, SINUS_AIR, None))
    for s in (-1.0, 1.0):
        # anterior clinoid process; petrous bone along the petrous carotid canal
        out.append(((s * 12.5, 22.0, -30.0), (3.0, 6.5, 2.5), None, CLINOID, None))
        out.append(((s * 27.0, -13.0, -50.0), (24.0, 9.0, 9.0), _petrous_rotation(s), PETROUS, None))
    # frontal sinus in the frontal bone
    out.append(((0.0, 80.0, 2.0), (12.0, 7.0, 9.0), None, SINUS_AIR,
                lambda mat, px, py, pz: (mat != AIR) & (mat != SCALP)))
    return out


def ica_centreline(side: str, step_mm: float = 0.2):
    """Centre line of one ICA ("left" or "right") in the head frame: points (N, 3) every
    ``step_mm`` and their arc-length fractions (0 at the petrous entry, 1 at the terminus)."""
    pts = ICA_CONTROL_POINTS.copy()
    if side == "left":
        pts[:, 0] *= -1.0
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    spline = CubicSpline(chord, pts, axis=0, bc_type="natural")
    s = np.linspace(0.0, chord[-1], int(np.ceil(chord[-1] / (step_mm / 2))) + 1)
    dense = spline(s)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))]
    n = int(np.ceil(arc[-1] / step_mm)) + 1
    target = np.linspace(0.0, arc[-1], n)
    resampled = np.stack([np.interp(target, arc, dense[:, a]) for a in range(3)], axis=1)
    return resampled, target / arc[-1]


def _lumen_radius(frac, m: _HeadModel):
    """Lumen radius along the ICA: a gentle taper from the petrous segment to the terminus."""
    return m.lumen_radius_mm * (1.12 - 0.24 * np.asarray(frac))


# --------------------------------------------------------------------------------------------
# geometry of the posed grid
# --------------------------------------------------------------------------------------------


class _Pose:
    """World (RAS mm) <-> head frame: world = R @ (scale * head) + t (the generators use a rigid
    pose, scale 1)."""

    def __init__(self, rotation: np.ndarray, translation: np.ndarray, scale: float = 1.0):
        self.R = np.asarray(rotation, float)
        self.t = np.asarray(translation, float)
        self.scale = float(scale)

    def head_from_world(self, w):
        return ((np.asarray(w, float) - self.t) @ self.R) / self.scale

    def world_from_head(self, h):
        return (self.scale * np.asarray(h, float)) @ self.R.T + self.t


def _slab_coords(affine, pose: _Pose, i0, i1, j0, j1, k0, k1):
    """Head-frame coordinates (three float32 arrays) of the voxel block [i0:i1, j0:j1, k0:k1]."""
    ii = np.arange(i0, i1, dtype=np.float64)
    jj = np.arange(j0, j1, dtype=np.float64)
    kk = np.arange(k0, k1, dtype=np.float64)
    # world = A @ ijk (A diagonal for the grids written here, but keep it general)
    A = affine[:3, :3]
    M = (pose.R.T @ A) / pose.scale  # head = M @ ijk + b
    b = (pose.R.T @ (affine[:3, 3] - pose.t)) / pose.scale
    out = []
    for a in range(3):
        v = (M[a, 0] * ii)[:, None, None] + (M[a, 1] * jj)[None, :, None] + (M[a, 2] * kk)[None, None, :] + b[a]
        out.append(v.astype(np.float32))
    return out


def _index_bbox(affine, pose: _Pose, lo_head, hi_head, shape, margin_vox=2):
    """Voxel-index box [lo, hi) covering a head-frame box, clipped to the grid."""
    corners = np.array([[x, y, z] for x in (lo_head[0], hi_head[0]) for y in (lo_head[1], hi_head[1])
                        for z in (lo_head[2], hi_head[2])])
    world = pose.world_from_head(corners)
    ijk = (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - margin_vox, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + margin_vox + 1, np.asarray(shape))
    return lo, hi


# --------------------------------------------------------------------------------------------
# rasterization
# --------------------------------------------------------------------------------------------


def _rasterize_materials(shape, affine, pose: _Pose, m: _HeadModel, slab: int = 16) -> np.ndarray:
    mat = np.zeros(shape, np.uint8)
    for k0 in range(0, shape[2], slab):
        k1 = min(k0 + slab, shape[2])
        px, py, pz = _slab_coords(affine, pose, 0, shape[0], 0, shape[1], k0, k1)
        mat[:, :, k0:k1] = _paint_head(px, py, pz, m)
    for centre, axes, rot, material, condition in _small_structures(m):
        reach = max(axes)
        lo, hi = _index_bbox(affine, pose, np.subtract(centre, reach), np.add(centre, reach), shape)
        if np.any(hi <= lo):
            continue
        px, py, pz = _slab_coords(affine, pose, lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        block = mat[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = _ellipsoid_q(px, py, pz, centre, axes, rot) <= 1.0
        if condition is not None:
            inside &= condition(block, px, py, pz)
        block[inside] = material
    return mat


def _paint_vessels(mat, affine, pose: _Pose, m: _HeadModel):
    """Carve the carotid canals out of bone and paint wall and lumen of both ICAs (in place);
    returns side -> (centre line, arc fractions)."""
    lines = {}
    for side in ("right", "left"):
        line, frac = ica_centreline(side)
        lines[side] = (line, frac)
        reach = _lumen_radius(0.0, m) + m.wall_mm + 1.0
        lo, hi = _index_bbox(affine, pose, line.min(axis=0) - reach, line.max(axis=0) + reach, mat.shape)
        if np.any(hi <= lo):
            continue
        px, py, pz = _slab_coords(affine, pose, lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        pts = np.stack([px.ravel(), py.ravel(), pz.ravel()], axis=1)
        dist, idx = cKDTree(line).query(pts, distance_upper_bound=reach * 1.5)
        near = np.isfinite(dist)
        r = np.full(dist.shape, -1.0)
        r[near] = _lumen_radius(frac[idx[near]], m)
        dist = np.where(near, dist, np.inf)
        block = mat[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].reshape(-1)
        canal = dist <= (r + m.wall_mm + 0.6)
        is_bone = np.isin(block, BONE_MATERIALS)
        block[canal & is_bone] = SOFT
        block[dist <= r + m.wall_mm] = VESSEL_WALL
        block[dist <= r] = BLOOD
        mat[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = block.reshape(hi - lo)
    return lines


def _calc_geometry(calc: Calcification, lines, m: _HeadModel):
    """Centre (head frame), unit tangent and cross-section direction of a plaque."""
    line, frac = lines[calc.side]
    i = int(np.clip(np.searchsorted(frac, calc.t), 1, len(frac) - 2))
    tangent = line[i + 1] - line[i - 1]
    tangent /= np.linalg.norm(tangent)
    lateral = np.array([1.0 if calc.side == "right" else -1.0, 0.0, 0.0])
    e1 = lateral - tangent * (lateral @ tangent)
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.array([0.0, 1.0, 0.0]) - tangent * tangent[1]
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(tangent, e1)
    a = np.deg2rad(calc.angle_deg)
    normal = np.cos(a) * e1 + np.sin(a) * e2
    centre = line[i] + calc.depth * float(_lumen_radius(frac[i], m)) * normal
    return centre, tangent, normal


def _calc_occupancy(calc: Calcification, lines, m, affine, pose: _Pose, shape):
    """Partial-volume occupancy of one plaque on its voxel box; returns (lo, hi, fraction)."""
    centre, tangent, normal = _calc_geometry(calc, lines, m)
    inv_a = np.linalg.inv(affine[:3, :3])
    if calc.shape == "box":
        # axis-aligned in the world, edges on voxel boundaries: exact voxel counts
        centre_w = pose.world_from_head(centre)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        centre_ijk = np.rint((centre_w - affine[:3, 3]) @ inv_a.T)
        n_vox = np.maximum(np.rint(np.array([calc.length_mm, 2 * calc.radius_mm, 2 * calc.radius_mm]) / spacing), 1)
        lo_f = centre_ijk - np.floor(n_vox / 2) - 0.5
        hi_f = lo_f + n_vox

        def inside(ijk):
            return np.all((ijk >= lo_f) & (ijk < hi_f), axis=1)

        lo = np.maximum(np.floor(lo_f).astype(int), 0)
        hi = np.minimum(np.ceil(hi_f).astype(int) + 1, np.asarray(shape))
    else:
        # head-frame ellipsoid: long axis along the vessel; sizes are physical mm
        half = np.array([calc.length_mm / 2.0, calc.radius_mm, calc.radius_mm]) / pose.scale
        e2 = np.cross(tangent, normal)
        axes = np.stack([tangent, normal, e2])
        reach = half.max()
        lo, hi = _index_bbox(affine, pose, centre - reach, centre + reach, shape, margin_vox=1)

        def inside(ijk):
            world = ijk @ affine[:3, :3].T + affine[:3, 3]
            d = pose.head_from_world(world) - centre
            q = d @ axes.T
            return ((q / half) ** 2).sum(axis=1) <= 1.0

    if np.any(hi <= lo):
        return lo, hi, np.zeros(np.maximum(hi - lo, 0), np.float32)
    return lo, hi, _supersampled_occupancy(inside, lo, hi).astype(np.float32)


def _random_calcifications(rng: np.random.Generator, n_range) -> list[Calcification]:
    calcs = []
    for side in ("left", "right"):
        for _ in range(int(rng.integers(n_range[0], n_range[1] + 1))):
            segment = rng.choice(3, p=[0.35, 0.35, 0.30])
            lo, hi = [(0.08, PETROUS_END), (PETROUS_END, CAVERNOUS_END), (CAVERNOUS_END, 0.95)][segment]
            # plaques facing medially in the cavernous segment touch the sphenoid wall
            angle = rng.uniform(150.0, 210.0) if (segment == 1 and rng.random() < 0.5) else rng.uniform(0.0, 360.0)
            hu = float(np.clip(130.0 + rng.lognormal(np.log(350.0), 0.7), 160.0, 1600.0))
            calcs.append(Calcification(
                side=side, t=float(rng.uniform(lo, hi)), angle_deg=float(angle),
                radius_mm=float(rng.uniform(0.5, 1.6)), length_mm=float(rng.uniform(1.0, 5.0)),
                hu=round(hu), depth=float(rng.uniform(1.0, 1.25)),
            ))
    return calcs


def _as_calcification(c) -> Calcification:
    return c if isinstance(c, Calcification) else Calcification(**c)


def _random_pose(rng: np.random.Generator, max_rotation_deg, max_translation_mm) -> _Pose:
    angles = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_rotation_deg, float)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    trans = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_translation_mm, float)
    return _Pose(rot, trans, 1.0)


def _icac_truth(image, label, spacing):
    """ICAC volume with the project's scoring code (``icac_volume``)."""
    from ctbundles.transforms.calcium_scoring import icac_volume

    return icac_volume(image, label, spacing, label_names=HEAD_LABELS)


def _render(shape, spacing, pose: _Pose, m: _HeadModel, calcs, blur_sigma_mm, noise_sd, rng,
            integer_hu=True, grid_centre_mm=GRID_CENTRE_MM):
    """Rasterize the model: returns image, label, material map, per-calcification records."""
    shape = tuple(int(s) for s in shape)
    affine = _grid_affine(shape, spacing, grid_centre_mm)
    mat = _rasterize_materials(shape, affine, pose, m)
    lines = _paint_vessels(mat, affine, pose, m)
    lut = _hu_table(m)
    hu = lut[mat]
    records, occupancies = [], []
    for calc in calcs:
        lo, hi, occ = _calc_occupancy(calc, lines, m, affine, pose, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        if occ.size:
            hu[sl] = hu[sl] * (1.0 - occ) + np.float32(calc.hu) * occ
        occupancies.append((sl, occ))
    sigma = np.broadcast_to(np.asarray(0.0 if blur_sigma_mm is None else blur_sigma_mm, float), 3)
    blurred = gaussian_psf(hu, spacing, sigma) if np.any(sigma > 0) else hu
    label = np.zeros(shape, np.uint8)
    spacing_arr = np.asarray(spacing, float)
    margin = np.ceil(3.0 * sigma / spacing_arr).astype(int) + np.ceil(1.0 / spacing_arr).astype(int) + 2
    for calc, (sl, occ) in zip(calcs, occupancies):
        value = HEAD_LABELS["ICA_left" if calc.side == "left" else "ICA_right"]
        centre, _, _ = _calc_geometry(calc, lines, m)
        record = {**calc.__dict__, "centre_mm": pose.world_from_head(centre).tolist(), "voxels_occupied": 0,
                  "volume_mm3_nominal": 0.0, "near_bone": False, "bone_distance_mm": None}
        if occ.size and occ.max() > 0:
            # a block around the plaque, large enough for the blur and the 1 mm bone search
            lo = [max(s.start - g, 0) for s, g in zip(sl, margin)]
            hi = [min(s.stop + g, n) for s, g, n in zip(sl, margin, shape)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            plaque = np.zeros(tuple(b - a for a, b in zip(lo, hi)), bool)
            plaque[tuple(slice(s.start - a, s.stop - a) for s, a in zip(sl, lo))] = occ > 0
            bone = np.isin(mat[box], BONE_MATERIALS)
            base = lut[mat[box]]  # the same block without the plaque
            if np.any(sigma > 0):
                base = gaussian_psf(base, spacing, sigma)
            # the outline an annotator draws: within one voxel of the plaque, >= 130 HU without
            # noise, and below 130 HU were the plaque absent (blur from bone stays out)
            near = ndimage.binary_dilation(plaque, structure=np.ones((3, 3, 3), bool))
            outline = near & (blurred[box] >= 130.0) & (base < 130.0) & ~bone
            label[box][outline] = value
            record["voxels_occupied"] = int(plaque.sum())
            record["volume_mm3_nominal"] = float(occ.sum() * np.prod(spacing_arr))
            if bone.any():
                # distance between voxel centres of the plaque and the nearest bone voxel
                dist = ndimage.distance_transform_edt(~bone, sampling=spacing_arr)
                record["bone_distance_mm"] = float(dist[plaque].min())
                record["near_bone"] = record["bone_distance_mm"] <= 1.0 + 1e-6
        records.append(record)
    image = blurred if blurred is not hu else hu.copy()
    if noise_sd and noise_sd > 0:
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= np.float32(noise_sd)
        image += noise
        del noise
    np.maximum(image, np.float32(-1024.0), out=image)
    if integer_hu:
        np.rint(image, out=image)
    return image, label, mat, affine, records, lines


def generate_head(
    seed: int,
    *,
    shape=DEFAULT_SHAPE,
    spacing=DEFAULT_SPACING,
    pose: bool = True,
    max_rotation_deg=(10.0, 6.0, 6.0),
    max_translation_mm=(8.0, 8.0, 6.0),
    calcifications=None,
    n_calcifications=(0, 4),
    noise_sd: float = 5.0,
    blur_sigma_mm=(0.35, 0.35, 0.4),
    vary_anatomy: bool = True,
    compute_truth: bool = True,
    grid_centre_mm=GRID_CENTRE_MM,
) -> SyntheticCase:
    """One synthetic non-contrast head CT with ICAC ground truth (see the module docstring).

    Args:
        seed: the case's random seed; the same seed gives the same case.
        shape: grid size (X, Y, Z); default 512 x 512 x 200 (a raw head CT).
        spacing: voxel size in mm; default 0.45 x 0.45 x 0.7 mm (230 mm field of view, 140 mm
            from below the skull base to the vertex).
        pose: apply a random rigid pose (rotation about each axis within ``max_rotation_deg``,
            translation within ``max_translation_mm``); False puts the head frame on the world.
        calcifications: explicit plaques (``Calcification`` or dicts of its fields); default a
            random set of ``n_calcifications`` (min, max) per side.
        noise_sd: standard deviation of the additive Gaussian noise in HU (0 disables).
        blur_sigma_mm: Gaussian point-spread function sigma per axis in mm (None or 0 disables).
        vary_anatomy: draw skull thickness, bone densities, lumen size, ... from the seed.
        compute_truth: compute ``truth`` with the scoring code.
        grid_centre_mm: world position of the grid centre (default: the whole head; tests put
            a small fine grid on one carotid).
    """
    rng = np.random.default_rng(seed)
    model = _random_model(rng) if vary_anatomy else _HeadModel()
    head_pose = _random_pose(rng, max_rotation_deg, max_translation_mm) if pose else _Pose(np.eye(3), np.zeros(3), 1.0)
    if calcifications is None:
        calcs = _random_calcifications(rng, n_calcifications)
    else:
        calcs = [_as_calcification(c) for c in calcifications]
    noise_rng = np.random.default_rng([seed, 1])
    image, label, _, affine, records, _ = _render(shape, spacing, head_pose, model, calcs, blur_sigma_mm,
                                                  noise_sd, noise_rng, grid_centre_mm=grid_centre_mm)
    spacing_arr = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    case = SyntheticCase(
        kind="head",
        case_id=f"head_{seed:04d}",
        image=image,
        affine=affine,
        label=label,
        label_names=dict(HEAD_LABELS),
        meta={
            "patient_id": f"SYNTH-HEAD-{seed:04d}",
            "kvp": 120.0,
            "slice_thickness_mm": float(spacing_arr[2]),
            "slice_increment_mm": float(spacing_arr[2]),
            "convolution_kernel": "synthetic-H30",
            "manufacturer": "ctbundles synthetic",
            "contrast": False,
            "pose": {"rotation": head_pose.R.tolist(), "translation_mm": head_pose.t.tolist(),
                     "convention": "world = R @ head + t (RAS mm)"},
            "calcifications": records,
            "n_near_bone": int(sum(r["near_bone"] for r in records)),
            "noise_sd_hu": float(noise_sd or 0.0),
            "blur_sigma_mm": None if blur_sigma_mm is None else list(np.broadcast_to(blur_sigma_mm, 3).astype(float)),
            "seed": int(seed),
        },
    )
    if compute_truth:
        case.truth = _icac_truth(image, label, spacing_arr)
    return case


def reference_head(shape=REFERENCE_SHAPE, spacing=REFERENCE_SPACING, blur_sigma_mm=(0.35, 0.35, 0.4),
                   roi_margin_mm: float = 4.0) -> SyntheticCase:
    """The canonical head model: no pose, no noise, mean anatomy, no calcification.

    This is the registration reference (atlas) the ICAC bundle ships: the head frame equals the
    world frame, so the ICA course is known exactly. Its ``label`` is the carotid region of
    interest, {"ICA_left": 1, "ICA_right": 2} on voxels within ``roi_margin_mm`` of the outer
    wall of each ICA (the region a registered atlas hands to the calcification step).
    Deterministic: no random numbers are drawn.
    """
    model = _HeadModel()
    pose = _Pose(np.eye(3), np.zeros(3), 1.0)
    image, _, mat, affine, _, lines = _render(shape, spacing, pose, model, [], blur_sigma_mm, 0.0, None)
    label = np.zeros(image.shape, np.uint8)
    for side, (line, frac) in lines.items():
        reach = float(_lumen_radius(0.0, model)) + model.wall_mm + roi_margin_mm
        lo, hi = _index_bbox(affine, pose, line.min(axis=0) - reach, line.max(axis=0) + reach, image.shape)
        px, py, pz = _slab_coords(affine, pose, lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        pts = np.stack([px.ravel(), py.ravel(), pz.ravel()], axis=1)
        dist, idx = cKDTree(line).query(pts, distance_upper_bound=reach * 1.5)
        ok = np.isfinite(dist)
        roi = np.zeros(dist.shape, bool)
        roi[ok] = dist[ok] <= _lumen_radius(frac[idx[ok]], model) + model.wall_mm + roi_margin_mm
        block = label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        block[roi.reshape(block.shape)] = HEAD_LABELS[f"ICA_{side}"]
    spacing_arr = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return SyntheticCase(
        kind="head",
        case_id="head_reference",
        image=image,
        affine=affine,
        label=label,
        label_names=dict(HEAD_LABELS),
        meta={
            "patient_id": "SYNTH-HEAD-REFERENCE",
            "kvp": 120.0,
            "slice_thickness_mm": float(spacing_arr[2]),
            "slice_increment_mm": float(spacing_arr[2]),
            "manufacturer": "ctbundles synthetic",
            "contrast": False,
            "label_meaning": f"carotid region of interest: within {roi_margin_mm} mm of each ICA's outer wall",
            "ica_centrelines_mm": {side: line[:: max(1, len(line) // 200)].tolist() for side, (line, _) in lines.items()},
        },
    )
