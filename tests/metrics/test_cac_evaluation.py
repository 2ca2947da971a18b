"""CAC evaluation metrics against textbook and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbundles.metrics.cac_evaluation import (
    category_accuracy,
    confusion_counts,
    lesion_counts,
    lesion_detection,
    icc_absolute_agreement,
    precision_recall_f1,
    risk_category_index,
    summarize_cohort,
    weighted_kappa,
)

# Shrout and Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(2,1) = 0.29
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_shrout_fleiss_textbook():
    assert icc_absolute_agreement(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)


def test_icc_two_raters_hand_computed():
    # reference (1, 2, 3), prediction (2, 3, 4): a constant bias of 1
    # grand 2.5; MSR = 2 * ((1.5-2.5)^2 + 0 + (3.5-2.5)^2) / 2 = 2; MSC = 3 * (0.25 + 0.25) / 1 = 1.5; MSE = 0
    # ICC = (2 - 0) / (2 + 0 + 2 * 1.5 / 3) = 2 / 3
    assert icc_absolute_agreement([[1, 2], [2, 3], [3, 4]]) == pytest.approx(2 / 3)
    assert icc_absolute_agreement([[1, 1], [5, 5], [9, 9]]) == pytest.approx(1.0)
    assert math.isnan(icc_absolute_agreement([[1, 2]]))
    with pytest.raises(ValueError):
        icc_absolute_agreement([1, 2, 3])


def test_linear_weighted_kappa_hand_computed():
    # confusion [[2,1,0],[0,2,1],[0,0,1]] (counts, n = 7), marginals (3,3,1) and (2,3,2), E = r c / n:
    # sum w O = 0.5 + 0.5 = 1, sum w E = (0.5*9 + 6 + 0.5*6 + 0.5*6 + 2 + 0.5*3) / 7 = 20/7 -> 1 - 7/20
    a = [0, 0, 0, 1, 1, 1, 2]
    b = [0, 0, 1, 1, 1, 2, 2]
    assert weighted_kappa(a, b, 3) == pytest.approx(0.65)
    assert weighted_kappa(a, a, 3) == pytest.approx(1.0)


def test_weighted_kappa_textbook_unweighted_limit():
    # two categories: linear weights equal the unweighted kappa. Classic 2x2 example:
    # [[20, 5], [10, 15]], po = 0.7, pe = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 -> kappa 0.4
    a = [0] * 25 + [1] * 25
    b = [0] * 20 + [1] * 5 + [0] * 10 + [1] * 15
    assert weighted_kappa(a, b, 2) == pytest.approx(0.4)
    # quadratic weights on the 3-category example (counts): sum w O = 0.25 * 2 = 0.5,
    # sum w E = (0.25*9 + 6 + 0.25*6 + 0.25*6 + 2 + 0.25*3) / 7 = 2 -> 1 - 0.25
    assert weighted_kappa([0, 0, 0, 1, 1, 1, 2], [0, 0, 1, 1, 1, 2, 2], 3, "quadratic") == pytest.approx(0.75)


def test_precision_recall_f1():
    assert precision_recall_f1(6, 2, 4) == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 12 / 18})
    assert precision_recall_f1(0, 0, 0) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert precision_recall_f1(0, 3, 0)["f1"] == 0.0
    p = np.array([[1, 1, 0], [0, 0, 1]])
    t = np.array([[1, 0, 0], [0, 1, 1]])
    assert confusion_counts(p, t) == (2, 1, 1)


def test_categories_and_accuracy():
    assert [risk_category_index(s) for s in (0, 0.5, 10, 10.1, 100, 400, 400.5)] == [0, 1, 1, 2, 2, 3, 4]
    assert category_accuracy([0, 1, 2, 3], [0, 1, 3, 3]) == 0.75


def test_summarize_cohort():
    cases = [
        {"agatston_ref": 0.0, "agatston_raw": 5.0, "agatston_post": 0.0,
         "tp_raw": 0, "fp_raw": 4, "fn_raw": 0, "tp_post": 0, "fp_post": 0, "fn_post": 0},
        {"agatston_ref": 50.0, "agatston_raw": 60.0, "agatston_post": 50.0,
         "tp_raw": 8, "fp_raw": 4, "fn_raw": 2, "tp_post": 8, "fp_post": 0, "fn_post": 2},
        {"agatston_ref": 500.0, "agatston_raw": 420.0, "agatston_post": 410.0,
         "tp_raw": 30, "fp_raw": 0, "fn_raw": 10, "tp_post": 30, "fp_post": 0, "fn_post": 10},
    ]
    s = summarize_cohort(cases)
    assert s["n_cases"] == 3
    raw, post = s["raw"], s["post"]
    assert raw["pixel_precision"] == pytest.approx(38 / 46) and raw["pixel_recall"] == pytest.approx(38 / 50)
    assert raw["pixel_f1"] == pytest.approx(76 / (76 + 8 + 12))
    assert post["pixel_f1"] == pytest.approx(76 / (76 + 0 + 12))
    assert post["pixel_f1_mean_per_case"] == pytest.approx((1.0 + 16 / 18 + 60 / 70) / 3)
    # categories: ref (0, 11-100, >400); raw (1-10, 11-100, >400) -> 2/3; post all right
    assert raw["risk_category_accuracy"] == pytest.approx(2 / 3) and post["risk_category_accuracy"] == 1.0
    assert post["risk_category_kappa_linear"] == pytest.approx(1.0)
    assert post["agatston_icc"] == pytest.approx(icc_absolute_agreement([[0, 0], [50, 50], [500, 410]]))


def test_lesion_counts_and_detection():
    truth = np.zeros((1, 8, 8, 3), int)
    truth[0, 1:3, 1:3, 1] = 1  # lesion A
    truth[0, 5, 5, 0:2] = 1  # lesion B (two slices, 6-connected)
    truth[0, 0, 7, 2] = 1  # lesion C
    pred = np.zeros_like(truth)
    pred[0, 2, 2, 1] = 1  # hits A
    pred[0, 5, 5, 1] = 1  # hits B
    pred[0, 7, 0, 0] = 1  # false positive
    assert lesion_counts(pred, truth) == (2, 3, 2, 3)
    d = lesion_detection(2, 3, 2, 3)
    assert d == pytest.approx({"sensitivity": 2 / 3, "ppv": 2 / 3, "f1": 2 / 3})
    # diagonal neighbours: two 6-connected lesions but one 26-connected lesion
    diag = np.zeros((3, 3, 3), int)
    diag[0, 0, 0] = diag[1, 1, 1] = 1
    assert lesion_counts(diag, diag, connectivity=1) == (2, 2, 2, 2)
    assert lesion_counts(diag, diag, connectivity=3) == (1, 1, 1, 1)
    assert lesion_detection(0, 0, 0, 0) == {"sensitivity": 1.0, "ppv": 1.0, "f1": 1.0}
    assert lesion_detection(0, 2, 0, 1)["f1"] == 0.0
