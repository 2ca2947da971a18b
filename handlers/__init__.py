"""ctbundles.handlers: ignite handlers: per-case JSON and cohort CSV reports, epoch-driven schedules, evaluations."""

from ctbundles.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CalciumScoreHandler": "calcium_score_handler",
    "ICACScheduleHandler": "icac_schedules",
    "ICACEvaluationHandler": "icac_evaluation_handler",
    "CACEvaluationHandler": "cac_evaluation_handler",
    "ISLESMetricsHandler": "isles_metrics_handler",
})
