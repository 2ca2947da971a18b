"""A MONAI image writer whose files appear whole or not at all.

``SaveImaged`` hands each segmentation to a writer that calls ``nibabel.save`` on the final name, so a
crash or a full disk during the write leaves a truncated ``<case>_seg.nii.gz`` that the next step (a
score, MONAI Label, a later run with ``--resume``) would read. :class:`AtomicNibabelWriter` writes
through :func:`ctbundles.atomic_io.atomic_write`: into a temporary file in the same folder, renamed
onto the final name when complete. The bundles' ``inference.json`` pass it as ``SaveImaged``'s
``writer``.
"""

from __future__ import annotations

from monai.config import PathLike
from monai.data import NibabelWriter

from ctbundles.atomic_io import atomic_write

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` that writes to a temporary name and renames it onto ``filename``."""

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        atomic_write(filename, lambda tmp: NibabelWriter.write(self, tmp, verbose=verbose, **obj_kwargs))
