"""Ignite handler computing the ISLES 2018 metrics per case and writing the cohort summary.

See :mod:`ctbundles.metrics.isles_evaluation` for the metrics and the empty-mask conventions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.data import MetaTensor
from monai.utils import IgniteInfo, min_version, optional_import

from ctbundles.metrics.isles_evaluation import CONVENTIONS, HD_SENTINEL_MM, isles_case_metrics, summarize_cases
from ctbundles.transforms.score_report import case_id, write_csv_rows, write_json

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ISLESMetricsHandler"]


class ISLESMetricsHandler:
    """Per-case ISLES 2018 metrics (Dice, max HD in mm, AVD in mL, precision, recall) and summaries.

    On every ``ITERATION_COMPLETED`` each decollated item of ``engine.state.output`` with binary
    ``pred`` and ``label`` (same grid; the original grid after ``Invertd``) is scored under every
    convention in ``conventions``; the spacing comes from the label's affine, the case name from the
    prediction's source (the case folder or stacked file). On ``COMPLETED`` it
    writes ``<output_dir>/isles_metrics.csv`` (one row per case and convention) and
    ``isles_summary.json`` (mean and SD per convention), atomically. The summary is also put in
    ``engine.state.metrics["isles"]`` and the 2018 mean Dice in ``engine.state.metrics["isles_dice"]``.

    Args:
        output_dir: folder of the CSV and the JSON.
        pred_key: key of the binary prediction.
        label_key: key of the reference mask.
        conventions: empty-mask conventions to report ("isles2018", "isles2022").
        hd_sentinel: HD when a mask is empty.
        output_transform: maps ``engine.state.output`` to the items.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        pred_key: str = "pred",
        label_key: str = "label",
        conventions: Sequence[str] = CONVENTIONS,
        hd_sentinel: float = HD_SENTINEL_MM,
        output_transform: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key = pred_key, label_key
        self.conventions = tuple(conventions)
        self.hd_sentinel = hd_sentinel
        self.output_transform = output_transform
        self.rows: list[dict[str, Any]] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _iteration(self, engine: Engine) -> None:
        output = self.output_transform(engine.state.output)
        items = [output] if isinstance(output, Mapping) else list(output or [])
        for item in items:
            pred, label = item[self.pred_key], item[self.label_key]
            ref = label if isinstance(label, MetaTensor) else pred
            spacing = np.asarray(ref.pixdim, dtype=float)[-3:] if isinstance(ref, MetaTensor) else np.ones(3)
            # the case is named after the input maps (the case folder), else the label file
            named = pred if isinstance(pred, MetaTensor) and pred.meta.get("filename_or_obj") else ref
            source = named.meta.get("filename_or_obj") if isinstance(named, MetaTensor) else None
            case = case_id(source, default=f"case_{len(self.rows):04d}")
            for conv in self.conventions:
                m = isles_case_metrics(pred, label, spacing, convention=conv, hd_sentinel=self.hd_sentinel)
                self.rows.append({"case": case, **m})

    def _completed(self, engine: Engine) -> None:
        summary = {
            conv: summarize_cases([r for r in self.rows if r["convention"] == conv]) for conv in self.conventions
        }
        summary["hd_sentinel_mm"] = self.hd_sentinel
        if self.rows:
            write_csv_rows(self.output_dir / "isles_metrics.csv", self.rows)
        write_json(self.output_dir / "isles_summary.json", summary)
        engine.state.metrics["isles"] = summary
        first = self.conventions[0]
        engine.state.metrics["isles_dice"] = summary[first]["dice"]["mean"]
        self.logger.info("ISLES metrics (%s): %s", first, summary[first])
