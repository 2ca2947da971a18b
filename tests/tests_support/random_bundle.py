"""Temporary bundle copies with randomly initialised weights, saved where ``configs/inference.json`` loads them.

Every ``CheckpointLoader`` handler of the copy's inference config names its network by reference
(``"load_dict": {"model": "@roi_network"}``); that network is instantiated from the config (with
``config_updates`` applied first, e.g. smaller widths for fast tests) and its random state dict is
saved at the loader's ``load_path`` (and, for a top-level ``<stage>_weights`` path, the random state dict of
``<stage>_network_def`` is saved there). The copy therefore runs exactly as the bundle would with
trained weights, only with untrained numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


def make_random_bundle(name: str, dest, config_updates: dict | None = None, seed: int = 0, skip: tuple = (),
                       also_train: bool = False) -> Path:
    """Copy ``bundles/<name>`` to ``dest/<name>``, apply ``config_updates`` (top-level or ``a#b`` ids)
    to its ``configs/inference.json`` and save random weights for every checkpoint it loads, except
    the networks named in ``skip`` (ids such as ``"network"``). ``also_train`` applies the same
    updates to ``configs/train.json`` (ids it holds only), so a trainer loads the saved weights."""
    from monai.bundle import ConfigParser

    bundle = Path(dest) / name
    shutil.copytree(BUNDLES / name, bundle)
    cfg_path = bundle / "configs" / "inference.json"
    for path in [cfg_path] + ([bundle / "configs" / "train.json"] if also_train else []):
        if not config_updates:
            break
        parser = ConfigParser()
        parser.read_config(str(path))
        for key, value in config_updates.items():
            if path == cfg_path or key.split("#")[0] in parser.get():
                parser[key] = value
        path.write_text(json.dumps(parser.get(), indent=1))
    parser = ConfigParser()
    parser.read_config(str(cfg_path))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    torch.manual_seed(seed)
    for i, handler in enumerate(parser.get("handlers", [])):
        if not str(handler.get("_target_", "")).endswith("CheckpointLoader"):
            continue
        ref = str(handler["load_dict"]["model"]).lstrip("@")
        if ref in skip:
            continue
        path = Path(parser.get_parsed_content(f"handlers#{i}#load_path", instantiate=False))
        net = parser.get_parsed_content(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    for key in [k for k in parser.get() if isinstance(k, str) and k.endswith("_weights")]:
        value = parser.get_parsed_content(key, instantiate=False)
        stage = key[: -len("_weights")]
        if not isinstance(value, str) or f"{stage}_network" in skip:
            continue
        net = parser.get_parsed_content(f"{stage}_network_def")
        Path(value).parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), value)
    return bundle
