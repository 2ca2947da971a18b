"""Synthetic non-contrast chest and ECG-gated cardiac CT with labelled coronary calcium.

Stand-ins for the calcium-scoring data the bundles are trained and tested on when the real data
(orCaScore, Wolterink et al., Med Phys 2016; the chest CT sets of Lessmann et al., IEEE TMI 2018)
are not at hand. A case is a thorax phantom painted with :mod:`ctbundles.synthetic.phantom_ops`:

* body (subcutaneous fat, muscle), lungs, spine (vertebral bodies with cortex, cancellous bone and
  discs, posterior arch, spinous processes), ribs with costal cartilage, sternum;
* heart (myocardium, blood pool ~40 HU as without contrast) in a layer of epicardial fat; the aorta
  (root, ascending, arch, descending) in mediastinal fat;
* a coronary tree on the heart surface, in the epicardial fat: LM from the left aortic sinus
  splitting into LAD (anterior interventricular groove) and LCX (left atrioventricular groove),
  and the RCA (right atrioventricular groove, then the posterior descending branch), as tubes of
  tapering radius along smooth 3D curves;
* calcified coronary plaques (ellipsoids or boxes of set size and density, 130 to 1000+ HU) on the
  artery walls: the LABELLED positives;
* hard negatives that are NOT labelled: aortic valve and aortic wall calcifications, and
  calcifications touching bone (a rib, the front of a vertebral body);
* the scanner: Gaussian point-spread function, correlated Gaussian noise whose standard deviation
  grows towards the centre of the body, integer HU.

Protocols (``PROTOCOLS``): ``cardiac`` is an ECG-gated calcium-scoring scan (FOV ~205 mm centred on
the heart, 0.4 mm pixels, 3 mm slices every 3 mm, 120 kVp); ``chest`` a low-dose chest CT (FOV
330-380 mm, 0.64-0.74 mm pixels, 1 to 2.5 mm slices, noisier). Both 512 x 512 in plane by default.

Labels: {"LM": 1, "LAD": 2, "LCX": 3, "RCA": 4} mark each plaque's region (where the plaque's
blurred occupancy is at least ``LABEL_MIN_OCCUPANCY``), not only its voxels >= 130 HU: the scoring's
130 HU rule decides what counts. ``extra["heart_mask"]`` is the pericardial sac (heart plus
epicardial fat, which holds the coronaries). ``truth`` is the output of
``ctbundles.transforms.calcium_scoring.score_calcium`` on the final image and label, plus the
generator's list of plaques and hard negatives under ``truth["generator"]``.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same case.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ctbundles.atomic_io import to_jsonable
from ctbundles.synthetic import phantom_ops as ops
from ctbundles.synthetic.case import SyntheticCase

CORONARY_LABELS = {"LM": 1, "LAD": 2, "LCX": 3, "RCA": 4}
"""Native label values of the synthetic chest/cardiac cases."""

LABEL_MIN_OCCUPANCY = 0.02
"""A voxel belongs to a plaque's label where the plaque's PSF-blurred occupancy is at least this."""

PROTOCOLS = {
    "cardiac": {
        "description": "ECG-gated non-contrast calcium-scoring CT (Agatston protocol)",
        "in_plane": 512,
        "pixel_mm": (0.4, 0.4),
        "slice_mm": (3.0,),
        "z_coverage_mm": (120.0, 156.0),
        "center": "heart",
        "noise_std_hu": (16.0, 26.0),
        "psf_fwhm_mm": (0.7, 0.7, 1.0),
        "kvp": 120,
        "ecg_gated": True,
        "kernel": "SYNTH_CARDIAC_SOFT",
        "small": {"shape": (128, 128, 40), "spacing": (1.2, 1.2, 3.0)},
    },
    "chest": {
        "description": "low-dose non-contrast chest CT (lung screening style)",
        "in_plane": 512,
        "pixel_mm": (0.64, 0.74),
        "slice_mm": (1.0, 1.25, 1.5, 2.0, 2.5),
        "z_coverage_mm": (170.0, 200.0),
        "center": "body",
        "noise_std_hu": (30.0, 50.0),
        "psf_fwhm_mm": (0.9, 0.9, 0.8),
        "kvp": 120,
        "ecg_gated": False,
        "kernel": "SYNTH_CHEST_SOFT",
        "small": {"shape": (160, 160, 64), "spacing": (2.0, 2.0, 2.5)},
    },
}

ARTERY_WEIGHTS = {"LM": 0.08, "LAD": 0.42, "LCX": 0.2, "RCA": 0.3}


# ----------------------------------------------------------------------------------------- anatomy
def _anatomy(rng: np.random.Generator) -> dict:
    """Patient-specific sizes, positions and tissue HU (LPS mm, z = 0 near the heart centre)."""
    s_body = rng.uniform(0.9, 1.12)
    body = np.array([160.0 * s_body, 115.0 * s_body * rng.uniform(0.92, 1.08)])
    fat = rng.uniform(8.0, 25.0)
    apex_dir = np.array([0.62, -0.5, -0.6]) + rng.normal(0, 0.06, 3)
    heart_rot = ops.orthonormal_frame(apex_dir, [0.0, -1.0, 0.0])
    s_heart = rng.uniform(0.9, 1.1)
    heart_axes = np.array([62.0, 48.0, 44.0]) * s_heart
    heart_c = np.array([18.0, -18.0, -5.0]) + rng.normal(0, 4.0, 3)
    inner_y = body[1] - fat
    return {
        "body": body,
        "fat_mm": fat,
        "hu": {
            "fat": rng.uniform(-110, -85),
            "muscle": rng.uniform(40, 55),
            "lung": rng.uniform(-880, -830),
            "myocardium": rng.uniform(42, 52),
            "blood": rng.uniform(36, 44),
            "cortex": rng.uniform(600, 800),
            "cancellous": rng.uniform(130, 220),
            "disc": rng.uniform(70, 95),
            "cartilage": rng.uniform(90, 115),
            "csf": rng.uniform(15, 30),
        },
        "heart_c": heart_c,
        "heart_rot": heart_rot,
        "heart_axes": heart_axes,
        "epicardial_fat_mm": rng.uniform(4.0, 7.0),
        "spine_y": inner_y * 0.6,
        "sternum_y": -(inner_y - 11.0),
        "vertebra_period": rng.uniform(27.0, 31.0),
        "vertebra_phase": rng.uniform(0, 1),
        "lung_z": rng.uniform(10.0, 30.0),
    }


def _heart_surface(an: dict, theta, phi, offset_mm: float) -> np.ndarray:
    """Points on the heart ellipsoid grown by ``offset_mm``: theta 0 at the base, pi at the apex."""
    a = an["heart_axes"] + offset_mm
    theta, phi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(phi, float))
    local = np.stack([-a[0] * np.cos(theta), a[1] * np.sin(theta) * np.cos(phi), a[2] * np.sin(theta) * np.sin(phi)], -1)
    return an["heart_c"] + local @ an["heart_rot"].T


def _aorta(an: dict, z_min: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Aorta centreline (root, ascending, arch, descending) and radii; plus root facts."""
    u = an["heart_rot"][:, 0]
    base = an["heart_c"] - u * an["heart_axes"][0] * 0.78
    root = base + np.array([-14.0, -6.0, 6.0])
    r_root = 14.0
    desc_xy = np.array([26.0, an["spine_y"] - 30.0])
    top = root[2] + 70.0
    ctrl = [
        root - np.array([0, 0, 4.0]),
        root,
        root + np.array([-3.0, -4.0, 30.0]),
        root + np.array([0.0, 0.0, 58.0]),
        [root[0] + 14.0, (root[1] + desc_xy[1]) / 2, top + 8.0],
        [desc_xy[0] - 3.0, desc_xy[1] - 8.0, top - 6.0],
        [desc_xy[0], desc_xy[1], top - 40.0],
        [desc_xy[0], desc_xy[1], min(z_min - 30.0, top - 80.0)],
    ]
    radii = [r_root, r_root, 15.0, 14.0, 13.0, 12.5, 12.0, 11.0]
    pts, rad, _ = ops.sample_curve(ctrl, step_mm=0.5, radii=radii)
    direction = (np.asarray(ctrl[2]) - root) / np.linalg.norm(np.asarray(ctrl[2]) - root)
    return pts, rad, {"root": root, "r_root": r_root, "direction": direction, "desc_xy": desc_xy}


def _coronaries(an: dict, aorta: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Centrelines (M x 3 mm) and radii of LM, LAD, LCX and RCA on the heart surface."""
    off = an["epicardial_fat_mm"] * 0.45
    th_av = 0.52
    bif = _heart_surface(an, th_av, -0.6, off)
    root, r_root = aorta["root"], aorta["r_root"]
    ost_l = root + r_root * (bif - root) / np.linalg.norm(bif - root)
    lm_ctrl = [ost_l, ost_l + 0.5 * (bif - ost_l) + np.array([0, 0, 1.5]), bif]
    lad_t = np.linspace(0, 1, 7)
    lad_ctrl = [bif] + list(_heart_surface(an, th_av + 0.12 + 2.1 * lad_t[1:], -0.6 + 0.45 * lad_t[1:], off))
    lcx_t = np.linspace(0, 1, 6)
    lcx_ctrl = [bif] + list(_heart_surface(an, th_av + 0.08 * lcx_t[1:], -0.6 - 1.8 * lcx_t[1:], off))
    r0 = _heart_surface(an, th_av, 0.55, off)
    ost_r = root + r_root * (r0 - root) / np.linalg.norm(r0 - root)
    rca_groove = list(_heart_surface(an, th_av, np.linspace(0.55, 2.7, 6), off))
    rca_pda = list(_heart_surface(an, np.linspace(th_av + 0.35, 1.7, 4), 2.95, off))
    rca_ctrl = [ost_r] + rca_groove + rca_pda
    out = {}
    for name, ctrl, r_start, r_end in (
        ("LM", lm_ctrl, 2.1, 2.0),
        ("LAD", lad_ctrl, 1.8, 0.8),
        ("LCX", lcx_ctrl, 1.7, 0.9),
        ("RCA", rca_ctrl, 1.9, 1.0),
    ):
        radii = np.linspace(r_start, r_end, len(ctrl))
        pts, rad, _ = ops.sample_curve(ctrl, step_mm=0.2, radii=radii)
        out[name] = (pts, rad)
    return out


def _vertebra_levels(an: dict, z_lo: float, z_hi: float) -> list[float]:
    p = an["vertebra_period"]
    k0 = math.floor((z_lo - 2 * p) / p)
    return [(k + an["vertebra_phase"]) * p for k in range(k0, k0 + int((z_hi - z_lo) / p) + 6)]


def _rib_curve(an: dict, z_level: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A rib (posterior at the spine, around the side, sloping down anteriorly) then its cartilage."""
    bx = an["body"][0] - an["fat_mm"] - 14.0
    by = an["body"][1] - an["fat_mm"] - 12.0
    alpha = np.linspace(0.45, 2.55, 9)
    drop = 45.0 * (alpha - alpha[0]) / (alpha[-1] - alpha[0])
    bone = np.stack([side * bx * np.sin(alpha), by * np.cos(alpha), z_level - drop], -1)
    bone[0] = [side * 24.0, an["spine_y"] + 4.0, z_level + 2.0]
    cart = np.array([[side * 18.0, an["sternum_y"] + 2.0, z_level - 56.0]])
    return bone, cart


# ----------------------------------------------------------------------------------------- shapes
def _plaque_occupancy(grid: ops.Grid, spec: dict):
    if spec["shape"] == "box":
        return ops.box_occupancy(grid, spec["center_mm"], spec["size_mm"])
    rot = np.asarray(spec["rotation"]) if spec.get("rotation") is not None else None
    return ops.ellipsoid_occupancy(grid, spec["center_mm"], np.asarray(spec["size_mm"]) / 2.0, rot, supersample=3)


def _perpendicular(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    v -= np.dot(v, t) * t
    return v / np.linalg.norm(v)


def _inside(grid: ops.Grid, p, margin_mm: float = 3.0) -> bool:
    lo = np.asarray(grid.origin) + margin_mm
    hi = np.asarray(grid.origin) + (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing) - margin_mm
    return bool(np.all(p >= lo) and np.all(p <= hi))


def _random_plaques(rng, arteries, n, grid, length_scale: float = 1.0) -> list[dict]:
    names = list(ARTERY_WEIGHTS)
    probs = np.array([ARTERY_WEIGHTS[k] for k in names])
    out = []
    for _ in range(n):
        for _attempt in range(20):
            name = names[rng.choice(len(names), p=probs / probs.sum())]
            pts, rad = arteries[name]
            lo = 0.25 if name == "LM" else 0.05  # keep clear of the ostium (and the aortic root)
            t = lo + (0.95 - lo) * rng.beta(1.5, 2.8)  # proximal segments calcify most often
            i = int(t * (len(pts) - 1))
            if _inside(grid, pts[i], 6.0):
                break
        else:
            continue
        u = rng.random()
        hu = rng.uniform(150, 260) if u < 0.2 else rng.uniform(260, 700) if u < 0.7 else rng.uniform(700, 1400)
        out.append({
            "artery": name,
            "position": float(i / (len(pts) - 1)),
            "shape": "ellipsoid",
            "size_mm": [float(rng.uniform(1.5, 8.0) * length_scale), float(rng.uniform(1.0, 4.0)), float(rng.uniform(1.0, 4.0))],
            "hu": float(hu),
        })
    return out


def _resolve_plaque(spec: dict, arteries, grid, rng) -> dict:
    """Fill in a plaque's centre and orientation from its artery and position along it."""
    s = dict(spec)
    s.setdefault("shape", "ellipsoid")
    if s["artery"] not in CORONARY_LABELS:
        raise ValueError(f"plaque artery must be one of {sorted(CORONARY_LABELS)}, got {s['artery']!r}")
    pts, rad = arteries[s["artery"]]
    i = int(round(float(s.get("position", 0.3)) * (len(pts) - 1)))
    i = min(max(i, 1), len(pts) - 2)
    tangent = pts[i + 1] - pts[i - 1]
    tangent /= np.linalg.norm(tangent)
    perp = _perpendicular(tangent, rng)
    if "center_mm" not in s:
        offset = float(s.get("offset_mm", 0.5 * rad[i]))
        s["center_mm"] = pts[i] + perp * offset
    s["center_mm"] = np.asarray(s["center_mm"], float)
    s["size_mm"] = [float(v) for v in s["size_mm"]]
    if s["shape"] == "box":
        if s.get("snap_to_grid", False):
            s["center_mm"] = ops.snap_box_center(grid, s["center_mm"], s["size_mm"])
        s["rotation"] = None
    else:
        s["rotation"] = ops.orthonormal_frame(tangent, perp)
    s["hu"] = float(s["hu"])
    return s


def _hard_negatives(rng, an, aorta_info, aorta_pts, aorta_rad, ribs, vertebrae, grid) -> list[dict]:
    """Unlabelled calcifications: aortic valve, aortic wall, and touching bone (rib, vertebral body)."""
    out = []
    root, r_root, d = aorta_info["root"], aorta_info["r_root"], aorta_info["direction"]
    e1 = _perpendicular(d, rng)
    e2 = np.cross(d, e1)
    for _ in range(int(rng.integers(1, 4))):  # aortic valve: on the annulus, below the sinuses
        ang = rng.uniform(0, 2 * np.pi)
        c = root - d * 6.0 + (np.cos(ang) * e1 + np.sin(ang) * e2) * r_root * 0.55
        out.append({"kind": "aortic_valve", "center_mm": c, "size_mm": list(rng.uniform(1.5, 5.0, 3)), "hu": rng.uniform(300, 1100)})
    for _ in range(int(rng.integers(1, 4))):  # aortic wall: ascending, arch or descending
        cand = [i for i in range(0, len(aorta_pts), 10) if _inside(grid, aorta_pts[i], 5.0)]
        if not cand:
            break
        i = cand[int(rng.integers(len(cand)))]
        t = aorta_pts[min(i + 1, len(aorta_pts) - 1)] - aorta_pts[max(i - 1, 0)]
        t /= np.linalg.norm(t)
        n = _perpendicular(t, rng)
        c = aorta_pts[i] + n * (aorta_rad[i] - 0.5)
        out.append({"kind": "aortic_wall", "center_mm": c, "size_mm": list(rng.uniform(1.5, 6.0, 3)), "hu": rng.uniform(250, 1000)})
    for _ in range(int(rng.integers(1, 4))):  # touching bone
        if rng.random() < 0.5:
            pts, r = ribs[int(rng.integers(len(ribs)))]
            cand = [i for i in range(len(pts)) if _inside(grid, pts[i], 5.0)]
            if not cand:
                continue
            i = cand[int(rng.integers(len(cand)))]
            t = pts[min(i + 1, len(pts) - 1)] - pts[max(i - 1, 0)]
            t /= np.linalg.norm(t)
            n = _perpendicular(t, rng)
            size = rng.uniform(1.5, 4.0, 3)
            c = pts[i] + n * (r + 0.3 * size.min())
            kind = "rib"
        else:
            zc = [z for z in vertebrae if grid.origin[2] + 5 < z < grid.origin[2] + (grid.shape[2] - 1) * grid.spacing[2] - 5]
            if not zc:
                continue
            size = rng.uniform(1.5, 4.0, 3)
            c = np.array([rng.uniform(-12, 12), an["spine_y"] - 17.0 - 0.3 * size.min(), zc[int(rng.integers(len(zc)))] + rng.uniform(-8, 8)])
            kind = "vertebra"
        out.append({"kind": f"touching_{kind}", "center_mm": c, "size_mm": list(size), "hu": rng.uniform(300, 1000)})
    return out


# ----------------------------------------------------------------------------------------- public
def _protocol_grid(kind, rng, an, shape, spacing, small):
    """The case's grid: protocol values drawn from ``rng`` (always, so that overrides do not shift
    the random stream: the same seed keeps its anatomy and plaques), then the overrides applied."""
    proto = PROTOCOLS[kind]
    px = round(float(rng.uniform(*proto["pixel_mm"])), 3)
    dz = float(proto["slice_mm"][int(rng.integers(len(proto["slice_mm"])))])
    coverage = float(rng.uniform(*proto["z_coverage_mm"]))
    jitter = rng.normal(0, 3.0, 3)
    if small and shape is None and spacing is None:
        shape, spacing = proto["small"]["shape"], proto["small"]["spacing"]
    spacing = (px, px, dz) if spacing is None else tuple(float(v) for v in spacing)
    if shape is None:
        shape = (proto["in_plane"], proto["in_plane"], int(round(coverage / spacing[2])))
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"shape and spacing must be 3 positive values, got {shape} and {spacing}")
    if proto["center"] == "heart":
        center = an["heart_c"] + np.array([0.0, 0.0, 8.0]) + jitter
    else:
        center = np.array([0.0, 0.0, an["heart_c"][2] + 15.0]) + jitter
    return ops.Grid.centered(shape, spacing, center), spacing


def generate_coronary_ct(
    kind: str,
    seed: int,
    *,
    shape=None,
    spacing=None,
    small: bool = False,
    n_plaques: int | None = None,
    plaques: list[dict] | None = None,
    hard_negatives: bool = True,
    noise_std: float | None = None,
    psf: bool = True,
    psf_fwhm_mm=None,
    slice_thickness_mm: float | None = None,
    score: bool = True,
    case_id: str | None = None,
) -> SyntheticCase:
    """A synthetic non-contrast ``kind`` ("cardiac" or "chest") CT with labelled coronary calcium.

    Args:
        kind: protocol name in :data:`PROTOCOLS`.
        seed: seed of the case's ``numpy.random.default_rng``; the same seed gives the same case.
        shape: (X, Y, Z) override (default 512 x 512 x the protocol's coverage / slice spacing).
        spacing: (sx, sy, sz) mm override (default drawn from the protocol).
        small: use the protocol's small preset (coarser pixels, fewer voxels) for fast runs.
        n_plaques: number of random calcified plaques (default: none in ~15 % of cases, 1 to 8 in
            most, 10 to 18 longer ones in ~17 % so that every risk category occurs).
        plaques: explicit plaque specs instead of random ones: dicts with ``artery`` (LM, LAD, LCX,
            RCA), ``position`` (0..1 along the artery), ``shape`` ("ellipsoid" | "box"),
            ``size_mm`` (ellipsoid diameters along the artery and across it, or the box's x, y, z
            lengths), ``hu`` (density), optional ``offset_mm`` from the centreline,
            ``center_mm`` (LPS, overrides position) and ``snap_to_grid`` (box faces on voxel
            boundaries).
        hard_negatives: add unlabelled aortic valve/wall calcifications and calcium touching bone.
        noise_std: noise standard deviation in HU at the body centre (default drawn from the
            protocol; 0 disables the noise).
        psf: apply the point-spread function (blur). ``psf_fwhm_mm`` overrides its FWHM per axis.
        slice_thickness_mm: recorded slice thickness (default: the slice spacing).
        score: compute ``truth`` with the project's calcium scoring.
        case_id: identifier (default ``f"{kind}_{seed}"``).
    """
    if kind not in PROTOCOLS:
        raise ValueError(f"unknown coronary CT protocol {kind!r}; choose from {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[kind]
    rng = np.random.default_rng(seed)
    an = _anatomy(rng)
    grid, spacing = _protocol_grid(kind, rng, an, shape, spacing, small)
    noise_draw = rng.uniform(*proto["noise_std_hu"])
    noise_std = noise_draw if noise_std is None else float(noise_std)
    fwhm = tuple(proto["psf_fwhm_mm"]) if psf_fwhm_mm is None else tuple(float(f) for f in psf_fwhm_mm)
    if not psf:
        fwhm = (0.0, 0.0, 0.0)
    z_min = grid.origin[2]
    z_max = grid.origin[2] + (grid.shape[2] - 1) * grid.spacing[2]
    hu = an["hu"]

    img = np.full(grid.shape, -1000.0, np.float32)
    body_outer = ops.elliptic_cylinder_occupancy(grid, (0, 0), an["body"])
    ops.paint(img, body_outer, hu["fat"])
    ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, 0), an["body"] - an["fat_mm"]), hu["muscle"])
    bx, by = an["body"] - an["fat_mm"]
    lz = an["lung_z"]
    ops.paint(img, ops.ellipsoid_occupancy(grid, (-0.47 * bx, 0.05 * by, lz), (0.4 * bx, 0.78 * by, 115)), hu["lung"])
    ops.paint(img, ops.ellipsoid_occupancy(grid, (0.5 * bx, 0.1 * by, lz), (0.36 * bx, 0.76 * by, 115)), hu["lung"])

    # aorta in mediastinal fat
    aorta_pts, aorta_rad, aorta_info = _aorta(an, z_min)
    aorta_sd = ops.tube_signed_distance(grid, aorta_pts, aorta_rad, reach_mm=3.0)
    ops.paint(img, ops.tube_layer(aorta_sd, 3.0), hu["fat"])
    # heart: pericardial sac (epicardial fat), myocardium, blood pool
    hc, hr, ha = an["heart_c"], an["heart_rot"], an["heart_axes"]
    sac = ops.ellipsoid_occupancy(grid, hc, ha + an["epicardial_fat_mm"], hr)
    ops.paint(img, sac, hu["fat"])
    ops.paint(img, ops.ellipsoid_occupancy(grid, hc, ha, hr), hu["myocardium"])
    ops.paint(img, ops.ellipsoid_occupancy(grid, hc + hr @ np.array([0.08 * ha[0], 0, 0]), ha * 0.72, hr), hu["blood"])
    ops.paint(img, ops.tube_layer(aorta_sd), hu["blood"])
    arteries = _coronaries(an, aorta_info)
    for pts, rad in arteries.values():
        ops.paint(img, ops.tube_occupancy(grid, pts, rad), hu["blood"])

    # spine
    sy = an["spine_y"]
    vertebrae = _vertebra_levels(an, z_min, z_max)
    half_h = an["vertebra_period"] / 2 - 2.5
    mixed_bone = 0.5 * (hu["cortex"] + hu["cancellous"])  # thin cortex around marrow, at CT resolution
    ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, sy), (20.0, 17.0)), hu["disc"])
    for zv in vertebrae:
        ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, sy), (20.0, 17.0), zv - half_h, zv + half_h), hu["cortex"])
        ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, sy), (18.5, 15.5), zv - half_h + 1.5, zv + half_h - 1.5), hu["cancellous"])
        # posterior arch (pedicles, laminae) and spinous process, one per vertebra
        ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, sy + 27.0), (14.0, 12.0), zv - half_h + 3.0, zv + half_h - 3.0), mixed_bone)
        ops.paint(img, ops.ellipsoid_occupancy(grid, (0, sy + 48.0, zv - 4.0), (4.0, 12.0, 8.0)), mixed_bone)
    ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, sy + 27.0), (8.0, 7.0)), hu["csf"])
    # ribs and costal cartilage
    ribs = []
    for zv in vertebrae:
        for side in (-1, 1):
            bone, cart = _rib_curve(an, zv, side)
            pts, _, _ = ops.sample_curve(bone, step_mm=0.5)
            if pts[:, 2].max() < z_min - 10 or pts[:, 2].min() > z_max + 10:
                continue
            r = 5.0
            rib_sd = ops.tube_signed_distance(grid, pts, r)
            ops.paint(img, ops.tube_layer(rib_sd), hu["cortex"])
            ops.paint(img, ops.tube_layer(rib_sd, -1.3), hu["cancellous"])
            cpts, _, _ = ops.sample_curve(np.vstack([bone[-2:], cart]), step_mm=0.5)
            ops.paint(img, ops.tube_occupancy(grid, cpts[len(cpts) // 3 :], 4.5), hu["cartilage"])
            ribs.append((pts, r))
    # sternum
    ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, an["sternum_y"]), (15.0, 6.5)), hu["cortex"])
    ops.paint(img, ops.elliptic_cylinder_occupancy(grid, (0, an["sternum_y"]), (13.5, 5.0)), hu["cancellous"])

    # hard negatives (unlabelled calcium)
    negatives = _hard_negatives(rng, an, aorta_info, aorta_pts, aorta_rad, ribs, vertebrae, grid) if hard_negatives else []
    neg_mask = np.zeros(grid.shape, bool)
    for neg in negatives:
        occ = ops.ellipsoid_occupancy(grid, neg["center_mm"], np.asarray(neg["size_mm"]) / 2, None, supersample=2)
        ops.paint(img, occ, neg["hu"])
        ops.scatter_mask(neg_mask, occ, threshold=1e-6, value=True)

    # labelled coronary plaques
    if plaques is None:
        burden = rng.random()  # ~15 % no calcium, ~17 % heavy calcification (many, longer plaques)
        heavy = burden >= 0.83
        n = (0 if burden < 0.15 else int(rng.integers(10, 19)) if heavy else int(rng.integers(1, 9))) if n_plaques is None else int(n_plaques)
        plaques = _random_plaques(rng, arteries, n, grid, length_scale=1.6 if heavy else 1.0)
    specs = [_resolve_plaque(p, arteries, grid, rng) for p in plaques]
    label = np.zeros(grid.shape, np.uint8)
    best = np.zeros(grid.shape, np.float32)  # calloc: only the pages near plaques are touched
    sigma = ops.fwhm_to_sigma_voxels(fwhm, grid.spacing)
    pad = [int(math.ceil(3 * s)) + 1 for s in sigma]
    for spec in specs:
        occ = _plaque_occupancy(grid, spec)
        if occ is None:
            spec["in_grid"] = False
            continue
        spec["in_grid"] = True
        ops.paint(img, occ, spec["hu"])
        sl, o = occ
        big = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(sl, pad, grid.shape))
        local = np.zeros(tuple(b.stop - b.start for b in big), np.float32)
        local[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sl, big))] = o
        if any(s > 0 for s in sigma):
            local = ndimage.gaussian_filter(local, sigma, mode="constant", truncate=3.0)
        value = CORONARY_LABELS[spec["artery"]]
        sub_best, sub_label = best[big], label[big]
        win = (local >= LABEL_MIN_OCCUPANCY) & (local > sub_best)
        sub_label[win] = value
        sub_best[win] = local[win]
    label[neg_mask] = 0

    # scanner: noise shaped like quantum noise (larger in the thick centre of the body), then PSF
    if noise_std > 0:
        x = grid.axis_coords(0)[:, None, None]
        y = grid.axis_coords(1)[None, :, None]
        rho2 = (x / an["body"][0]) ** 2 + (y / an["body"][1]) ** 2
        std_map = (noise_std * np.where(rho2 <= 1.0, 1.0 - 0.3 * rho2, 0.6)).astype(np.float32)
        img = ops.add_noise(img, rng, std_map, out_gain=ops.blurred_noise_gain(grid.spacing, fwhm))
    img = ops.psf_blur(img, grid.spacing, fwhm)
    image = ops.quantize_hu(img).astype(np.float32)

    heart_mask = np.zeros(grid.shape, np.uint8)
    ops.scatter_mask(heart_mask, sac, threshold=0.5, value=1)

    thickness = float(spacing[2]) if slice_thickness_mm is None else float(slice_thickness_mm)
    meta = {
        "kind": kind,
        "protocol": proto["description"],
        "seed": int(seed),
        "patient_id": f"SYNTH-{kind.upper()}-{int(seed):06d}",
        "kvp": proto["kvp"],
        "slice_thickness_mm": thickness,
        "slice_increment_mm": float(spacing[2]),
        "spacing": [float(s) for s in spacing],
        "fov_mm": float(grid.shape[0] * spacing[0]),
        "ecg_gated": proto["ecg_gated"],
        "convolution_kernel": proto["kernel"],
        "manufacturer": "ctbundles synthetic",
        "contrast": False,
        "noise_std_hu": float(noise_std),
        "psf_fwhm_mm": [float(f) for f in fwhm],
    }
    generator_truth = {
        "plaques": [to_jsonable(s) for s in specs],
        "hard_negatives": [to_jsonable(n) for n in negatives],
        "label_min_occupancy": LABEL_MIN_OCCUPANCY,
        "landmarks_lps_mm": {
            "heart_center": an["heart_c"],
            "blood_pool_center": hc + hr @ np.array([0.08 * ha[0], 0, 0]),
            "aortic_root": aorta_info["root"],
            "descending_aorta_xy": aorta_info["desc_xy"],
            "spine_xy": [0.0, float(sy)],
            "vertebra_centers_z": vertebrae,
            "vertebra_half_height_mm": half_h,
            "sternum_xy": [0.0, float(an["sternum_y"])],
            "lung_centers": [[-0.47 * bx, 0.05 * by, lz], [0.5 * bx, 0.1 * by, lz]],
        },
        "tissue_hu": an["hu"],
    }
    truth = score_truth(image, label, spacing, float(spacing[2]), affine=grid.affine) if score else {}
    truth["generator"] = to_jsonable(generator_truth)
    return SyntheticCase(
        kind=kind,
        case_id=case_id or f"{kind}_{int(seed)}",
        image=image,
        affine=grid.affine,
        label=label,
        label_names=dict(CORONARY_LABELS),
        extra={"heart_mask": heart_mask},
        truth=truth,
        meta=meta,
    )


def score_truth(image, label, spacing, slice_increment_mm, affine=None) -> dict:
    """Ground-truth calcium scores of a case by the project's scoring code (REFERENCES.md section 1 defaults).

    Raises ImportError naming the missing module when ``ctbundles.transforms.calcium_scoring`` is absent.
    """
    try:
        from ctbundles.transforms.calcium_scoring import CalciumScoreParams, score_calcium
    except ImportError as err:  # pragma: no cover - the scoring module ships with the package
        raise ImportError(
            "ground-truth scores need ctbundles.transforms.calcium_scoring (score_calcium); "
            f"it could not be imported: {err}. Pass score=False to generate without scores."
        ) from err
    params = CalciumScoreParams(artery_labels=dict(CORONARY_LABELS))
    return to_jsonable(score_calcium(image, label, tuple(float(s) for s in spacing), slice_increment_mm=slice_increment_mm, params=params, affine=affine))



def generate_cardiac(seed: int, **options) -> SyntheticCase:
    """ECG-gated non-contrast cardiac calcium-scoring CT (0.4 mm pixels, 3 mm slices); see :func:`generate_coronary_ct`."""
    return generate_coronary_ct("cardiac", seed, **options)


def generate_chest(seed: int, **options) -> SyntheticCase:
    """Low-dose non-contrast chest CT (FOV 330-380 mm, 1-2.5 mm slices); see :func:`generate_coronary_ct`."""
    return generate_coronary_ct("chest", seed, **options)
