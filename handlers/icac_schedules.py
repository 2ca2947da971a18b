"""Epoch-driven schedules of the ICAC FCN training (Bortsova et al., MICCAI 2017, Sec. 3).

- positive-class weight 1000 for the first 5 epochs, then 1;
- auxiliary-loss weights a_i = 1 at the first epoch, decaying linearly to 0 over 50 epochs;
- SGD learning rate 0.1, divided by 10 after epoch 10; momentum 0.9, raised to 0.99 after epoch 10.

Epochs are counted from 1 (ignite's ``engine.state.epoch`` at ``EPOCH_STARTED``). The pure
functions give the value for an epoch; ``ICACScheduleHandler`` applies them at every epoch start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["ICACScheduleHandler", "positive_weight", "aux_weight", "learning_rate", "momentum"]


def positive_weight(epoch: int, initial: float = 1000.0, final: float = 1.0, switch_after: int = 5) -> float:
    """ICAC voxel weight at ``epoch`` (1-based): ``initial`` up to ``switch_after``, then ``final``."""
    return float(initial if epoch <= switch_after else final)


def aux_weight(epoch: int, decay_epochs: int = 50) -> float:
    """Auxiliary-loss weight a_i at ``epoch``: 1 at epoch 1, linear to 0 at epoch ``decay_epochs + 1``."""
    if decay_epochs <= 0:
        return 0.0
    return float(max(0.0, 1.0 - (epoch - 1) / decay_epochs))


def learning_rate(epoch: int, initial: float = 0.1, factor: float = 0.1, switch_after: int = 10) -> float:
    """SGD learning rate: ``initial`` up to ``switch_after``, then ``initial * factor``."""
    return float(initial if epoch <= switch_after else initial * factor)


def momentum(epoch: int, initial: float = 0.9, final: float = 0.99, switch_after: int = 10) -> float:
    """SGD momentum: ``initial`` up to ``switch_after``, then ``final``."""
    return float(initial if epoch <= switch_after else final)


class ICACScheduleHandler:
    """Sets the ICAC loss weights and the SGD hyper-parameters from the epoch (paper Sec. 3).

    Attached to ``Events.EPOCH_STARTED``: before each epoch ``e`` it sets ``loss.pos_weight``,
    ``loss.aux_weight`` and every optimizer parameter group's ``lr`` and ``momentum``. Values
    are also written to ``engine.state.metrics`` (``schedule_pos_weight``, ``schedule_aux_weight``,
    ``schedule_lr``, ``schedule_momentum``) so ``StatsHandler`` / TensorBoard show them.

    Args:
        loss: an object with ``pos_weight`` and ``aux_weight`` attributes (``ICACMaskedCELoss``).
        optimizer: a torch optimizer (SGD in the paper); None leaves the optimizer alone.
        pos_weight_initial, pos_weight_final, pos_weight_epochs: 1000, 1, 5.
        aux_decay_epochs: 50 (0 switches deep supervision off: a_i = 0).
        lr_initial, lr_factor, lr_epochs: 0.1, 0.1, 10.
        momentum_initial, momentum_final, momentum_epochs: 0.9, 0.99, 10.
    """

    def __init__(
        self,
        loss,
        optimizer=None,
        pos_weight_initial: float = 1000.0,
        pos_weight_final: float = 1.0,
        pos_weight_epochs: int = 5,
        aux_decay_epochs: int = 50,
        lr_initial: float = 0.1,
        lr_factor: float = 0.1,
        lr_epochs: int = 10,
        momentum_initial: float = 0.9,
        momentum_final: float = 0.99,
        momentum_epochs: int = 10,
    ):
        self.loss = loss
        self.optimizer = optimizer
        self.pos = (pos_weight_initial, pos_weight_final, pos_weight_epochs)
        self.aux_decay_epochs = aux_decay_epochs
        self.lr = (lr_initial, lr_factor, lr_epochs)
        self.mom = (momentum_initial, momentum_final, momentum_epochs)

    def values(self, epoch: int) -> dict[str, float]:
        """The four scheduled values at ``epoch`` (1-based)."""
        return {
            "pos_weight": positive_weight(epoch, *self.pos),
            "aux_weight": aux_weight(epoch, self.aux_decay_epochs),
            "lr": learning_rate(epoch, *self.lr),
            "momentum": momentum(epoch, *self.mom),
        }

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.apply(engine.state.epoch)
        engine.state.metrics.update({f"schedule_{k}": v for k, v in self.values(engine.state.epoch).items()})

    def apply(self, epoch: int) -> dict[str, float]:
        """Set the values for ``epoch`` on the loss and the optimizer; returns them."""
        v = self.values(epoch)
        self.loss.pos_weight = v["pos_weight"]
        self.loss.aux_weight = v["aux_weight"]
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = v["lr"]
                if "momentum" in group:
                    group["momentum"] = v["momentum"]
        return v
