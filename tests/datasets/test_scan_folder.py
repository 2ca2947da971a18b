"""The scans of a folder as every bundle's inference.json lists them (ctbundles.datasets.scan_folder)."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from ctbundles.datasets.scan_folder import FORMATS, scan_paths
from ctbundles.errors import CTInputError
from tests_support import list_bundles


def _folder(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    for name in ("b.nii.gz", "a.nii", "c.mhd", "c.raw", "d.mha", "notes.txt", ".hidden.nii.gz"):
        (root / name).write_bytes(b"")
    (root / "series_1").mkdir()
    (root / ".git").mkdir()
    return root


@pytest.mark.parametrize("formats, names", [
    (("nifti", "metaimage", "dicom"), ["a.nii", "b.nii.gz", "c.mhd", "d.mha", "series_1"]),
    (("nifti", "metaimage"), ["a.nii", "b.nii.gz", "c.mhd", "d.mha"]),
    (("nifti",), ["a.nii", "b.nii.gz"]),
    (("dicom",), ["series_1"]),
])
def test_scan_paths_lists_the_scans_of_the_formats_asked_sorted(tmp_path, formats, names):
    root = _folder(tmp_path)
    assert scan_paths(root, formats) == [str(root / n) for n in names]


def test_scan_paths_refuses_a_missing_folder_an_empty_one_and_a_file(tmp_path):
    with pytest.raises(CTInputError, match=r"nowhere: dataset_dir is not a folder \(no such path\)"):
        scan_paths(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "c.raw").write_bytes(b"")
    with pytest.raises(CTInputError, match=r"empty: no scans to read in dataset_dir \(expected \.nii / \.nii\.gz files\)"):
        scan_paths(tmp_path / "empty", ("nifti",))
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(CTInputError, match=r"x\.nii\.gz: dataset_dir is not a folder$"):
        scan_paths(tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="formats"):
        scan_paths(tmp_path, ("png",))


@pytest.mark.parametrize("bundle", list_bundles(), ids=lambda p: p.name)
def test_every_inference_config_lists_its_folder_and_refuses_a_mistyped_one(bundle, tmp_path):
    """A mistyped --dataset_dir is an error naming the folder, not a run that writes nothing (MONAI's
    config parser reports it as the cause of its "Failed to evaluate ConfigExpression")."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["dataset_dir"] = str(tmp_path / "mistyped")
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist")
    cause = info.value.__cause__
    assert isinstance(cause, CTInputError) and str(cause) == f"{tmp_path / 'mistyped'}: dataset_dir is not a folder (no such path)"
    root = _folder(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["dataset_dir"] = str(root)
    listed = [p.split("/")[-1] for p in parser.get_parsed_content("datalist")]
    assert {"a.nii", "b.nii.gz"} <= set(listed) and "notes.txt" not in listed and "c.raw" not in listed


def test_scan_paths_refuses_an_output_folder_inside_the_scans_and_scans_that_share_an_output(tmp_path):
    """Review of session 16: with --output_dir equal to --dataset_dir, the prediction a_seg.nii.gz replaced an input
    of that name; a DICOM folder "a" and a.nii.gz both wrote a_seg.nii.gz, the second replacing the first."""
    root = _folder(tmp_path)
    for out in (root, root / "predictions"):
        with pytest.raises(CTInputError, match="output_dir is the scans' folder"):
            scan_paths(root, ("nifti",), out)
    assert scan_paths(root, ("nifti",), tmp_path / "out") == [str(root / "a.nii"), str(root / "b.nii.gz")]
    (root / "b.mhd").write_bytes(b"")
    (root / "a").mkdir()
    with pytest.raises(CTInputError, match=r"a, a\.nii -> a_seg; b\.mhd, b\.nii\.gz -> b_seg"):
        scan_paths(root, FORMATS, tmp_path / "out")
    assert len(scan_paths(root, ("nifti",), tmp_path / "out")) == 2  # only the formats asked can clash
    assert len(scan_paths(root, FORMATS)) == 7  # without output_dir: the plain listing, clashes included


@pytest.mark.parametrize("bundle", list_bundles(), ids=lambda p: p.name)
def test_every_inference_config_writes_atomically_and_outside_the_scans(bundle, tmp_path):
    from ctbundles.transforms.atomic_image_writer import AtomicNibabelWriter

    root = _folder(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["dataset_dir"], parser["output_dir"] = str(root), str(root)
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist")
    assert isinstance(info.value.__cause__, CTInputError) and "output_dir is the scans' folder" in str(info.value.__cause__)
    parser["output_dir"] = str(tmp_path / "out")
    savers = [t for t in parser.get_parsed_content("postprocessing").transforms if type(t).__name__ == "SaveImaged"]
    assert len(savers) == 1 and savers[0].saver.writers == (AtomicNibabelWriter,)
