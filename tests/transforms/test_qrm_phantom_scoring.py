"""Agatston, volume and mass scores of the nine QRM CCI phantom inserts through ``ctbundles score``.

Real scan (``../shared/data/qrm_phantom``: Canon Aquilion ONE, 120 kV, 3 mm slices every 3 mm,
0.488 mm pixels). The CCI insert holds nine cylinders (diameter = length = 1, 3, 5 mm) at 200, 400
and 800 mgHA/cm^3, three per density on a ray from the insert's axis (5 mm outermost), and a
calibration rod on the axis.

ROI used (built here from the image, no hand-placed coordinates):

1. Smooth each slice (Gaussian, sigma 1 pixel) and take 3D components above 250 HU.
2. The calibration rod is the component of 1 to 20 mL; its in-plane centroid is the insert axis.
3. The three 5 mm inserts are the small components (< 1 mL) farthest from the axis (within
   60 mm); their order by peak HU gives the density (highest = 800 mgHA/cm^3). The insert plane
   is their mean slice.
4. The 3 mm and 1 mm inserts lie on the same rays at 2/3 and 1/3 of the 5 mm insert's distance
   (measured in this scan: 5 mm at 37 mm, 3 mm at 25 mm, 1 mm at 12 mm from the axis).
5. ROI of each insert: a cylinder of radius (diameter / 2 + 1.5 mm) around its centre, over the
   insert plane and one slice either side (9 mm, the insert length plus partial volume).

Mass calibration (McCollough et al. 2007): c_HA = 200 mgHA/cm^3 / (mean HU of the 200 mgHA
calibration rod - 0 HU for water), the rod's mean measured in this scan (central 12-pixel disc of the
rod in its first 3 slices, its uniform part). The insert's own background material reads about 70
HU, so subtracting it instead would raise c_HA by about a third; with water at its nominal 0 HU the
5 mm and 3 mm insert masses come within 25 % of their nominal masses.

Volumes: a threshold volume score overestimates small dense cylinders on 3 mm slices (every slice
the insert touches counts 3 mm, and blooming widens it above 130 HU): the 5 mm inserts measure 1.5
to 3.5 times their 98 mm^3.

Run ``python tests/transforms/test_qrm_phantom_scoring.py`` to print the per-insert table.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ctbundles.cli import main
from ctbundles.transforms.ct_io import load_ct

SIZES_MM = (5.0, 3.0, 1.0)
DENSITIES = (800, 400, 200)  # mgHA/cm^3, in the order of the 5 mm inserts' peak HU
RADIAL_FRACTION = {5.0: 1.0, 3.0: 2.0 / 3.0, 1.0: 1.0 / 3.0}
ROI_MARGIN_MM = 1.5
CAL_ROD_MGHA = 200.0
WATER_HU = 0.0


def insert_name(size, density):
    return f"{int(size)}mm_{density}"


def find_inserts(hu: np.ndarray, spacing) -> dict:
    """Insert centres (voxel x, y), insert-plane slice and the rod geometry (see module docstring)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    smooth = ndimage.gaussian_filter(hu, sigma=(1.0, 1.0, 0.0))
    blobs, n = ndimage.label(smooth > 250.0)
    coords = np.nonzero(blobs)
    ids = blobs[coords] - 1
    counts = np.bincount(ids, minlength=n)
    volume_ml = counts * voxel_ml
    centroids = np.stack([np.bincount(ids, weights=c, minlength=n) for c in coords], axis=1) / counts[:, None]
    peaks = np.full(n, -np.inf)
    np.maximum.at(peaks, ids, smooth[coords])
    rods = np.flatnonzero((volume_ml > 1.0) & (volume_ml < 20.0))
    assert rods.size == 1, f"expected one calibration rod of 1-20 mL, found volumes {volume_ml[rods]}"
    rod = rods[0]
    axis = centroids[rod, :2]
    radius_mm = np.hypot(*((centroids[:, :2] - axis) * spacing[:2]).T)
    small = np.flatnonzero((volume_ml < 1.0) & (radius_mm < 60.0))
    five = small[np.argsort(radius_mm[small])[::-1][:3]]
    five = five[np.argsort(peaks[five])[::-1]]  # 800, 400, 200 mgHA
    plane = int(round(float(np.mean(centroids[five, 2]))))
    centres = {}
    for density, blob in zip(DENSITIES, five):
        for size in SIZES_MM:
            centres[insert_name(size, density)] = (size, axis + (centroids[blob, :2] - axis) * RADIAL_FRACTION[size])
    rod_slices = np.unique(coords[2][ids == rod])
    return {"centres": centres, "plane": plane, "axis": axis, "rod_slices": rod_slices}


def roi_label(shape, spacing, found) -> tuple[np.ndarray, dict[str, int]]:
    label = np.zeros(shape, dtype=np.uint8)
    xs, ys = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    mapping = {}
    z = found["plane"]
    for value, (name, (size, centre)) in enumerate(found["centres"].items(), start=1):
        disc = np.hypot((xs - centre[0]) * spacing[0], (ys - centre[1]) * spacing[1]) <= size / 2 + ROI_MARGIN_MM
        label[:, :, z - 1 : z + 2][disc] = value
        mapping[name] = value
    return label, mapping


def calibration_factor(hu, spacing, found) -> float:
    xs, ys = np.meshgrid(np.arange(hu.shape[0]), np.arange(hu.shape[1]), indexing="ij")
    r = np.hypot(xs - found["axis"][0], ys - found["axis"][1])
    rod_hu = float(hu[:, :, found["rod_slices"][:3]][r < 12].mean())  # first 3 rod slices: uniform part
    return CAL_ROD_MGHA / (rod_hu - WATER_HU)


def score_phantom(dicom: Path, workdir: Path) -> tuple[dict, float, dict]:
    """ROI label written as NIfTI, then ``ctbundles score`` on the DICOM folder; returns the report."""
    image = load_ct(dicom)
    hu = image.numpy()
    spacing = np.asarray([float(s) for s in image.meta["spacing"]])
    found = find_inserts(hu, spacing)
    label, mapping = roi_label(hu.shape, spacing, found)
    label_path = workdir / "qrm_insert_rois.nii.gz"
    nib.save(nib.Nifti1Image(label, np.asarray(image.affine, dtype=np.float64)), str(label_path))
    c = calibration_factor(hu, spacing, found)
    out = workdir / "qrm_scores.json"
    artery = ",".join(f"{k}={v}" for k, v in mapping.items())
    rc = main(["score", str(dicom), "--label", str(label_path), "--json", str(out), "--calibration-factor", f"{c:.4f}", "--artery-labels", artery])
    assert rc == 0
    return json.loads(out.read_text()), c, found


def physical(size_mm, density):
    volume = math.pi * (size_mm / 2) ** 2 * size_mm
    return volume, density * volume / 1000.0


@pytest.fixture(scope="module")
def phantom(shared_data, tmp_path_factory):
    return score_phantom(shared_data / "qrm_phantom" / "dicom", tmp_path_factory.mktemp("qrm"))


def test_insert_geometry(phantom):
    _, c, found = phantom
    # 5 mm inserts 37 mm from the axis, 120 degrees apart; insert plane is slice 22 (66 mm).
    assert found["plane"] == 22
    five = [found["centres"][insert_name(5, d)][1] for d in DENSITIES]
    radii = [np.hypot(*((p - found["axis"]) * 0.488)) for p in five]
    assert radii == pytest.approx([37.0] * 3, abs=1.5)
    assert 0.55 < c < 0.75  # mg/cm^3 per HU (rod about 310 HU)


def test_per_insert_scores_are_sane(phantom):
    report, _, _ = phantom
    per = report["per_artery"]
    for density in DENSITIES:
        agatston = [per[insert_name(s, density)]["agatston"] for s in SIZES_MM]
        assert agatston[0] > agatston[1] >= agatston[2], f"{density} mgHA: Agatston must fall with size {agatston}"
    for size in SIZES_MM[:2]:
        agatston = [per[insert_name(size, d)]["agatston"] for d in DENSITIES]
        assert agatston[0] > agatston[1] > agatston[2] > 0, f"{size} mm: Agatston must fall with density {agatston}"
        volumes = [per[insert_name(size, d)]["volume_mm3"] for d in DENSITIES]
        assert volumes[0] > volumes[2], f"{size} mm: volume at 800 above volume at 200 mgHA {volumes}"
    # every 5 mm and 3 mm insert is scored; the 1 mm insert at 800 mgHA too
    for name in [insert_name(s, d) for s in (5, 3) for d in DENSITIES] + ["1mm_800"]:
        assert per[name]["n_lesions"] >= 1, name
    # volume of the 5 mm inserts 1.5 to 3.5 times the physical 98.2 mm^3 (see the module docstring)
    for density in DENSITIES:
        volume, _ = physical(5.0, density)
        assert 1.5 * volume < per[insert_name(5, density)]["volume_mm3"] < 3.5 * volume
    # mass of the 5 mm and 3 mm inserts within 25 % of the nominal (density x physical volume)
    for size in (5.0, 3.0):
        for density in DENSITIES:
            _, mass = physical(size, density)
            assert per[insert_name(size, density)]["mass_mg"] == pytest.approx(mass, rel=0.25)
    assert report["agatston"] == pytest.approx(sum(e["agatston"] for e in per.values()))


def table(report, c):
    rows = [f"calibration factor c_HA = {c:.4f} mg/cm^3 per HU", "insert      Agatston  volume_mm3  mass_mg  | physical volume_mm3  mass_mg  | lesions  peak_HU"]
    for size in SIZES_MM:
        for density in DENSITIES:
            name = insert_name(size, density)
            e = report["per_artery"][name]
            peak = max((les["peak_hu"] for les in report["lesions"] if les["label"] == name), default=float("nan"))
            volume, mass = physical(size, density)
            rows.append(
                f"{name:<10} {e['agatston']:9.2f} {e['volume_mm3']:11.2f} {e['mass_mg']:8.2f}  | {volume:19.2f} {mass:8.2f}  | {e['n_lesions']:7d} {peak:8.0f}"
            )
    rows.append(f"total       {report['agatston']:9.2f} {report['volume_mm3']:11.2f} {report['mass_mg']:8.2f}")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        report, c, _ = score_phantom(data / "qrm_phantom" / "dicom", Path(tmp))
    print(table(report, c))
