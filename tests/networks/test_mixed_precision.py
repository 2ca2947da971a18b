"""CPU bfloat16 forward wrapper for MONAI's trainer and evaluator (ICAC bundle, training log "Session 9")."""

from __future__ import annotations

import pytest
import torch

from ctbundles.networks.icac_fcn import ICACFCN
from ctbundles.networks.mixed_precision import AutocastForward


def _net() -> ICACFCN:
    torch.manual_seed(0)
    return ICACFCN(features=(4, 8, 16), deep_supervision=True)


def test_eval_output_is_float32_and_close_to_the_float32_network():
    net = _net().eval()
    x = torch.randn(1, 1, 97, 97, 41)
    with torch.no_grad():
        ref = net(x)
        out = AutocastForward(net)(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, 1, 16, 16, 5)
    assert not torch.equal(out, ref)  # the convolutions did run in bfloat16
    # bfloat16 keeps 8 bits of mantissa: the logits (about 0.5 in magnitude here) agree to about 1e-2
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=1e-2)


def test_disabled_wrapper_is_the_float32_network():
    net = _net().eval()
    x = torch.randn(1, 1, 97, 97, 41)
    with torch.no_grad():
        torch.testing.assert_close(AutocastForward(net, enabled=False)(x), net(x), rtol=0, atol=0)


def test_training_keeps_float32_parameters_and_deep_supervision_outputs():
    net = _net().train()
    wrapped = AutocastForward(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    out = wrapped(torch.randn(1, 1, 97, 97, 41))
    assert out.dtype == torch.float32 and out.shape == (1, 7, 1, 16, 16, 5)  # main + six auxiliary outputs
    out.mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    opt.step()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # the wrapper's state dict is the network's under "network.": checkpoints are saved from the network itself
    assert set(wrapped.state_dict()) == {f"network.{k}" for k in before}
    assert not torch.equal(net.state_dict()["stem.0.0.weight"], before["stem.0.0.weight"])


@pytest.mark.parametrize("device, kind", [("cpu", "cpu"), ("cuda:0", "cuda"), (torch.device("cpu"), "cpu")])
def test_device_type_accepts_a_bundle_device(device, kind):
    assert AutocastForward(torch.nn.Identity(), device_type=device).device_type == kind


def test_bad_device_type_and_non_tensor_output_are_refused():
    with pytest.raises(ValueError, match="device_type must be 'cpu' or 'cuda'"):
        AutocastForward(torch.nn.Identity(), device_type="meta")

    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(TypeError, match="returned tuple, expected a tensor"):
        AutocastForward(TwoOutputs())(torch.zeros(1))
