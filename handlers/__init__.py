"""ctbundles.handlers: ignite handlers (per-case JSON and cohort CSV reports, epoch-driven schedules).

Public names are imported lazily (PEP 562), so importing one module of this package does not
import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CalciumScoreHandler": "calcium_score_handler",
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
