"""ctbundles.networks: one network per module, named after the paper's model, their inferers, and a CPU
mixed-precision wrapper for MONAI's engines (``mixed_precision``)."""

from ctbundles.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ICACFCN": "icac_fcn",
    "ValidTilingInferer": "icac_inferer",
    "DenseRAUnet": "dense_ra_unet",
    "SlabInferer": "slab_inferer",
    "MSDCNN": "ms_dcnn",
    "CTP_MAP_ORDER": "ms_dcnn",
    "OrcaScoreHeartUNet": "orcascore_heart_unet",
    "OrcaScoreEncoderUNet": "orcascore_encoder_unet",
    "ZeroPadShortcut": "orcascore_encoder_unet",
    "OrcaScoreCascadeInferer": "orcascore_cascade",
    "AutocastForward": "mixed_precision",
})
