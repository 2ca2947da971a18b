"""Synthetic CT generators by kind: ``GENERATORS[kind](seed, **options) -> SyntheticCase``.

``chest`` and ``cardiac`` live in :mod:`ctbundles.synthetic.chest_cardiac`; ``head`` and ``ctp``
are imported lazily from ``ctbundles.synthetic.head`` and ``ctbundles.synthetic.ctp`` when first
called, so a missing module only fails the kind that needs it, with a message naming it.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping

from ctbundles.synthetic.case import SyntheticCase

GENERATOR_PATHS: dict[str, str] = {
    "chest": "ctbundles.synthetic.chest_cardiac:generate_chest",
    "cardiac": "ctbundles.synthetic.chest_cardiac:generate_cardiac",
    "head": "ctbundles.synthetic.head:generate_head",
    "ctp": "ctbundles.synthetic.ctp:generate_ctp",
}
"""kind -> "module:function" of its generator."""


def resolve_generator(path: str) -> Callable[..., SyntheticCase]:
    """Import the generator ``"package.module:function"``; ImportError naming it when absent."""
    module_name, _, func_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(f"synthetic generator {path} is not available: module {module_name} not found ({err})") from err
    try:
        return getattr(module, func_name)
    except AttributeError as err:
        raise ImportError(f"synthetic generator {path} is not available: {module_name} has no {func_name}") from err


class _LazyGenerator:
    """A callable that imports its generator on first use."""

    def __init__(self, kind: str, path: str):
        self.kind, self.path = kind, path
        self._func: Callable[..., SyntheticCase] | None = None

    def __call__(self, seed: int, **options) -> SyntheticCase:
        if self._func is None:
            self._func = resolve_generator(self.path)
        return self._func(seed, **options)

    def __repr__(self) -> str:
        return f"<synthetic generator {self.kind!r} -> {self.path}>"


GENERATORS: Mapping[str, Callable[..., SyntheticCase]] = {kind: _LazyGenerator(kind, path) for kind, path in GENERATOR_PATHS.items()}
"""kind -> generator ``(seed: int, **options) -> SyntheticCase``."""


def generate(kind: str, seed: int, **options) -> SyntheticCase:
    """Generate one case of ``kind``; ValueError listing the kinds when ``kind`` is unknown."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic CT kind {kind!r}; choose from {', '.join(sorted(GENERATORS))}")
    return GENERATORS[kind](seed, **options)
