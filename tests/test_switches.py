"""Config switches refuse the string a command line gives for ``false`` (ctbundles.switches).

``python -m monai.bundle run --use_rau false`` passes the string ``'false'``; ``bool('false')`` is
True, so without the check an ablation would silently keep the module it meant to remove.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ctbundles.networks.dense_ra_unet import DenseRAUnet
from ctbundles.networks.icac_fcn import ICACFCN
from ctbundles.switches import require_bool
from ctbundles.transforms.icac_supervision import SupervisionMask
from fire import parser as fire_parser
from monai.bundle import ConfigParser

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_require_bool_accepts_booleans_only():
    assert require_bool(True, "x", "T") is True
    assert require_bool(np.bool_(False), "x", "T") is False
    with pytest.raises(TypeError, match=r"T: use_rau must be true or false, got 'false' \(on the command line write --use_rau False\)"):
        require_bool("false", "use_rau", "T")
    for bad in (0, 1, None, "yes"):
        with pytest.raises(TypeError, match="must be true or false"):
            require_bool(bad, "x", "T")


def test_the_command_line_gives_a_string_for_lowercase_false():
    # what `monai.bundle run` receives: fire turns 'False' into a bool, 'false' stays a string
    assert fire_parser.DefaultParseValue("False") is False
    assert fire_parser.DefaultParseValue("false") == "false"


def test_components_refuse_a_string_switch():
    with pytest.raises(TypeError, match="DenseRAUnet: use_edb"):
        DenseRAUnet(use_edb="false")
    with pytest.raises(TypeError, match="ICACFCN: deep_supervision"):
        ICACFCN(features=(2, 2, 2), deep_supervision="false")
    with pytest.raises(TypeError, match="SupervisionMask: supervise_above_130hu"):
        SupervisionMask(enabled="false")
    # the boolean switch really switches: no RAU modules without it
    assert not [m for m in DenseRAUnet(use_rau=False).modules() if type(m).__name__ == "ResidualAtrousUnit"]


@pytest.mark.parametrize(
    "bundle, key, target",
    [("cac_chest_cardiac_ct_segmentation", "use_scse", "network_def"),
     ("cac_orcascore_cascade_ct_segmentation", "use_fp_stage", "inferer"),
     ("icac_ct_segmentation", "residual", "network_def")],
)
def test_bundle_override_with_lowercase_false_fails_with_the_option_named(bundle, key, target):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLES / bundle), key: "false"})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content(target)
    # MONAI wraps the component's error while instantiating; the cause names the option and the fix
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    messages = [str(e) for e in chain if isinstance(e, TypeError)]
    assert any(f"{key} must be true or false, got 'false' (on the command line write --{key} False)" in m for m in messages)
