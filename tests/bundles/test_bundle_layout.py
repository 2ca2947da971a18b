"""Model Zoo layout and metadata checks (../shared/REFERENCES.md section 4) for every bundle."""

from __future__ import annotations

import json

import pytest

from ctbundles.zoo_export import REQUIRED_METADATA
from tests_support import list_bundles

jsonschema = pytest.importorskip("jsonschema")

REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "LICENSE",
)


@pytest.mark.parametrize("bundle", list_bundles(), ids=lambda p: p.name)
def test_required_files(bundle):
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name} lacks {missing}"


@pytest.mark.parametrize("bundle", list_bundles(), ids=lambda p: p.name)
def test_metadata_validates_against_zoo_schema(bundle, zoo_schema):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    schema = json.loads(zoo_schema.read_text())
    jsonschema.validate(meta, schema)
    for key in REQUIRED_METADATA:
        assert key in meta, f"{bundle.name}: metadata lacks {key}"
    assert meta["version"] in meta["changelog"]
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert "+" not in meta[key], f"{key} must be an exact pip version, got {meta[key]}"
    fmt = meta["network_data_format"]
    assert "image" in fmt["inputs"] and "pred" in fmt["outputs"]
    assert fmt["outputs"]["pred"].get("channel_def"), "outputs.pred.channel_def must name the labels"
