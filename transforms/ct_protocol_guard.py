"""Refuse or warn on scans a calcium score cannot be trusted on (REFERENCES.md section 1), as a MONAI
transform placed right after loading: contrast-enhanced scans, data that is not HU, slices thicker
than 3 mm, ... found by the foundation's :func:`ctbundles.transforms.ct_checks.check_ct`.

The DenseRAUnet paper (Ma and Zhang 2019) scores calcium on chest and cardiac CT; its training scans have 1.0-3.0 mm
slices (section 2.1). Agatston scoring needs non-contrast scans of at most 3 mm (REFERENCES.md section 1): outside
that domain the bundle refuses (errors) or warns."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ctbundles.errors import CTInputError
from ctbundles.transforms.ct_checks import check_ct

__all__ = ["CTProtocolGuard", "CTProtocolGuardd"]

logger = logging.getLogger(__name__)


class CTProtocolGuard(Transform):
    """Run :func:`check_ct` on a loaded CT: raise :class:`CTInputError` (naming the file and the
    problem) for every finding whose code is in ``refuse``, append the other findings of severity
    "error" or "warning" to ``meta["ct_warnings"]`` (the scoring report copies them) and log them.

    Args:
        refuse: finding codes that stop the pipeline. Default: contrast enhancement and data that is
            not HU. Add "thick_slices" to refuse slices thicker than 3 mm instead of warning.
    """

    def __init__(self, refuse: Sequence[str] = ("contrast", "not_hu")) -> None:
        self.refuse = tuple(refuse)

    def __call__(self, image):
        findings = check_ct(image)
        meta = getattr(image, "meta", {}) or {}
        name = meta.get("filename_or_obj", "<in-memory image>")
        stop = [f for f in findings if f.code in self.refuse]
        if stop:
            problems = " ".join(f"[{f.code}] {f.message}" for f in stop)
            raise CTInputError(f"{name}: refused for calcium scoring: {problems}")
        notes = [f"[{f.code}] {f.message}" for f in findings if f.severity in ("error", "warning")]
        for note in notes:
            logger.warning("%s: %s", name, note)
        if notes and isinstance(image, MetaTensor):
            known = list(image.meta.get("ct_warnings") or [])
            image.meta["ct_warnings"] = known + [n for n in notes if n not in known]
        return image


class CTProtocolGuardd(MapTransform):
    """Dictionary version of :class:`CTProtocolGuard` (only maps keys)."""

    def __init__(
        self, keys: KeysCollection, refuse: Sequence[str] = ("contrast", "not_hu"), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.guard = CTProtocolGuard(refuse)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.guard(d[key])
        return d
