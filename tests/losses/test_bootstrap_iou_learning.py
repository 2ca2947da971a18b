"""The DenseRAUnet objective drives a (miniature) DenseRAUnet to segment a small bright lesion on one
9-slice stack: the loss and the network learn together (a fast stand-in for a training run)."""

from __future__ import annotations

import pytest
import torch

from ctbundles.losses.bootstrap_iou import BootstrapIoULoss
from ctbundles.networks.dense_ra_unet import DenseRAUnet


@pytest.mark.slow
def test_overfits_one_lesion():
    """50 SGD steps (lr 0.01, momentum 0.9): ~30 s of CPU time on the shared test machine, hence slow."""
    torch.manual_seed(0)
    net = DenseRAUnet(init_features=8, growth_rate=4, block_config=(1, 1, 1, 1), bn_size=2,
                      decoder_channels=(16, 16, 16), head_channels=(8, 8), edb_layers=1)
    x = torch.randn(1, 9, 32, 32) * 0.1
    y = torch.zeros(1, 1, 32, 32)
    y[0, 0, 14:17, 20:23] = 1  # a 3 x 3 pixel "calcification", bright in the central slices
    x[0, 3:6, 14:17, 20:23] += 2.0
    x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y.flip(-1)])  # batch 2: BatchNorm needs > 1 value at 1 x 1
    loss = BootstrapIoULoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    first = None
    for _ in range(50):
        value = loss(net(x), y)
        first = float(value) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        prob = net(x).softmax(1)[:, 1]
    lesion = y[:, 0] > 0
    assert float(value) < 0.1 * first
    assert float(prob[lesion].min()) > 0.5 and float(prob[~lesion].max()) < 0.5  # exact segmentation at 0.5
