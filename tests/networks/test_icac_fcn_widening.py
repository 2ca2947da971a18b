"""Function-preserving widening of the ICAC FCN (warm start at the paper's width, bundle docs/training_log.md, "Session 7")."""

from __future__ import annotations

import pytest
import torch

from ctbundles.networks.icac_fcn import ICACFCN
from ctbundles.networks.icac_fcn_widening import widen_icac_state_dict

NO_DROPOUT = (0.0,) * 8


def _trained_like(features, **kw) -> ICACFCN:
    """A narrow network with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(1)
    net = ICACFCN(features=features, **kw)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("new", [(8, 16, 32), (16, 32, 64), (4, 16, 16)])
def test_widened_network_computes_the_narrow_one(new):
    narrow = _trained_like((4, 8, 16)).eval()
    wide = ICACFCN(features=new)
    wide.load_state_dict(widen_icac_state_dict(narrow.state_dict(), (4, 8, 16), wide))
    wide.eval()
    x = torch.randn(1, 1, 97, 97, 41)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert a.shape == b.shape == (1, 1, 16, 16, 5)
    assert a.abs().mean() > 0.1  # not a trivially zero output
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert wide.fuse1.weight.shape == (new[1], new[2] + new[1], 1, 1, 1)


def test_auxiliary_outputs_and_training_mode_are_preserved_and_new_channels_learn():
    """Train mode (batch statistics) with the six auxiliary classifiers, dropout off so the two runs match:
    all seven outputs agree, and one step moves the weights out of the new channels (zero at the start)."""
    narrow = _trained_like((4, 8, 16), dropout=NO_DROPOUT).train()
    wide = ICACFCN(features=(8, 16, 32), dropout=NO_DROPOUT)
    wide.load_state_dict(widen_icac_state_dict(narrow.state_dict(), (4, 8, 16), wide))
    wide.train()
    x = torch.randn(2, 1, 97, 97, 41)
    a, b = narrow(x), wide(x)
    assert a.shape == b.shape == (2, 7, 1, 16, 16, 5)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    out_of_new = wide.block8.conv2.weight[:4, 4:].detach().clone()
    assert torch.count_nonzero(out_of_new) == 0
    (b[:, 0] - 1.0).pow(2).mean().backward()
    torch.optim.SGD(wide.parameters(), lr=0.1).step()
    assert torch.count_nonzero(wide.block8.conv2.weight[:4, 4:]) > 0


def test_widening_refuses_a_narrower_target_and_other_options():
    narrow = ICACFCN(features=(4, 8, 16))
    with pytest.raises(ValueError, match="cannot widen"):
        widen_icac_state_dict(narrow.state_dict(), (4, 8, 16), ICACFCN(features=(2, 8, 16)))
    with pytest.raises(ValueError, match="differ in their parameters"):
        widen_icac_state_dict(narrow.state_dict(), (4, 8, 16), ICACFCN(features=(8, 16, 32), deep_supervision=False))
