"""Temporary bundle copies with randomly initialised weights, saved where ``configs/inference.json`` loads them.

The copy's inference config gets ``config_updates`` (e.g. smaller widths for fast tests) written
into it, then ``ctbundles.batch_inference.save_random_weights`` saves a random state dict of the
config's own network at every checkpoint it loads (``CheckpointLoader`` handlers and
``<stage>_weights`` paths). The copy therefore runs exactly as the bundle would with trained
weights, only with untrained numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ctbundles.batch_inference import save_random_weights

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


def make_random_bundle(name: str, dest, config_updates: dict | None = None, seed: int = 0) -> Path:
    """Copy ``bundles/<name>`` to ``dest/<name>`` (shipped weights left out), write
    ``config_updates`` (top-level or ``a#b`` ids) into its ``configs/inference.json`` and save
    random weights for every checkpoint it loads."""
    from monai.bundle import ConfigParser

    bundle = Path(dest) / name
    shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "__pycache__"))
    if config_updates:
        cfg_path = bundle / "configs" / "inference.json"
        parser = ConfigParser()
        parser.read_config(str(cfg_path))
        for key, value in config_updates.items():
            parser[key] = value
        cfg_path.write_text(json.dumps(parser.get(), indent=1))
    save_random_weights(bundle, seed=seed)
    return bundle
