"""CACEvaluationHandler on an ignite Engine: per-case records and the cohort summary file."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine

from monai.data import MetaTensor

from ctbundles.handlers.cac_evaluation_handler import CACEvaluationHandler


def item(name, ref, raw, post, a_ref, a_raw, a_post):
    img = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"filename_or_obj": f"/data/{name}.nii.gz"})
    return {
        "image": img,
        "label": ref,
        "pred_raw": raw,
        "pred": post,
        "calcium_score_ref": {"agatston": a_ref},
        "calcium_score_raw": {"agatston": a_raw},
        "calcium_score": {"agatston": a_post},
    }


def mask(*idx):
    m = torch.zeros(1, 4, 4, 2)
    for i in idx:
        m[(0, *i)] = 1
    return m


def test_handler_writes_summary(tmp_path):
    batches = [
        [item("a", mask((0, 0, 0), (1, 1, 0)), mask((0, 0, 0), (2, 2, 1)), mask((0, 0, 0)), 50.0, 70.0, 40.0)],
        [item("b", mask(), mask((3, 3, 1)), mask(), 0.0, 2.0, 0.0)],
    ]
    engine = Engine(lambda e, b: b)
    handler = CACEvaluationHandler(tmp_path, summary_file="eval.json", cohort="cardiac")
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["cohort"] == "cardiac" and data["n_cases"] == 2
    assert [c["case"] for c in data["cases"]] == ["a", "b"]
    a = data["cases"][0]
    assert (a["tp_raw"], a["fp_raw"], a["fn_raw"]) == (1, 1, 1)
    assert (a["tp_post"], a["fp_post"], a["fn_post"]) == (1, 0, 1)
    # lesions (6-connected): reference a has 2 one-voxel lesions; raw hits one and adds one elsewhere
    counts = [a[f"lesions_{k}_raw"] for k in ("detected", "ref", "true", "pred")]
    assert counts == [1, 2, 1, 2]
    # pooled raw lesions: detected 1 of 2, true 1 of 3 predicted (case b adds a false one) -> F1 of 1/2 and 1/3
    assert data["raw"]["lesion_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # pooled raw: TP 1, FP 2, FN 1 -> F1 2/5; post: TP 1, FP 0, FN 1 -> 2/3
    assert data["raw"]["pixel_f1"] == pytest.approx(0.4)
    assert data["post"]["pixel_f1"] == pytest.approx(2 / 3)
    # categories ref (11-100, 0), raw (11-100, 1-10), post (11-100, 0)
    assert data["raw"]["risk_category_accuracy"] == 0.5 and data["post"]["risk_category_accuracy"] == 1.0
    assert engine.state.metrics["cac_post_pixel_f1"] == pytest.approx(2 / 3)


def test_undefined_icc_is_null(tmp_path):
    engine = Engine(lambda e, b: b)
    handler = CACEvaluationHandler(tmp_path)
    handler.attach(engine)
    engine.run([[item("a", mask(), mask(), mask(), 0.0, 0.0, 0.0)]], max_epochs=1)
    data = json.loads((tmp_path / "cac_evaluation.json").read_text())
    assert data["post"]["agatston_icc"] is None
