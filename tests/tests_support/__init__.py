"""Helpers shared by the test modules (not fixtures)."""

from __future__ import annotations

from pathlib import Path

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def list_bundles() -> list[Path]:
    """Every bundle folder under bundles/ (a folder with a configs/ sub-folder)."""
    return sorted(p for p in BUNDLES_DIR.iterdir() if (p / "configs").is_dir()) if BUNDLES_DIR.is_dir() else []
