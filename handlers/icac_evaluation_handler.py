"""Ignite handler collecting the ICAC evaluation of Bortsova et al., MICCAI 2017 (Sec. 4, Table 1, Fig. 2).

Per case (each decollated item of a MONAI evaluator's output): Dice of the prediction against the
reference, voxel counts and the ICAC volumes (mm^3). At the end of the run: ``icac_evaluation.json``
(the cohort figures of ``ctbundles.metrics.icac_evaluation.summarize`` plus every case),
``icac_evaluation_cases.csv`` and ``icac_volume_scatter.png``, all written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.utils import IgniteInfo, min_version, optional_import

from ctbundles.atomic_io import atomic_write_text
from ctbundles.metrics.icac_evaluation import dice_counts, save_volume_scatter, summarize

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ICACEvaluationHandler"]


def _voxel_volume(image) -> float:
    affine = getattr(image, "affine", None)
    if affine is None:
        return 1.0
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return float(abs(np.linalg.det(a)))


class ICACEvaluationHandler:
    """Collect per-case Dice and ICAC volumes; write the cohort evaluation at the end of the run.

    Args:
        output_dir: folder of the outputs (created).
        pred_key: binary (or side-labelled) prediction after the 130 HU threshold.
        label_key: reference ICAC mask (nonzero = ICAC).
        image_key: key whose MetaTensor metadata gives the case name and the voxel volume.
        empty_dice: Dice of a case where both masks are empty (1.0; the paper's cohort has ICAC).
        name: logger name.
    """

    def __init__(self, output_dir: str | os.PathLike, pred_key: str = "pred", label_key: str = "label_icac",
                 image_key: str = "hu", empty_dice: float = 1.0, name: str | None = None):
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.empty_dice = float(empty_dice)
        self.logger = logging.getLogger(name or __name__)
        self.cases: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.cases = []

    def add_case(self, case: str, pred, label, voxel_volume_mm3: float) -> dict[str, Any]:
        """Record one case from its masks; returns the record."""
        inter, n_pred, n_ref = dice_counts(pred, label)
        dice = self.empty_dice if n_pred + n_ref == 0 else 2.0 * inter / (n_pred + n_ref)
        record = {
            "case": case,
            "dice": dice,
            "intersection": inter,
            "n_pred": n_pred,
            "n_ref": n_ref,
            "pred_volume_mm3": n_pred * voxel_volume_mm3,
            "ref_volume_mm3": n_ref * voxel_volume_mm3,
        }
        self.cases.append(record)
        return record

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, (list, tuple)) else [output]
        batch = engine.state.batch
        batch_items = batch if isinstance(batch, (list, tuple)) else [batch] * len(items)
        for i, out_item in enumerate(items):
            # MONAI evaluators keep input keys (e.g. the HU copy) in ``state.batch``, new keys in ``state.output``
            item = {**batch_items[i], **out_item} if i < len(batch_items) and isinstance(batch_items[i], dict) else out_item
            image = item.get(self.image_key)
            meta = getattr(image, "meta", {}) or {}
            source = meta.get("filename_or_obj", f"case_{len(self.cases):04d}")
            case = Path(str(source)).name.split(".")[0]
            pred = np.asarray(item[self.pred_key].detach().cpu() if hasattr(item[self.pred_key], "detach") else item[self.pred_key])
            label = np.asarray(item[self.label_key].detach().cpu() if hasattr(item[self.label_key], "detach") else item[self.label_key])
            self.add_case(case, pred, label, _voxel_volume(image))

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write the JSON summary, the per-case CSV and the volume scatter PNG; returns the summary."""
        if not self.cases:
            self.logger.warning("ICACEvaluationHandler: no case collected, nothing written")
            return {}
        self.summary = summarize(self.cases)
        atomic_write_text(self.output_dir / "icac_evaluation.json", json.dumps({**self.summary, "cases": self.cases}, indent=2))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.cases[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.cases)
        atomic_write_text(self.output_dir / "icac_evaluation_cases.csv", buf.getvalue())
        save_volume_scatter([c["pred_volume_mm3"] for c in self.cases], [c["ref_volume_mm3"] for c in self.cases],
                            self.output_dir / "icac_volume_scatter.png")
        self.logger.info("ICAC evaluation of %d cases: mean Dice %.3f, absolute Dice %s", len(self.cases),
                         self.summary["dice_mean"], self.summary["absolute_dice"])
        return self.summary
