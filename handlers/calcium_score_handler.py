"""Ignite handler writing calcium-score reports: one JSON per case and a cohort CSV.

Attach it to a MONAI evaluator (or any ignite ``Engine``) whose post-processing puts a report of
:class:`ctbundles.transforms.calcium_transforms.CalciumScored` (Agatston, REFERENCES.md section 1)
or :class:`~ctbundles.transforms.calcium_transforms.ICACVolumed` in each decollated item. Every
file records the scoring parameters, so two runs can be compared.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from monai.data import MetaTensor
from monai.utils import IgniteInfo, min_version, optional_import

from ctbundles.transforms.score_report import case_id, read_csv_rows, report_row, write_csv_rows, write_json

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CalciumScoreHandler"]


class CalciumScoreHandler:
    """Write ``<case>.json`` per case and one row per case in ``<output_dir>/<cohort_csv>``.

    On every ``ITERATION_COMPLETED`` the handler reads ``engine.state.output`` (a MONAI decollated
    list of dicts, or one dict) and, when that holds no report, ``engine.state.batch``. The case
    id is the image's file name (``meta["filename_or_obj"]`` of ``image_key``, or the report's
    ``source_image``) without its suffix; a repeated id in one run gets ``_2``, ``_3``... Files are
    written atomically (temporary file + ``os.replace``) and never over an input. The CSV holds
    one row per case with a header (the union of columns); rows already in an existing CSV are
    kept, and a case scored again replaces its row.

    Args:
        output_dir: folder of the JSON files and the CSV (created).
        cohort_csv: CSV file name inside ``output_dir`` (or an absolute path).
        report_key: key of the report in each item (``"calcium_score"``; ``"icac_volume"`` for ICAC).
        image_key: key whose ``MetaTensor`` metadata names the case.
        output_transform: maps ``engine.state.output`` to the items (identity by default).
        name: logger name.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        cohort_csv: str = "scores.csv",
        report_key: str = "calcium_score",
        image_key: str = "image",
        output_transform: Callable[[Any], Any] = lambda x: x,
        name: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.csv_path = Path(cohort_csv) if os.path.isabs(cohort_csv) else self.output_dir / cohort_csv
        self.report_key = report_key
        self.image_key = image_key
        self.output_transform = output_transform
        self.logger = logging.getLogger(name or __name__)
        self._rows: list[dict[str, Any]] | None = None
        self._seen: set[str] = set()
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _items(self, engine: Engine) -> list[Mapping[str, Any]]:
        for source in (self.output_transform(engine.state.output), engine.state.batch):
            items = [source] if isinstance(source, Mapping) else list(source or []) if isinstance(source, (list, tuple)) else []
            items = [i for i in items if isinstance(i, Mapping) and isinstance(i.get(self.report_key), Mapping)]
            if items:
                return items
        return []

    def _case(self, item: Mapping[str, Any], report: Mapping[str, Any], index: int) -> tuple[str, str | None]:
        source = None
        image = item.get(self.image_key)
        if isinstance(image, MetaTensor):
            source = image.meta.get("filename_or_obj")
        if source is None and isinstance(item.get(f"{self.image_key}_meta_dict"), Mapping):
            source = item[f"{self.image_key}_meta_dict"].get("filename_or_obj")
        if source is None:
            source = report.get("source_image")
        if isinstance(source, (list, tuple)):
            source = source[0] if source else None
        name = case_id(source, default=f"case_{index:04d}")
        unique, k = name, 2
        while unique in self._seen:
            unique, k = f"{name}_{k}", k + 1
        self._seen.add(unique)
        return unique, None if source is None else str(source)

    def __call__(self, engine: Engine) -> None:
        items = self._items(engine)
        if not items:
            self.logger.warning("CalciumScoreHandler: no '%s' report in the engine output of iteration %s", self.report_key, engine.state.iteration)
            return
        if self._rows is None:
            self._rows = read_csv_rows(self.csv_path) if self.csv_path.is_file() else []
        for item in items:
            report = dict(item[self.report_key])
            case, source = self._case(item, report, len(self._seen) + 1)
            report.setdefault("case", case)
            inputs = [source] if source else []
            path = write_json(self.output_dir / f"{case}.json", report, inputs=inputs)
            self.written.append(path)
            row = report_row(report, case)
            self._rows = [r for r in self._rows if r.get("case") != case] + [row]
            self.logger.info("calcium score of %s written to %s", case, path)
        write_csv_rows(self.csv_path, self._rows)
