"""Synthetic CT perfusion slabs in the style of ISLES 2018 (stroke lesion segmentation on CTP).

The stand-in for the ISLES 2018 data (``../shared/REFERENCES.md`` section 3; Hakim et al.,
"Predicting infarct core from computed tomography perfusion in acute ischemia with machine
learning: lessons from the ISLES challenge", Stroke 2021), which is not redistributable. One
case is one slab of 2 to 22 axial slices of 256 x 256 pixels: the non-contrast CT of the slab and
the four perfusion maps, with the infarct core as the ground-truth mask. Some patients have two
slabs (A below, B above, contiguous, same in-plane grid and world frame), which is why folds must
be grouped by patient.

Map conventions (the ISLES 2018 dtypes; the value scales are this generator's documented
choice, set to the ranges seen in the ISLES 2018 maps, not vendor-calibrated units):

========  =========  =====================================  ===================================
map       dtype      normal grey / white matter             infarct core (penumbra)
========  =========  =====================================  ===================================
CT        int32      HU: brain 26-40, CSF ~8, bone ~1000+,  about 4 HU darker (early
                     air -1024                              hypodensity)
CBF       uint16     mL/100 g/min: ~55 / ~25; vessels up    x0.2 (x0.6)
                     to ~700; background 0
CBV       uint16     0.1 mL/100 g: ~40 / ~22; vessels up    x0.35 (x1.05)
                     to ~200; background 0
MTT       float64    seconds: ~4.5 / ~5.5; 0-~20            x2.5 (x1.8)
Tmax      float64    seconds: ~1 / ~1.5; 0-~25              +11 s (+7 s)
========  =========  =====================================  ===================================

Outside the brain (skull, scalp, air) the maps are 0, as in the ISLES maps. Slices are thick
(5 or 10 mm), so each slice averages five sub-slices (partial volume across the slice), and
the mask is the core's majority over those sub-slices.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctbundles.synthetic.case import SyntheticCase

CTP_LABELS = {"lesion": 1}
MAP_NAMES = ("CBF", "CBV", "MTT", "Tmax")
MAP_DTYPES = {"CT": np.int32, "CBF": np.uint16, "CBV": np.uint16, "MTT": np.float64, "Tmax": np.float64}
"""The ISLES 2018 dtypes of the CT and of the four maps."""
MAP_UNITS = {
    "CBF": "mL/100 g/min",
    "CBV": "0.1 mL/100 g",
    "MTT": "s",
    "Tmax": "s",
}

# tissue classes of the slab model
_OUT, _BONE, _SCALP, _CSF, _GREY, _WHITE = range(6)
# normal values per tissue: CT HU, CBF, CBV, MTT, Tmax
_NORMAL = {
    _OUT: (-1024.0, 0.0, 0.0, 0.0, 0.0),
    _BONE: (1200.0, 0.0, 0.0, 0.0, 0.0),
    _SCALP: (35.0, 0.0, 0.0, 0.0, 0.0),
    _CSF: (8.0, 2.0, 2.0, 0.6, 0.0),
    _GREY: (38.0, 55.0, 40.0, 4.5, 1.0),
    _WHITE: (28.0, 25.0, 22.0, 5.5, 1.5),
}
# (CBF factor, CBV factor, MTT factor, Tmax added s, CT added HU)
_CORE = (0.2, 0.35, 2.5, 11.0, -4.0)
_PENUMBRA = (0.6, 1.05, 1.8, 7.0, 0.0)

_BRAIN_AXES = (62.0, 78.0, 58.0)  # semi-axes of the brain surface (mm), patient frame
_SUBSLICES = 5


def _slab_plan(rng: np.random.Generator, n_slabs=None, n_slices=None, slice_mm=None):
    """Slab count, slices per slab, slice thickness and the z of the lowest slice edge.

    The draws are made in a fixed order whatever is overridden, so an override changes only
    what it names. A seeded second slab that would not fit in the brain (110 mm) with the
    requested slices is dropped; an explicit combination that does not fit is an error."""
    two = rng.random() < 0.35
    drawn_slices = int(rng.integers(2, 13)) if two else int(rng.integers(2, 23))
    thick = rng.random() < 0.3
    slabs = int(n_slabs) if n_slabs is not None else (2 if two else 1)
    slices = int(n_slices) if n_slices is not None else drawn_slices
    if slice_mm is None:
        slice_mm = 10.0 if (slices * slabs <= 8 and thick) else 5.0
    if n_slabs is None and slabs * slices * slice_mm > 110.0:
        slabs = 1
    coverage = slabs * slices * slice_mm
    if slabs not in (1, 2) or not 1 <= slices <= 22 or coverage > 110.0:
        raise ValueError(f"{slabs} slab(s) of {slices} x {slice_mm} mm slices: need 1 or 2 slabs of 1-22 slices "
                         f"covering at most 110 mm of brain")
    z_low = float(rng.uniform(-40.0, max(-40.0, 60.0 - coverage)))
    return slabs, slices, float(slice_mm), z_low


def _tissue(px, py, pz, skull_mm):
    """Tissue class of patient-frame points: scalp, skull, CSF rim, grey, white, ventricles."""
    a, b, c = _BRAIN_AXES

    def depth(offset):  # approximately: inside the brain surface moved outward by offset mm
        return ((px / (a + offset)) ** 2 + (py / (b + offset)) ** 2 + (pz / (c + offset)) ** 2) <= 1.0

    t = np.full(np.broadcast_shapes(px.shape, py.shape, pz.shape), _OUT, np.uint8)
    t[depth(skull_mm + 5.0)] = _SCALP
    t[depth(skull_mm + 1.5)] = _BONE
    t[depth(1.5)] = _CSF
    t[depth(0.0)] = _GREY
    t[depth(-12.0)] = _WHITE
    for s in (-1.0, 1.0):
        t[((px - s * 8.0) / 5.0) ** 2 + ((py - 2.0) / 24.0) ** 2 + ((pz - 12.0) / 9.0) ** 2 <= 1.0] = _CSF
    return t


def _lesion_plan(rng: np.random.Generator, z_range, side=None, size_mm=None):
    """Core centre, semi-axes and hemisphere, and the penumbra scale."""
    side_sign = float(rng.choice([-1.0, 1.0])) if side is None else (1.0 if side == "right" else -1.0)
    zc = float(rng.uniform(*z_range))
    a, b, c = _BRAIN_AXES
    shrink = np.sqrt(max(1.0 - (zc / c) ** 2, 0.05))
    centre = np.array([side_sign * rng.uniform(0.3, 0.6) * a * shrink, rng.uniform(-0.45, 0.45) * b * shrink, zc])
    if size_mm is None:
        axes = rng.uniform(5.0, 22.0, 3)
    else:
        axes = np.broadcast_to(np.asarray(size_mm, float), 3).copy()
    return centre, axes, float(rng.uniform(1.3, 1.8)), side_sign


def _vessels(rng: np.random.Generator, n=10):
    """A few bright vessel segments in the sylvian fissures and on the cortex (centre, radius)."""
    pts = []
    for _ in range(n):
        side = rng.choice([-1.0, 1.0])
        pts.append((side * rng.uniform(25, 50), rng.uniform(-30, 40), rng.uniform(-20, 40), rng.uniform(1.0, 2.0)))
    return pts


def _simulate_patient(seed, n_slabs, n_slices, slice_mm, z_low, pixel_mm, shape_xy, lesion, lesion_size_mm,
                      lesion_side):
    rng = np.random.default_rng([seed, 7])
    skull_mm = float(rng.uniform(5.0, 7.5))
    slab_z = (z_low, z_low + n_slices * slice_mm)  # slab A: the lesion core is centred in it
    core_c, core_ax, pen_scale, side_sign = _lesion_plan(rng, slab_z, lesion_side, lesion_size_mm)
    vessels = _vessels(rng)
    base_scale = rng.uniform(0.85, 1.15, 4)  # per-patient global perfusion level
    return dict(skull_mm=skull_mm, core_c=core_c, core_ax=core_ax, pen_scale=pen_scale, side_sign=side_sign,
                vessels=vessels, base_scale=base_scale, lesion=lesion)


def _render_slab(plan, slab_index, n_slices, slice_mm, z_low, pixel_mm, shape_xy, seed, noise):
    nx, ny = shape_xy
    x = (np.arange(nx) - (nx - 1) / 2.0) * pixel_mm
    y = (np.arange(ny) - (ny - 1) / 2.0) * pixel_mm
    z0 = z_low + slab_index * n_slices * slice_mm
    sub = (np.arange(n_slices * _SUBSLICES) + 0.5) * (slice_mm / _SUBSLICES) + z0
    # 1D coordinates broadcast against each other: (nx, 1, 1), (1, ny, 1), (1, 1, nz)
    px = x[:, None, None].astype(np.float32)
    py = y[None, :, None].astype(np.float32)
    pz = sub[None, None, :].astype(np.float32)
    tissue = _tissue(px, py, pz, plan["skull_mm"])
    lut = np.array([_NORMAL[t] for t in range(6)], np.float32)
    values = lut[tissue]  # (..., 5): CT, CBF, CBV, MTT, Tmax
    values[..., 1:3] *= plan["base_scale"][:2]
    values[..., 3] *= plan["base_scale"][2]
    brain = (tissue == _GREY) | (tissue == _WHITE)
    for vx, vy, vz, vr in plan["vessels"]:
        # a short vessel segment running in z (3 x its radius), on its bounding box only
        box = tuple(slice(int(np.searchsorted(v, c - r)), int(np.searchsorted(v, c + r)))
                    for v, c, r in ((x, vx, vr), (y, vy, vr), (sub, vz, 3.0 * vr)))
        inside = ((px[box[0]] - vx) ** 2 + (py[:, box[1]] - vy) ** 2 + ((pz[:, :, box[2]] - vz) / 3.0) ** 2
                  <= vr ** 2) & brain[box]
        block = values[box]
        block[inside, 1:] = (650.0, 190.0, 2.0, 0.0)
    core = np.zeros(tissue.shape, bool)
    if plan["lesion"]:
        c, ax = plan["core_c"], plan["core_ax"]
        q = ((px - c[0]) / ax[0]) ** 2 + ((py - c[1]) / ax[1]) ** 2 + ((pz - c[2]) / ax[2]) ** 2
        # the infarct stays in its hemisphere's parenchyma
        hemi = (px * plan["side_sign"]) > 2.0
        pen = (q <= plan["pen_scale"] ** 2) & brain & hemi
        core = (q <= 1.0) & brain & hemi
        for region, (f_cbf, f_cbv, f_mtt, add_tmax, add_ct) in ((pen & ~core, _PENUMBRA), (core, _CORE)):
            values[region, 1] *= f_cbf
            values[region, 2] *= f_cbv
            values[region, 3] *= f_mtt
            values[region, 4] += add_tmax
            values[region, 0] += add_ct
    # thick slices: average the sub-slices
    values = values.reshape(nx, ny, n_slices, _SUBSLICES, 5).mean(axis=3)
    mask = core.reshape(nx, ny, n_slices, _SUBSLICES).mean(axis=3) >= 0.5
    in_brain = brain.reshape(nx, ny, n_slices, _SUBSLICES).mean(axis=3) > 0.0
    rng = np.random.default_rng([seed, 11, slab_index])
    ct = ndimage.gaussian_filter(values[..., 0], sigma=(0.7, 0.7, 0.0))
    maps = {}
    if noise:
        ct = ct + rng.normal(0.0, 3.0, ct.shape)
    for i, name in enumerate(MAP_NAMES, start=1):
        v = values[..., i]
        if noise:
            if name in ("CBF", "CBV"):
                v = v * rng.normal(1.0, 0.15, v.shape)
            else:
                v = v + rng.normal(0.0, 0.7 if name == "MTT" else 0.8, v.shape)
            v = ndimage.gaussian_filter(v, sigma=(1.0, 1.0, 0.0))
        v = np.where(in_brain, np.maximum(v, 0.0), 0.0)
        dtype = MAP_DTYPES[name]
        maps[name] = np.rint(v).astype(dtype) if np.issubdtype(dtype, np.integer) else v.astype(dtype)
    ct = np.clip(np.rint(ct), -1024, 3071).astype(np.float32)
    affine = np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])
    affine[:3, 3] = [x[0], y[0], z0 + slice_mm / 2.0]
    return ct, maps, mask.astype(np.uint8), affine


def generate_ctp(
    seed: int,
    *,
    slab: int | str = 0,
    n_slabs: int | None = None,
    n_slices: int | None = None,
    slice_mm: float | None = None,
    pixel_mm: float | None = None,
    shape_xy=(256, 256),
    lesion: bool = True,
    lesion_size_mm=None,
    lesion_side: str | None = None,
    noise: bool = True,
) -> SyntheticCase:
    """One ISLES 2018-style CTP slab of the patient drawn from ``seed`` (see module docstring).

    Args:
        seed: the patient's seed: anatomy, slab plan and infarct; the same seed gives the same
            patient, and its slabs share one world frame.
        slab: which slab, 0/"A" (holds the infarct centre) or 1/"B" (the slab above A; only for
            two-slab patients, see ``meta["n_slabs"]``).
        n_slabs, n_slices, slice_mm, pixel_mm: override the seeded plan (1 or 2 slabs; 2 to 22
            slices; 5 or 10 mm slices; 0.78-0.94 mm pixels).
        shape_xy: in-plane size; ISLES 2018 is 256 x 256 (smaller for tests).
        lesion: include an infarct; ``lesion_size_mm`` (semi-axes of the core ellipsoid) and
            ``lesion_side`` ("left"/"right") fix it.
        noise: add map and CT noise (off for exact checks).

    ``image`` is the CT (HU, float32, integer-valued; the writer stores int32); ``extra`` holds
    "CBF", "CBV" (uint16), "MTT", "Tmax" (float64); ``label`` the core {"lesion": 1}; ``truth``
    the lesion volume in mL from the mask and spacing.
    """
    slab_index = {"A": 0, "B": 1}.get(slab, slab) if isinstance(slab, str) else int(slab)
    rng = np.random.default_rng(seed)
    n_slabs, n_slices, slice_mm, z_low = _slab_plan(rng, n_slabs, n_slices, slice_mm)
    if slab_index not in range(n_slabs):
        raise ValueError(f"patient {seed} has {n_slabs} slab(s); slab {slab!r} does not exist")
    if pixel_mm is None:
        pixel_mm = float(rng.uniform(0.78, 0.94))
    shape_xy = tuple(int(s) for s in shape_xy)
    if shape_xy != (256, 256):
        pixel_mm = pixel_mm * 256.0 / shape_xy[0]  # same field of view on a coarser grid
    plan = _simulate_patient(seed, n_slabs, n_slices, slice_mm, z_low, pixel_mm, shape_xy, lesion, lesion_size_mm,
                             lesion_side)
    ct, maps, mask, affine = _render_slab(plan, slab_index, n_slices, slice_mm, z_low, pixel_mm, shape_xy, seed, noise)
    slab_letter = "AB"[slab_index]
    voxel_ml = pixel_mm * pixel_mm * slice_mm / 1000.0
    n_vox = int(mask.sum())
    case = SyntheticCase(
        kind="ctp",
        case_id=f"ctp_{seed:04d}{slab_letter if n_slabs > 1 else ''}",
        image=ct,
        affine=affine,
        label=mask,
        label_names=dict(CTP_LABELS),
        extra=maps,
        truth={"lesion_volume_ml": n_vox * voxel_ml, "lesion_voxels": n_vox, "voxel_volume_ml": voxel_ml},
        meta={
            "patient_id": f"SYNTH-CTP-{seed:04d}",
            "slab": slab_letter,
            "slab_index": slab_index,
            "n_slabs": n_slabs,
            "slice_thickness_mm": slice_mm,
            "slice_increment_mm": slice_mm,
            "kvp": 80.0,
            "map_units": dict(MAP_UNITS),
            "map_dtypes": {k: np.dtype(v).name for k, v in MAP_DTYPES.items()},
            "lesion_side": None if not lesion else ("right" if plan["side_sign"] > 0 else "left"),
            "lesion_centre_mm": None if not lesion else plan["core_c"].tolist(),
            "lesion_semi_axes_mm": None if not lesion else plan["core_ax"].tolist(),
            "seed": int(seed),
        },
    )
    return case


def generate_ctp_patient(seed: int, **options) -> list[SyntheticCase]:
    """Every slab of the patient drawn from ``seed`` (one or two cases, A then B)."""
    first = generate_ctp(seed, slab=0, **options)
    return [first] + [generate_ctp(seed, slab=i, **options) for i in range(1, first.meta["n_slabs"])]
