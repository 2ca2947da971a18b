"""Ignite handler collecting the DenseRAUnet evaluation (Ma and Zhang 2019, section 3, Tables 1 and
2): per case pixel counts and Agatston scores of the network mask before ("raw") and after ("post")
post-processing against the reference, and at the end of the run a cohort summary (pixel F1,
Agatston ICC, risk-category accuracy and linearly weighted kappa), written atomically as JSON."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.data import MetaTensor
from monai.utils import IgniteInfo, min_version, optional_import

from ctbundles.metrics.cac_evaluation import confusion_counts, lesion_counts, summarize_cohort
from ctbundles.transforms.score_report import atomic_write_text, case_id

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CACEvaluationHandler"]


def _finite_or_none(obj):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def _array(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


class CACEvaluationHandler:
    """Collect per-case evaluation records and write ``<output_dir>/<summary_file>``.

    Each decollated item of ``engine.state.output`` must hold the reference ``label_key``, and for
    each variant present the mask (``pred_raw`` / ``pred``) and its calcium-score report
    (``calcium_score_raw`` / ``calcium_score``), and the reference report ``calcium_score_ref``
    (reports from :class:`ctbundles.transforms.calcium_transforms.CalciumScored`). The summary
    (:func:`ctbundles.metrics.cac_evaluation.summarize_cohort`) is also put into
    ``engine.state.metrics`` as ``cac_<variant>_<figure>`` for the stats handlers.

    Args:
        output_dir: folder of the summary file (created).
        summary_file: file name of the JSON summary.
        cohort: cohort name recorded in the summary ("chest" or "cardiac").
        label_key: key of the reference mask.
        variants: variant name -> (mask key, report key).
        ref_report_key: key of the reference report.
        image_key: key whose metadata names the case.
        output_transform: maps ``engine.state.output`` to the items.
        lesion_connectivity: connectivity of lesions for the lesion-level counts (1: 6-connected in
            3D, the orCaScore protocol).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        summary_file: str = "cac_evaluation.json",
        cohort: str = "chest",
        label_key: str = "label",
        variants: Mapping[str, tuple[str, str]] | None = None,
        ref_report_key: str = "calcium_score_ref",
        image_key: str = "image",
        output_transform: Callable[[Any], Any] = lambda x: x,
        lesion_connectivity: int = 1,
    ) -> None:
        self.lesion_connectivity = int(lesion_connectivity)
        self.output_dir = Path(output_dir)
        self.summary_file = summary_file
        self.cohort = cohort
        self.label_key = label_key
        self.variants = dict(variants) if variants is not None else {
            "raw": ("pred_raw", "calcium_score_raw"),
            "post": ("pred", "calcium_score"),
        }
        self.ref_report_key = ref_report_key
        self.image_key = image_key
        self.output_transform = output_transform
        self.records: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []

    def record(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The evaluation record of one decollated item."""
        image = item.get(self.image_key)
        source = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
        rec: dict[str, Any] = {
            "case": case_id(source, default=f"case_{len(self.records) + 1:04d}"),
            "agatston_ref": float(item[self.ref_report_key]["agatston"]),
        }
        truth = _array(item[self.label_key])
        for name, (mask_key, report_key) in self.variants.items():
            if mask_key not in item:
                continue
            pred = _array(item[mask_key])
            tp, fp, fn = confusion_counts(pred, truth)
            rec.update({f"tp_{name}": tp, f"fp_{name}": fp, f"fn_{name}": fn})
            detected, n_ref, true, n_pred = lesion_counts(pred, truth, self.lesion_connectivity)
            rec.update({f"lesions_detected_{name}": detected, f"lesions_ref_{name}": n_ref,
                        f"lesions_true_{name}": true, f"lesions_pred_{name}": n_pred})
            rec[f"agatston_{name}"] = float(item[report_key]["agatston"])
        return rec

    def collect(self, engine: Engine) -> None:
        out = self.output_transform(engine.state.output)
        items = [out] if isinstance(out, Mapping) else list(out or [])
        for item in items:
            self.records.append(self.record(item))

    def write(self, engine: Engine | None = None) -> Path:
        self.summary = {"cohort": self.cohort, **summarize_cohort(self.records), "cases": self.records}
        text = json.dumps(_finite_or_none(self.summary), indent=2, allow_nan=False) + "\n"
        path = atomic_write_text(self.output_dir / self.summary_file, text)
        if engine is not None:
            for name in self.variants:
                for key, value in self.summary.get(name, {}).items():
                    engine.state.metrics[f"cac_{name}_{key}"] = value
        self.logger.info("CAC evaluation of %d %s cases written to %s", len(self.records), self.cohort, path)
        return path
