"""Shared fixtures: the real CT scans in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"
ZOO_SCHEMA = SHARED_DIR / "zoo" / "meta_schema_20240725.json"
BUNDLES_DIR = REPO_ROOT / "bundles"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real CT scans beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT scans not available: {SHARED_DATA} does not exist (a fresh clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def zoo_schema() -> Path:
    if not ZOO_SCHEMA.is_file():
        pytest.skip(f"Model Zoo metadata schema not available: {ZOO_SCHEMA} does not exist")
    return ZOO_SCHEMA
