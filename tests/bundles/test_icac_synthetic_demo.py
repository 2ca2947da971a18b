"""ICAC bundle, CPU learning demonstration overlays (docs/README.md, Performance).

The reduced configuration must keep the paper's architecture: the overlay network's receptive
field is measured (gradient of one output voxel), its patch gives a non-empty output, the
validation window covers the demo frame in one pass, and the schedules are the paper's scaled
to the demo's epoch count. The inference overlay builds the same network and loads the shipped
demonstration weights strictly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "icac_ct_segmentation"
CONFIGS = BUNDLE / "configs"


def _parser(*names) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    return parser


def test_demo_overlay_keeps_the_architecture_and_receptive_field():
    parser = _parser("train.json", "train_synthetic_demo.json")
    net = parser.get_parsed_content("network_def")
    widths = sorted({m.out_channels for m in net.modules() if isinstance(m, nn.Conv3d) and m.out_channels > 1})
    assert widths == [4, 8, 16]
    assert net.num_layers() == 23 and len(net.heads) == 6
    # measured receptive field of one output voxel with positive averaging weights
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            nn.init.zeros_(m.bias)
    net.eval()
    x = torch.ones(1, 1, 89, 89, 38, requires_grad=True)
    out = net(x)
    assert tuple(out.shape[2:]) == (8, 8, 2)
    out[0, 0, 3, 4, 1].backward()
    support = (x.grad[0, 0] != 0).nonzero()
    assert (support.max(0).values - support.min(0).values + 1).tolist() == [85, 85, 37]
    # the training patch and the one-pass validation window
    patch = parser.get_parsed_content("patch_size")
    assert net.output_size(patch) == (36, 36, 17)
    frame = parser.get_parsed_content("frame_shape")
    roi_out = net.output_size(parser.get_parsed_content("val_roi_size"))
    assert all(o >= f for o, f in zip(roi_out, frame))


@pytest.mark.parametrize(
    "epoch, pos_weight, aux, lr, momentum",
    [(1, 1000.0, 1.0, 0.1, 0.9), (2, 1.0, 0.9, 0.1, 0.9), (3, 1.0, 0.8, 0.01, 0.99), (11, 1.0, 0.0, 0.01, 0.99)],
)
def test_demo_schedules_are_the_papers_scaled_to_20_epochs(epoch, pos_weight, aux, lr, momentum):
    # paper (100-epoch default): pos weight 5 epochs, lr/momentum switch after 10, aux decay 50; x 20/100
    parser = _parser("train.json", "train_synthetic_demo.json")
    assert parser.get_parsed_content("epochs") == 20
    handler = parser.get_parsed_content("train#handlers#0")
    v = handler.values(epoch)
    assert v["pos_weight"] == pos_weight and v["lr"] == pytest.approx(lr) and v["momentum"] == momentum
    assert v["aux_weight"] == pytest.approx(aux)


def test_inference_overlay_loads_the_demo_weights():
    weights = BUNDLE / "models" / "model_demo.pt"
    if not weights.exists():
        pytest.skip("models/model_demo.pt not shipped")
    parser = _parser("inference.json", "inference_synthetic_demo.json")
    assert parser.get_parsed_content("handlers#0#load_path").endswith("models/model_demo.pt")
    net = parser.get_parsed_content("network_def")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state), strict=True)
    assert weights.stat().st_size < 25 * 2**20
