"""Epoch-driven ICAC training schedules (Bortsova et al. 2017, Sec. 3)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from ctbundles.handlers.icac_schedules import ICACScheduleHandler, aux_weight, learning_rate, momentum, positive_weight
from ctbundles.losses.icac_masked_ce import ICACMaskedCELoss


@pytest.mark.parametrize(
    "epoch, w, a, lr, mom",
    [
        (1, 1000.0, 1.0, 0.1, 0.9),
        (5, 1000.0, 0.92, 0.1, 0.9),
        (6, 1.0, 0.9, 0.1, 0.9),
        (10, 1.0, 0.82, 0.1, 0.9),
        (11, 1.0, 0.8, 0.01, 0.99),
        (26, 1.0, 0.5, 0.01, 0.99),
        (51, 1.0, 0.0, 0.01, 0.99),
        (80, 1.0, 0.0, 0.01, 0.99),
    ],
)
def test_schedule_values(epoch, w, a, lr, mom):
    assert positive_weight(epoch) == w
    assert aux_weight(epoch) == pytest.approx(a)
    assert learning_rate(epoch) == pytest.approx(lr)
    assert momentum(epoch) == mom


def test_aux_weight_off():
    assert aux_weight(1, decay_epochs=0) == 0.0


def test_handler_drives_loss_and_sgd_from_ignite_epochs():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5, momentum=0.5)
    loss = ICACMaskedCELoss()
    seen = []

    def step(engine, batch):
        g = opt.param_groups[0]
        seen.append((engine.state.epoch, loss.pos_weight, loss.aux_weight, g["lr"], g["momentum"]))

    engine = Engine(step)
    ICACScheduleHandler(loss, opt).attach(engine)
    engine.run([0], max_epochs=12)
    assert seen[0] == (1, 1000.0, 1.0, 0.1, 0.9)
    assert seen[4][:2] == (5, 1000.0) and seen[5][:2] == (6, 1.0)
    assert seen[9][3:] == (0.1, 0.9)
    assert seen[10][0] == 11 and seen[10][3] == pytest.approx(0.01) and seen[10][4] == 0.99
    assert seen[11][2] == pytest.approx(1 - 11 / 50)
    assert engine.state.metrics["schedule_lr"] == pytest.approx(0.01)
