"""Write small CT DICOM series from numpy arrays (pydicom) for the input-layer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_dicom_series(
    folder: str | Path,
    hu: np.ndarray,
    *,
    pixel_spacing: tuple[float, float] = (0.5, 0.5),
    positions_along_normal: Sequence[float] | None = None,
    increment: float = 3.0,
    origin: tuple[float, float, float] = (-10.0, -20.0, 100.0),
    tilt_deg: float = 0.0,
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    slice_thickness: float | None = 3.0,
    series_uid: str | None = None,
    description: str = "test series",
    kvp: float = 120.0,
    kernel: str = "B35f",
    manufacturer: str = "TESTVENDOR",
    prefix: str = "slice",
    shuffle_seed: int | None = 0,
) -> str:
    """Write ``hu`` (X, Y, Z: X the column index, Z the slice) as one DICOM series; return its UID.

    Slice k lies at ``positions_along_normal[k]`` (default ``k * increment``) along the slice
    normal. ``tilt_deg`` tilts the image plane about the x axis (column cosine (0, cos t, -sin t))
    while the slice origins still move along z, as a tilted gantry acquires them. Stored values are
    ``round((hu - intercept) / slope)`` as int16; ``slope=None``/``intercept=None`` leave the
    rescale tags out (stored = hu). Files are named in shuffled order, InstanceNumber descending,
    so the loader must sort by position.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    nz = hu.shape[2]
    if positions_along_normal is None:
        positions_along_normal = [k * increment for k in range(nz)]
    t = np.deg2rad(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(t), -np.sin(t)])
    normal = np.cross(row, col)
    names = [f"{prefix}_{i:03d}.dcm" for i in range(nz)]
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(names)
    for k in range(nz):
        # the slice origin moves along z (table direction); with tilt its distance along the
        # normal is z * cos(t), so z = position / cos(t)
        z = positions_along_normal[k] / float(np.dot(normal, [0.0, 0.0, 1.0]))
        pos = np.asarray(origin, dtype=float) + np.array([0.0, 0.0, z])
        s = 1.0 if slope is None else slope
        b = 0.0 if intercept is None else intercept
        stored = np.round((hu[:, :, k].T - b) / s).astype(np.int16)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.SeriesDescription = description
        ds.Manufacturer = manufacturer
        ds.KVP = kvp
        ds.ConvolutionKernel = kernel
        if slice_thickness is not None:
            ds.SliceThickness = slice_thickness
        ds.GantryDetectorTilt = tilt_deg
        ds.InstanceNumber = nz - k
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in np.concatenate([row, col])]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if slope is not None:
            ds.RescaleSlope = slope
        if intercept is not None:
            ds.RescaleIntercept = intercept
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return series_uid
