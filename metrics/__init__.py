"""ctbundles.metrics: evaluation protocols: orCaScore, ISLES 2018 and the papers' tables."""

from ctbundles.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "icc_absolute_agreement": "agreement",
    "weighted_kappa": "agreement",
    "isles_case_metrics": "isles_evaluation",
    "summarize_cases": "isles_evaluation",
    "fold_split": "isles_evaluation",
    "isles_datalist": "isles_evaluation",
    "HD_SENTINEL_MM": "isles_evaluation",
})
