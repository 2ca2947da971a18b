"""ctbundles.losses: the papers' training objectives."""

from ctbundles.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ICACMaskedCELoss": "icac_masked_ce",
    "BootstrapIoULoss": "bootstrap_iou",
    "BootstrapLoss": "bootstrap_iou",
    "ExponentialIoULoss": "bootstrap_iou",
    "PseudoDiceLoss": "ms_dcnn",
    "OrcaScoreDiceLoss": "orcascore_cascade",
    "OrcaScoreFocalLoss": "orcascore_cascade",
})
