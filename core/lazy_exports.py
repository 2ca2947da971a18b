"""Lazy public names for the sub-packages (PEP 562).

``ctbundles.transforms.load_ct`` works, but importing ``ctbundles.transforms.ct_io`` alone does not
import every other module of the package (networks, MONAI transforms, ...).
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose public ``name`` lives in module ``exports[name]``."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__():
        return sorted(exports)

    return sorted(exports), __getattr__, __dir__
