"""ICAC evaluation handler: per-case records through an ignite engine, cohort files at the end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from ctbundles.handlers.icac_evaluation_handler import ICACEvaluationHandler


def test_handler_collects_cases_and_writes_outputs(tmp_path):
    affine = torch.diag(torch.tensor([0.5, 0.5, 2.0, 1.0]))  # voxel volume 0.5 mm^3
    outputs = []
    for i, (p, r) in enumerate([([1, 1, 0, 0], [1, 0, 0, 0]), ([1, 1, 1, 1], [1, 1, 1, 1])]):
        hu = MetaTensor(torch.zeros(1, 4, 1, 1), affine=affine, meta={"filename_or_obj": f"/d/case{i}.nii.gz"})
        outputs.append([{"hu": hu, "pred": torch.tensor(p).reshape(1, 4, 1, 1), "label_icac": torch.tensor(r).reshape(1, 4, 1, 1)}])

    engine = Engine(lambda e, b: outputs[e.state.iteration - 1])
    handler = ICACEvaluationHandler(tmp_path)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert [c["case"] for c in handler.cases] == ["case0", "case1"]
    assert handler.cases[0]["dice"] == pytest.approx(2 / 3)
    assert handler.cases[0]["pred_volume_mm3"] == pytest.approx(1.0) and handler.cases[0]["ref_volume_mm3"] == pytest.approx(0.5)
    summary = json.loads((tmp_path / "icac_evaluation.json").read_text())
    assert summary["dice_mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary["absolute_dice"] == pytest.approx(2 * 5 / (6 + 5))
    assert len(summary["cases"]) == 2
    assert (tmp_path / "icac_evaluation_cases.csv").read_text().splitlines()[0].startswith("case,dice,")
    assert b"\r" not in (tmp_path / "icac_evaluation_cases.csv").read_bytes()
    assert (tmp_path / "icac_volume_scatter.png").stat().st_size > 1000
    assert np.isfinite(summary["volume_pearson"])
