"""ctbundles.synthetic: synthetic CT cohorts with known answers (chest, cardiac, head, CT perfusion)."""

from ctbundles.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "SyntheticCase": "case",
    "GENERATORS": "registry",
    "generate": "registry",
    "generate_chest": "chest_cardiac",
    "generate_cardiac": "chest_cardiac",
    "CORONARY_LABELS": "chest_cardiac",
    "generate_head": "head",
    "reference_head": "head",
    "HEAD_LABELS": "head",
    "generate_ctp": "ctp",
    "generate_ctp_patient": "ctp",
})
