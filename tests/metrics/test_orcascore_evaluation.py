"""orCaScore evaluation protocol and pixel-level metrics: hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbundles.metrics.orcascore_evaluation import (
    evaluate_cohort,
    icc_absolute_agreement,
    lesion_detection,
    orcascore_lesions,
    pixel_scores,
    pool_evaluations,
    risk_category_index,
    stage3_audit_summary,
    stage3_comparison,
    stage3_lesion_audit,
    weighted_kappa,
)


def toy_case():
    hu = np.zeros((10, 10, 3), np.float32)
    ref = np.zeros((10, 10, 3), np.uint8)
    pred = np.zeros_like(ref)
    hu[1:3, 1:3, 0] = 200; ref[1:3, 1:3, 0] = 1; pred[1:3, 1:3, 0] = 1  # A: LAD found (4 voxels)
    hu[6, 6, 0:2] = 300; ref[6, 6, 0:2] = 3; pred[6, 6, 0:2] = 2  # B: RCA called LCX (2 voxels)
    hu[8, 1, 2] = 400; pred[8, 1, 2] = 1  # C: LAD false positive (1 voxel)
    hu[5, 5, 1] = 100; ref[5, 5, 1] = 1  # below 130 HU: no lesion
    hu[0, 9, 0] = hu[1, 8, 0] = 200; ref[0, 9, 0] = ref[1, 8, 0] = 2  # D1, D2: diagonal -> two 6-connected lesions, missed
    return hu, ref, pred


def test_lesions_are_6_connected_above_130_with_majority_labels():
    hu, ref, pred = toy_case()
    les = orcascore_lesions(hu, ref, pred, spacing=(1.0, 1.0, 2.0))
    rows = sorted(zip(les["reference_label"].tolist(), les["predicted_label"].tolist(), les["volume_mm3"].tolist()))
    assert rows == [(0, 1, 2.0), (1, 1, 8.0), (2, 0, 2.0), (2, 0, 2.0), (3, 2, 4.0)]


def test_majority_label_of_mixed_lesion():
    """The vote runs over every voxel of the lesion, unlabelled ones included; ties go to the smaller label."""
    hu = np.full((5, 1, 1), 300.0)
    ref = np.array([1, 1, 1, 2, 0], np.uint8).reshape(5, 1, 1)
    pred = np.array([0, 0, 3, 3, 3], np.uint8).reshape(5, 1, 1)
    les = orcascore_lesions(hu, ref, pred)
    assert les["reference_label"].tolist() == [1] and les["predicted_label"].tolist() == [3]  # 3 of 5 voxels
    pred[2] = 0  # now 0: 3 voxels, 3: 2 voxels
    assert orcascore_lesions(hu, ref, pred)["predicted_label"].tolist() == [0]
    pred[4] = 1  # 0: 3, 1: 1, 3: 1 -> 0; over the labelled voxels only, 1 and 3 tie -> 1
    assert orcascore_lesions(hu, ref, pred)["predicted_label"].tolist() == [0]
    assert orcascore_lesions(hu, ref, pred, count_unlabelled=False)["predicted_label"].tolist() == [1]
    ref[:], pred[:] = 0, 1
    ref[0:2] = 2  # one lesion of 5 voxels (the prediction joins them), 2 of them labelled LCX: no reference lesion
    les = orcascore_lesions(hu, ref, pred)
    assert les["reference_label"].tolist() == [0] and les["predicted_label"].tolist() == [1]


def test_a_touch_is_not_a_detection():
    """A prediction covering 1 of 100 voxels of a reference lesion misses it (orCaScore majority vote); 51 of
    100 detect it. ``lesions_any_overlap`` keeps the looser count where any labelled voxel decides."""
    hu = np.full((10, 10, 1), 300.0)
    ref = np.ones((10, 10, 1), np.uint8)
    cases = []
    for covered in (1, 50, 51):
        pred = np.zeros_like(ref)
        pred.reshape(-1)[:covered] = 1
        cases.append({"hu": hu, "reference": ref, "prediction": pred, "agatston_reference": 1.0, "agatston_predicted": 1.0,
                      "volume_reference": 1.0, "volume_predicted": 1.0})
    strict = [evaluate_cohort([c])["lesions"]["all"] for c in cases]
    loose = [evaluate_cohort([c])["lesions_any_overlap"]["all"] for c in cases]
    assert [(d["tp"], d["fp"], d["fn"]) for d in strict] == [(0, 0, 1), (0, 0, 1), (1, 0, 0)]
    assert [(d["tp"], d["fp"], d["fn"]) for d in loose] == [(1, 0, 0), (1, 0, 0), (1, 0, 0)]


def test_lesion_detection_per_artery():
    hu, ref, pred = toy_case()
    det = lesion_detection([orcascore_lesions(hu, ref, pred, spacing=(1.0, 1.0, 2.0))])
    lad, lcx, rca, total = det["LAD"], det["LCX"], det["RCA"], det["all"]
    assert (lad["tp"], lad["fp"], lad["fn"]) == (1, 1, 0)
    assert lad["sensitivity"] == 1.0 and lad["ppv"] == 0.5 and lad["ppv_volume"] == pytest.approx(0.8)
    assert lad["f1_volume"] == pytest.approx(16 / 18)
    assert (lcx["tp"], lcx["fp"], lcx["fn"], lcx["fn_mm3"]) == (0, 1, 2, 4.0)
    assert lcx["sensitivity"] == 0.0 and lcx["f1_volume"] == 0.0
    assert (rca["tp"], rca["fp"], rca["fn"]) == (0, 0, 1) and math.isnan(rca["ppv"])
    assert (total["tp"], total["fp"], total["fn"]) == (2, 1, 2)
    assert total["sensitivity"] == 0.5 and total["ppv"] == pytest.approx(2 / 3)
    assert total["f1"] == pytest.approx(4 / 7) and lad["f1"] == pytest.approx(2 / 3) and rca["f1"] == 0.0
    assert total["f1_volume"] == pytest.approx(24 / 30)


@pytest.mark.parametrize("x,y,expected", [
    ([1, 2, 3], [1, 2, 3], 1.0),
    ([1, 2, 3], [2, 3, 4], 2 / 3),  # constant offset: MSR 2, MSC 1.5, MSE 0 -> 2 / (2 + 2 * 1.5 / 3)
])
def test_icc_absolute_agreement(x, y, expected):
    assert icc_absolute_agreement(x, y) == pytest.approx(expected)


def test_icc_without_variance_is_undefined_and_never_above_one():
    """Equal ratings everywhere: NaN, also when rounding leaves a tiny sum of squares (0.1 is not exact in binary,
    and seven of them gave 1.0000000000000002 before the tolerance)."""
    assert math.isnan(icc_absolute_agreement([0.1] * 7, [0.1] * 7))
    assert math.isnan(icc_absolute_agreement([0.0] * 5, [0.0] * 5))
    for x in ([0.1, 0.2, 0.3] * 5, [0.7, 0.1, 1e-3, 3.3, 0.2]):
        assert icc_absolute_agreement(x, x) == pytest.approx(1.0) and icc_absolute_agreement(x, x) <= 1.0


@pytest.mark.parametrize("a,b,k,expected", [
    ([0, 1, 2], [0, 1, 2], 3, 1.0),
    ([0, 0, 1, 1], [0, 1, 0, 1], 2, 0.0),
    ([0, 1, 2, 2], [0, 2, 2, 1], 3, 3 / 7),  # observed 0.25, chance 0.4375 weighted disagreement
])
def test_linearly_weighted_kappa(a, b, k, expected):
    assert weighted_kappa(a, b, k) == pytest.approx(expected)


@pytest.mark.parametrize("score,index", [(0, 0), (0.5, 1), (10, 1), (10.1, 2), (100, 2), (400, 3), (400.1, 4)])
def test_risk_category_index(score, index):
    assert risk_category_index(score) == index


def test_pixel_scores_pooled_and_stage3_table():
    ref = [np.array([1, 1, 0, 0]), np.array([0, 2, 0, 0])]
    without = [np.array([1, 1, 1, 1]), np.array([0, 3, 1, 0])]  # tp 3, fp 3
    with_fp = [np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0])]  # tp 2, fn 1
    t = stage3_comparison(ref, without, with_fp)
    assert t["without_stage3"]["precision"] == 0.5 and t["without_stage3"]["recall"] == 1.0
    assert t["without_stage3"]["f1"] == pytest.approx(6 / 9)
    assert t["with_stage3"]["precision"] == 1.0 and t["with_stage3"]["recall"] == pytest.approx(2 / 3)
    assert t["with_stage3"]["f1"] == pytest.approx(0.8)
    assert math.isnan(pixel_scores([np.zeros(3)], [np.zeros(3)])["precision"])


def test_evaluate_cohort_combines_protocol():
    hu, ref, pred = toy_case()
    cases = [
        {"hu": hu, "reference": ref, "prediction": pred, "spacing": (1, 1, 2), "agatston_reference": 50.0,
         "agatston_predicted": 60.0, "volume_reference": 10.0, "volume_predicted": 12.0},
        {"hu": hu, "reference": ref, "prediction": ref, "spacing": (1, 1, 2), "agatston_reference": 500.0,
         "agatston_predicted": 300.0, "volume_reference": 100.0, "volume_predicted": 100.0},
    ]
    res = evaluate_cohort(cases)
    assert res["lesions"]["all"]["tp"] == 2 + 4
    assert res["risk_accuracy"] == 0.5  # 11-100 agrees, >400 vs 101-400 does not
    assert -1.0 <= res["agatston_icc"] <= 1.0 and res["volume_icc"] > 0.9


def test_evaluate_predictions_reads_inference_outputs(tmp_path):
    import nibabel as nib

    from ctbundles.datasets.orcascore import write_mhd
    from ctbundles.metrics.orcascore_evaluation import evaluate_predictions

    hu, ref, pred = toy_case()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = write_mhd(tmp_path / "TRV1P1CTI.mhd", hu, affine, np.int16)
    label = write_mhd(tmp_path / "TRV1P1R.mhd", ref, affine, np.uint8)
    nib.save(nib.Nifti1Image(pred, affine), tmp_path / "TRV1P1CTI_seg.nii.gz")
    res = evaluate_predictions([{"image": str(image), "label": str(label)}], tmp_path)
    assert (res["lesions"]["all"]["tp"], res["lesions"]["all"]["fp"], res["lesions"]["all"]["fn"]) == (2, 1, 2)
    assert res["lesions"]["LAD"]["tp_mm3"] == 8.0
    assert res["pixels"]["tp"] == 4 + 2 and res["pixels"]["fp"] == 1
    assert res["cases"][0]["volume_predicted"] > 0
    with pytest.raises(Exception, match="no prediction"):
        evaluate_predictions([{"image": str(image), "label": str(label)}], tmp_path / "none")


def test_pool_evaluations_of_disjoint_cohorts_equals_the_evaluation_of_their_union():
    """Two cohorts evaluated apart and pooled give what one evaluation of all cases gives (counts, ratios, ICC,
    kappa and accuracy over the union), e.g. the cascade's 12 + 36 held-out cases."""
    hu, ref, pred = toy_case()
    rng = np.random.default_rng(0)
    cases = []
    for i in range(6):
        p = pred if i % 2 else ref
        cases.append({"hu": hu, "reference": ref, "prediction": p, "spacing": (1, 1, 2),
                      "agatston_reference": float(rng.uniform(0, 600)), "agatston_predicted": float(rng.uniform(0, 600)),
                      "volume_reference": float(rng.uniform(0, 200)), "volume_predicted": float(rng.uniform(0, 200))})
    keys = ("agatston_reference", "agatston_predicted", "volume_reference", "volume_predicted")

    def evaluated(part):
        return {**evaluate_cohort(part), "cases": [{k: c[k] for k in keys} for c in part]}

    whole = evaluate_cohort(cases)
    pooled = pool_evaluations([evaluated(cases[:2]), evaluated(cases[2:])])
    for key in ("lesions", "lesions_any_overlap"):
        for artery in ("LAD", "LCX", "RCA", "all"):
            for k, v in whole[key][artery].items():
                if isinstance(v, float) and math.isnan(v):
                    assert math.isnan(pooled[key][artery][k])
                else:
                    assert pooled[key][artery][k] == pytest.approx(v), (key, artery, k)
    assert pooled["pixels"] == pytest.approx(whole["pixels"])
    for k in ("agatston_icc", "volume_icc", "risk_kappa_linear", "risk_accuracy"):
        assert pooled[k] == pytest.approx(whole[k]), k
    assert len(pooled["cases"]) == 6 and whole["lesions"]["all"]["fp"] > 0
    with pytest.raises(ValueError, match="no results"):
        pool_evaluations([])


def stage3_case():
    """One lesion of each kind: kept / removed true lesion, kept / removed false lesion, missed lesion."""
    hu = np.zeros((12, 12, 2), np.float32)
    ref, before = np.zeros((12, 12, 2), np.uint8), np.zeros((12, 12, 2), np.uint8)
    hu[1:3, 1:3, 0] = 200; ref[1:3, 1:3, 0] = 1; before[1:3, 1:3, 0] = 1  # A: LAD, kept (4 voxels)
    hu[6, 6, 0:2] = [300, 250]; ref[6, 6, 0:2] = 3; before[6, 6, 0:2] = 3  # B: RCA, removed (2 voxels)
    hu[10, 1, 1] = 400; before[10, 1, 1] = 1  # C: false LAD, removed (1 voxel)
    hu[1, 9:12, 1] = 800; before[1, 9:12, 1] = 3  # D: false RCA, kept (3 voxels)
    hu[9, 9, 0] = 250; ref[9, 9, 0] = 2  # E: LCX, missed by stages 1-2
    hu[4, 4, 0] = 120; before[4, 4, 0] = 1  # below 130 HU: no lesion
    after = before.copy()
    after[6, 6, :] = 0; after[10, 1, 1] = 0
    return hu, ref, before, after


def test_stage3_lesion_audit_labels_each_lesion_before_and_after():
    hu, ref, before, after = stage3_case()
    audit = stage3_lesion_audit(hu, ref, before, after, spacing=(0.5, 0.5, 2.0))
    rows = sorted(zip(audit["reference_label"].tolist(), audit["before_label"].tolist(), audit["after_label"].tolist(),
                      audit["volume_mm3"].tolist(), audit["peak_hu"].tolist()))
    assert rows == [(0, 1, 0, 0.5, 400.0), (0, 3, 3, 1.5, 800.0), (1, 1, 1, 2.0, 200.0), (2, 0, 0, 0.5, 250.0),
                    (3, 3, 0, 1.0, 300.0)]


def test_stage3_audit_summary_pools_cases_into_groups():
    hu, ref, before, after = stage3_case()
    one = stage3_lesion_audit(hu, ref, before, after)
    hu2 = np.zeros((4, 4, 1), np.float32)
    hu2[0, 0, 0] = hu2[3, 3, 0] = 500
    lab = np.zeros((4, 4, 1), np.uint8)
    lab[0, 0, 0] = lab[3, 3, 0] = 3
    two = stage3_lesion_audit(hu2, lab, lab, np.zeros_like(lab))  # two single-voxel RCA lesions, both removed
    summary = stage3_audit_summary([one, two])
    assert {k: summary[k]["n"] for k in ("true_kept", "true_removed", "false_kept", "false_removed", "missed")} == {
        "true_kept": 1, "true_removed": 3, "false_kept": 1, "false_removed": 1, "missed": 1}
    assert summary["true_removed"]["median_volume_mm3"] == 1.0 and summary["true_removed"]["median_peak_hu"] == 500.0
    assert summary["false_kept"]["median_peak_hu"] == 800.0 and summary["missed"]["median_volume_mm3"] == 1.0
    assert summary["true_removed_by_artery"] == {"LAD": 0, "LCX": 0, "RCA": 3}


def test_stage3_audit_of_empty_cases_and_shape_mismatch():
    empty = np.zeros((3, 3, 1))
    summary = stage3_audit_summary([stage3_lesion_audit(empty, empty, empty, empty)])
    assert summary["true_removed"]["n"] == 0 and math.isnan(summary["true_removed"]["median_peak_hu"])
    with pytest.raises(ValueError, match="same shape"):
        stage3_lesion_audit(empty, empty, empty, np.zeros((3, 3, 2)))
