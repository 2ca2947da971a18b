"""Rigid registration to the reference head, network frame and the way back (Bortsova et al. 2017, Sec. 3)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from ctbundles.metrics.icac_evaluation import dice_score
from ctbundles.synthetic.head import reference_head
from ctbundles.transforms.calcium_transforms import ICACVolume
from ctbundles.transforms.icac_frame import (
    FromNetworkFrame,
    ScanLabelFromFrameProbability,
    ScanLabelFromFrameProbabilityd,
    ToNetworkFramed,
    coverage_warning,
    frame_affine,
    from_sitk,
    initial_alignment,
    register_rigid,
    to_sitk,
)


@pytest.fixture(scope="module")
def reference():
    return reference_head(shape=(80, 80, 60), spacing=(3.0, 3.0, 3.0))


def _known_motion() -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter((0.0, 0.0, -10.0))
    t.SetRotation(0.08, -0.05, 0.1)  # radians: 4.6, 2.9, 5.7 degrees
    t.SetTranslation((6.0, -4.0, 5.0))
    return t


def test_sitk_round_trip_keeps_world_coordinates(reference):
    img = to_sitk(reference.image, reference.affine)
    assert img.GetSize() == (80, 80, 60)
    # RAS voxel (i, j, k) -> world; SimpleITK reports LPS: x and y flip sign
    ras = reference.affine @ np.array([10, 20, 30, 1.0])
    lps = img.TransformIndexToPhysicalPoint((10, 20, 30))
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-6)
    np.testing.assert_array_equal(from_sitk(img), reference.image)
    np.testing.assert_allclose(frame_affine((3, 3, 3), (2, 2, 2), (0, 0, 0))[:3, 3], [-2, -2, -2])


def test_registration_recovers_a_known_rigid_motion(reference):
    fixed = to_sitk(reference.image, reference.affine)
    motion = _known_motion()
    moving = sitk.Resample(fixed, fixed, motion, sitk.sitkLinear, -1000.0)  # moving(p) = reference(motion(p))
    found = register_rigid(moving, fixed)
    for p in [(0.0, 0.0, -40.0), (30.0, 20.0, -50.0), (-40.0, -30.0, 20.0)]:
        err = np.subtract(motion.TransformPoint(found.TransformPoint(p)), p)
        assert np.linalg.norm(err) < 1.0  # mm, on 3 mm voxels
    # reproducible: the same scan registers to the same transform (seed 0 would be SimpleITK's
    # wall-clock seed: a new metric sampling, and a transform about 1e-3 rad / 0.05 mm away, on every
    # call); multi-threaded sums leave differences of order 1e-11
    np.testing.assert_allclose(register_rigid(moving, fixed).GetParameters(), found.GetParameters(), rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="seed must be a positive integer"):
        register_rigid(moving, fixed, seed=0)


def test_initial_alignment_centres_the_head_not_the_field_of_view(reference):
    """The moments start matches the heads' centres of mass, whatever air surrounds the head.

    The moving scan is the reference shifted by (12, -9, 6) mm (LPS) and placed in a field of view
    that extends 120 mm further to one side (more air there): the initial translation must be the
    shift. With air as negative mass (clipped HU without the shift of ``initial_alignment``) the
    larger field of view pulls the start tens of mm off (session 4: 48-134 mm on 8 posed heads).
    """
    fixed = to_sitk(reference.image, reference.affine)
    shift = sitk.TranslationTransform(3, (12.0, -9.0, 6.0))
    big = sitk.Image([s + 40 for s in fixed.GetSize()[:1]] + list(fixed.GetSize()[1:]), sitk.sitkFloat32)
    big.SetSpacing(fixed.GetSpacing())
    big.SetDirection(fixed.GetDirection())
    big.SetOrigin(fixed.GetOrigin())  # 40 voxels of 3 mm more air along +index 0
    moving = sitk.Resample(fixed, big, shift.GetInverse(), sitk.sitkLinear, -1000.0)  # moving(p) = fixed(p - shift)
    start = initial_alignment(moving, fixed)
    for p in [(0.0, 0.0, -40.0), (30.0, 20.0, -50.0)]:
        moved = np.array(start.TransformPoint(p))
        np.testing.assert_allclose(moved - np.array(p), [12.0, -9.0, 6.0], atol=1.5)  # mm, 3 mm voxels
    # the same moments on clipped HU with air as negative mass are far off
    clipped = [sitk.Clamp(sitk.Cast(im, sitk.sitkFloat32), sitk.sitkFloat32, -200.0, 1500.0) for im in (fixed, moving)]
    naive = sitk.CenteredTransformInitializer(*clipped, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    assert np.linalg.norm(np.subtract(naive.TransformPoint((0.0, 0.0, -40.0)), (12.0, -9.0, 6.0 - 40.0))) > 10.0


def test_network_frame_and_back(reference):
    fixed = to_sitk(reference.image, reference.affine)
    motion = _known_motion()
    moving = from_sitk(sitk.Resample(fixed, fixed, motion, sitk.sitkLinear, -1000.0))
    scan = MetaTensor(torch.as_tensor(moving)[None], affine=torch.as_tensor(reference.affine),
                      meta={"filename_or_obj": "scan.nii.gz"})
    ref_mt = MetaTensor(torch.as_tensor(reference.image), affine=torch.as_tensor(reference.affine))
    frame = dict(shape=(40, 40, 30), spacing=(2.0, 2.0, 2.0), centre_mm=(0.0, 3.0, -40.0))
    roi = (reference.label > 0).astype(np.float32)
    moved_roi = from_sitk(sitk.Resample(to_sitk(roi, reference.affine), fixed, motion, sitk.sitkNearestNeighbor, 0.0))
    label = MetaTensor(torch.as_tensor(moved_roi)[None], affine=torch.as_tensor(reference.affine))
    framed = ToNetworkFramed("image", label_keys="label", reference=ref_mt, frame_shape=frame["shape"],
                             frame_spacing=frame["spacing"], frame_centre_mm=frame["centre_mm"])({"image": scan, "label": label})
    out = framed["image"]
    assert tuple(out.shape) == (1, 40, 40, 30)
    np.testing.assert_allclose(np.asarray(out.affine), frame_affine(frame["shape"], frame["spacing"], frame["centre_mm"]))
    # the registered scan matches the reference resampled on the same frame
    grid = to_sitk(np.zeros(frame["shape"], np.uint8), np.asarray(out.affine))
    expected = from_sitk(sitk.Resample(fixed, grid, sitk.Euler3DTransform(), sitk.sitkLinear, -1000.0))
    assert np.corrcoef(out[0].numpy().ravel(), expected.ravel())[0, 1] > 0.95

    # a segmentation on the frame goes back onto the scan's grid, where the moved ROI lies
    roi_frame = from_sitk(sitk.Resample(to_sitk(roi, reference.affine), grid, sitk.Euler3DTransform(),
                                        sitk.sitkNearestNeighbor, 0.0))
    # the scan's label follows its image onto the frame (nearest), where the reference ROI lies
    assert tuple(framed["label"].shape) == (1, 40, 40, 30) and set(np.unique(framed["label"].numpy())) <= {0.0, 1.0}
    assert dice_score(framed["label"][0].numpy() > 0, roi_frame > 0) > 0.8
    seg = MetaTensor(torch.as_tensor(roi_frame)[None], affine=out.affine, meta={"icac_frame": out.meta["icac_frame"]})
    back = FromNetworkFrame()(seg)
    assert tuple(back.shape) == (1, 80, 80, 60)
    np.testing.assert_allclose(np.asarray(back.affine), reference.affine)
    truth = from_sitk(sitk.Resample(to_sitk(roi, reference.affine), fixed, motion, sitk.sitkNearestNeighbor, 0.0))
    assert truth.sum() > 50
    assert dice_score(back[0].numpy() > 0, truth > 0) > 0.8
    with pytest.raises(ValueError, match="icac_frame"):
        FromNetworkFrame()(MetaTensor(torch.zeros(1, 2, 2, 2)))


@pytest.mark.slow
def test_posed_synthetic_head_registers_to_the_shipped_reference():
    """A synthetic head with a random pose (world = R head + t) registers to the bundle's reference."""
    from pathlib import Path

    import nibabel as nib

    from ctbundles.synthetic.head import ICA_CONTROL_POINTS, generate_head

    path = Path(__file__).resolve().parents[2] / "bundles" / "icac_ct_segmentation" / "models" / "reference_head.nii.gz"
    ref = nib.load(str(path))
    case = generate_head(3, shape=(256, 256, 100), spacing=(0.9, 0.9, 1.4))
    found = register_rigid(to_sitk(case.image, case.affine), to_sitk(ref.get_fdata().astype(np.float32), ref.affine))
    rot = np.array(case.meta["pose"]["rotation"])
    shift = np.array(case.meta["pose"]["translation_mm"])
    lps = np.diag([-1.0, -1.0, 1.0])
    for p in ICA_CONTROL_POINTS:  # the carotid course, where the frame must be right
        moved = lps @ np.array(found.TransformPoint(tuple(lps @ p)))
        assert np.linalg.norm(moved - (rot @ p + shift)) < 1.0  # mm (measured: about 0.2 mm)


def _slab_scan(z_first_mm: float, n_z: int) -> MetaTensor:
    """A 2 mm scan of soft tissue over x, y in [-60, 60] mm whose slices start at ``z_first_mm`` (RAS)."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-60.0, -60.0, z_first_mm)
    return MetaTensor(torch.full((1, 61, 61, n_z), 40.0), affine=torch.as_tensor(affine), meta={"filename_or_obj": "slab.nii.gz"})


def test_frame_coverage_counts_the_frame_outside_the_scan():
    """The frame (30 slices of 2 mm, centres -69 ... -11 mm) against a scan starting at -39 mm: 15 slices lie
    below it, so half the frame is air and the segmentation carries a warning into the ICAC report."""
    frame = dict(frame_shape=(20, 20, 30), frame_spacing=(2.0, 2.0, 2.0), frame_centre_mm=(0.0, 0.0, -40.0), register=False)
    framed = ToNetworkFramed("image", **frame)({"image": _slab_scan(-39.0, 31)})["image"]
    info = framed.meta["icac_frame"]
    assert info["frame_slices_outside"] == 15
    assert info["scan_coverage"] == pytest.approx(0.5)
    arr = framed[0].numpy()
    assert np.all(arr[:, :, :15] == -1000.0) and np.allclose(arr[:, :, 15:], 40.0)
    assert coverage_warning(info).startswith("the scan covers 50.0 % of the network frame (15 frame slices")
    assert "the rest is filled with air" in coverage_warning(info)

    seg = MetaTensor(torch.zeros(1, 20, 20, 30), affine=framed.affine, meta={"icac_frame": info})
    back = FromNetworkFrame()(seg)
    assert back.meta["ct_warnings"] == [coverage_warning(info)]
    hu = _slab_scan(-39.0, 31)
    report = ICACVolume()(hu, back)
    assert report["warnings"][0] == "segmentation: " + coverage_warning(info)

    # a scan reaching below the frame covers all of it: no warning
    full = ToNetworkFramed("image", **frame)({"image": _slab_scan(-79.0, 51)})["image"].meta["icac_frame"]
    assert full["scan_coverage"] == 1.0 and full["frame_slices_outside"] == 0 and coverage_warning(full) is None
    assert "ct_warnings" not in FromNetworkFrame()(MetaTensor(torch.zeros(1, 20, 20, 30), affine=framed.affine,
                                                              meta={"icac_frame": full})).meta


def test_edge_fill_repeats_the_end_slices_instead_of_air():
    """``outside_fill="edge"``: frame slices below the scan get the scan's first slice (here a gradient in x,
    so the copy is checked voxel by voxel), not -1000 HU; the coverage is still that of the scan itself."""
    frame = dict(frame_shape=(20, 20, 30), frame_spacing=(2.0, 2.0, 2.0), frame_centre_mm=(0.0, 0.0, -40.0), register=False)
    scan = _slab_scan(-39.0, 31)
    scan[0] += torch.arange(61, dtype=torch.float32)[:, None, None] * 10.0  # 40 + 10 * x-index, the same on every slice
    air = ToNetworkFramed("image", **frame)({"image": scan})["image"][0].numpy()
    edge = ToNetworkFramed("image", outside_fill="edge", **frame)({"image": scan})
    out = edge["image"][0].numpy()
    assert np.all(air[:, :, :15] == -1000.0)
    np.testing.assert_allclose(out[:, :, :15], np.repeat(air[:, :, 15:16], 15, axis=2), atol=1e-3)
    np.testing.assert_allclose(out[:, :, 15:], air[:, :, 15:], atol=1e-3)
    assert edge["image"].meta["icac_frame"]["frame_slices_outside"] == 15
    assert "filled with the scan's end slices repeated along z" in coverage_warning(edge["image"].meta["icac_frame"])
    with pytest.raises(ValueError, match="outside_fill"):
        ToNetworkFramed("image", outside_fill="mirror", **frame)


def test_probability_goes_back_linearly_and_is_thresholded_on_the_scan():
    """A frame of 4 mm in-plane over a 2 mm scan (no registration). On the frame the probability rises
    linearly along x on the right, p = 0.5 + (x - 10.1 mm) / 40 mm, and is 0.9 on three columns of voxels
    at x = -30, -26, -22 mm on the left. Resampled linearly and thresholded on the scan, the right-hand
    boundary falls at x = 10.1 mm to the scan's 2 mm (x = 12 ... 38 mm, the frame's last column; label 2), and the left plateau keeps
    scan voxels x = -30 ... -22 mm (label 1): its linear flanks reach 0.5 at -31.8 and -20.2 mm. A
    label thresholded on the frame and resampled with nearest neighbour cannot place the boundary
    closer than the frame's 4 mm."""
    frame = dict(frame_shape=(20, 20, 30), frame_spacing=(4.0, 4.0, 2.0), frame_centre_mm=(0.0, 0.0, -40.0), register=False)
    framed = ToNetworkFramed("image", **frame)({"image": _slab_scan(-79.0, 51)})["image"]
    x_frame = -38.0 + 4.0 * np.arange(20)
    prob = np.where(x_frame > 0, np.clip(0.5 + (x_frame - 10.1) / 40.0, 0.0, 1.0), 0.0)
    prob[np.isin(x_frame, (-30.0, -26.0, -22.0))] = 0.9
    p = MetaTensor(torch.as_tensor(np.broadcast_to(prob[:, None, None], (20, 20, 30)).copy(), dtype=torch.float32)[None],
                   affine=framed.affine, meta={"icac_frame": framed.meta["icac_frame"]})
    label = ScanLabelFromFrameProbability(threshold=0.5, midline_x_mm=0.0)(p)
    assert tuple(label.shape) == (1, 61, 61, 51)
    np.testing.assert_allclose(np.asarray(label.affine), np.asarray(_slab_scan(-79.0, 51).affine))
    x_scan = -60.0 + 2.0 * np.arange(61)
    inside = label[0, :, 12:49, 6:35].numpy()  # scan y in [-36, 36] mm and z in [-67, -11] mm: inside the frame
    expected = np.where((x_scan >= 12.0) & (x_scan <= 38.0), 2.0, np.where((x_scan >= -30.0) & (x_scan <= -22.0), 1.0, 0.0))
    assert np.all(inside == expected[:, None, None])
    assert float(label[0, :, :, :5].sum()) == 0.0  # below the frame: background
    # the dictionary version (inference.json) reads the frame metadata from the image item
    bare = MetaTensor(p.as_tensor(), affine=framed.affine)
    out = ScanLabelFromFrameProbabilityd("pred", frame_key="image")({"image": framed, "pred": bare})["pred"]
    assert torch.equal(out.as_tensor(), label.as_tensor())
    with pytest.raises(ValueError, match="threshold"):
        ScanLabelFromFrameProbability(threshold=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        FromNetworkFrame("cubic")
