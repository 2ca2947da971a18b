"""ctbundles.synthetic: synthetic CT cohorts with known answers (chest, cardiac, head, CT perfusion).

Public names are imported lazily (PEP 562), so importing one module of this package does not
import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SyntheticCase": "case",
    "GENERATORS": "registry",
    "generate": "registry",
    "generate_chest": "chest_cardiac",
    "generate_cardiac": "chest_cardiac",
    "CORONARY_LABELS": "chest_cardiac",
    "generate_head": "head",
    "reference_head": "head",
    "HEAD_LABELS": "head",
    "generate_ctp": "ctp",
    "generate_ctp_patient": "ctp",
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
