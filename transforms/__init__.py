"""ctbundles.transforms: the CT input layer, its checks, and calcium scoring (REFERENCES.md section 1).

Public names are imported lazily (PEP 562), so importing one module of this package does not
import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_ct": "ct_io",
    "load_label": "ct_io",
    "LoadCT": "ct_io",
    "LoadCTd": "ct_io",
    "list_dicom_series": "ct_io",
    "acquisition_facts": "ct_io",
    "Finding": "ct_checks",
    "check_ct": "ct_checks",
    "assert_same_grid": "ct_checks",
    "detect_contrast": "ct_checks",
    "CalciumScoreParams": "calcium_scoring",
    "score_calcium": "calcium_scoring",
    "icac_volume": "calcium_scoring",
    "agatston_weight": "calcium_scoring",
    "risk_category": "calcium_scoring",
    "cac_drs": "calcium_scoring",
    "chest_ct_category": "calcium_scoring",
    "parse_label_mapping": "calcium_scoring",
    "CalciumScore": "calcium_transforms",
    "CalciumScored": "calcium_transforms",
    "ICACVolume": "calcium_transforms",
    "ICACVolumed": "calcium_transforms",
    "ThresholdMaskHU": "calcium_transforms",
    "ThresholdMaskHUd": "calcium_transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
