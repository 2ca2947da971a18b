"""The measurement plumbing of `ctbundles bench` (ctbundles.benchmark) on tiny sizes: what is timed
and counted per case, the speed-up ratio and the scaling fit computed from the measured numbers, and
the structure of bench.json / bench.md. No assertion on how fast anything is."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctbundles import benchmark
from ctbundles.batch_inference import bundle_with_random_weights
from ctbundles.cli import main
from tests_support import BUNDLES_DIR

BUNDLE = "cac_chest_cardiac_ct_segmentation"
TINY = {
    "network_def#init_features": 8, "network_def#growth_rate": 4, "network_def#block_config": [1, 1, 1, 1],
    "in_plane_size": [32, 32], "slab_batch_size": 3, "refuse_findings": [],
}


def test_speedup_is_the_ratio_of_the_two_measured_times():
    assert benchmark.speedup({"e2e_s": 6.0, "network_s": 5.0}, {"e2e_s": 2.0, "network_s": 0.5}) == 3.0
    assert benchmark.speedup({"e2e_s": 6.0, "network_s": 5.0}, {"e2e_s": 2.0, "network_s": 0.5}, "network_s") == 10.0
    assert benchmark.speedup({"error": "x"}, {"e2e_s": 2.0}) is None
    assert benchmark.speedup({"e2e_s": 1.0}, {"e2e_s": 0.0}) is None


def test_scaling_fit():
    fit = benchmark.scaling_fit([(60, 7.0), (120, 13.0), (240, 25.0), (480, 49.0)])  # 1 + 0.1 x
    assert fit["intercept"] == pytest.approx(1.0) and fit["per_slice"] == pytest.approx(0.1) and fit["max_rel_deviation"] == pytest.approx(0.0, abs=1e-12)
    fit = benchmark.scaling_fit([(1, 2.0), (2, 2.0), (3, 5.0)])  # line 0 + 1.5 x: residuals 0.5, -1, 0.5
    assert fit["per_slice"] == pytest.approx(1.5) and fit["intercept"] == pytest.approx(0.0, abs=1e-12)
    assert fit["max_rel_deviation"] == pytest.approx(0.5)  # |2 - 3| / 2
    assert benchmark.scaling_fit([(1, 1.0)]) is None


def _report():
    res = {"e2e_s": 2.0, "cpu_s": 3.9, "read_preprocess_s": 0.5, "network_s": 1.25, "rest_s": 0.25, "peak_rss_mb": 900.0,
           "runs": [{"forward_calls": 15}]}
    naive = dict(res, e2e_s=5.0, network_s=4.25, runs=[{"forward_calls": 240}])
    return {
        "machine": {"processor": "x86_64", "cpu_count": 2, "platform": "Linux", "torch": "2.x", "cuda": None, "threads": 2},
        "started_utc": "2026-01-01T00:00:00Z", "repeats": 1, "total_s": 12.0,
        "bundles": {BUNDLE: {"case": "chest CT 512x512x240", "weights": "random", "results": {
            "cpu/default": res, "cpu/naive": naive, "cpu/speedup": {"e2e": 2.5, "network": 3.4}}}},
        "scaling": {"bundle": BUNDLE, "in_plane": [512, 512], "device": "cpu", "weights": "random",
                    "points": [dict(res, slices=60), dict(res, slices=120, e2e_s=4.0)],
                    "time_fit": {"intercept": 0.0, "per_slice": 1 / 30, "max_rel_deviation": 0.0}, "memory_fit": None},
    }


def test_markdown_tables():
    md = benchmark.to_markdown(_report())
    assert "| cac_chest_cardiac_ct_segmentation | chest CT 512x512x240 | cpu/default | 2.00 | 4 | 0.50 | 1.25 | 0.25 | 15 | 900 |" in md
    assert "| cac_chest_cardiac_ct_segmentation | chest CT 512x512x240 | cpu/naive | 5.00 |" in md
    assert "| cac_chest_cardiac_ct_segmentation | cpu | 2.50 | 3.40 |" in md
    assert "| 60 | 2.00 | 4 | 1.25 | 0.033 | 900 |" in md and "| 120 | 4.00 | 4 | 1.25 | 0.033 | 900 |" in md
    assert sum(line.startswith("|---") for line in md.splitlines()) == 3  # latency, speed-up and scaling tables
    assert "Config overrides" not in md
    report = _report()
    report["bundles"][BUNDLE]["overrides"] = {"slab_batch_size": 3, "refuse_findings": []}
    assert "Config overrides (`--set`, every configuration of the bundle): cac_chest_cardiac_ct_segmentation: " \
           "slab_batch_size=3, refuse_findings=[]." in benchmark.to_markdown(report)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    bundle = bundle_with_random_weights(BUNDLES_DIR / BUNDLE, root / "bundle", TINY)
    image = benchmark._write_case("chest", (32, 32, 8), root / "case")
    return bundle, image, root


@pytest.mark.parametrize("naive, calls", [(False, 3), (True, 8)])  # 8 slices: ceil(8 / 3) batches, or one slice per pass
def test_child_measurement_parts(tiny, naive, calls):
    bundle, image, root = tiny
    threads = torch.get_num_threads()
    try:
        res = benchmark._child({"bundle": str(bundle), "image": image, "threads": 1, "repeats": 2, "naive": naive, "work": str(root / f"w{naive}"),
                                "overrides": {**TINY, **(benchmark.NAIVE_OVERRIDES[BUNDLE] if naive else {})}})
    finally:
        torch.set_num_threads(threads)
    assert len(res["runs"]) == 2 and all(r["forward_calls"] == calls for r in res["runs"])
    for r in res["runs"]:
        assert r["read_preprocess_s"] + r["network_s"] + r["rest_s"] == pytest.approx(r["e2e_s"])
        assert 0 < r["network_s"] < r["e2e_s"] and r["read_preprocess_s"] > 0 and r["cpu_s"] > 0
    assert res["e2e_s"] in sorted(r["e2e_s"] for r in res["runs"])  # a measured value, not an average
    assert res["networks"] == ["DenseRAUnet"] and res["peak_rss_mb"] > 50
    stem = Path(image).name.replace(".nii.gz", "")
    # the last repeat's report and segmentation were written (the report handler numbers a repeated case: _2)
    assert res["outputs"] == sorted([f"{stem}_2.json", f"{stem}_seg.nii.gz", "scores.csv"])


@pytest.mark.slow  # five fresh processes on a shared 2-core CPU
def test_bench_command_writes_json_and_markdown(tmp_path):
    sets = [f"--set={BUNDLE}:{k}={json.dumps(v)}" for k, v in TINY.items()]
    status = main(["bench", "--out", str(tmp_path / "out"), "--bundles", BUNDLE, "--in-plane", "32", "--shape", f"{BUNDLE}=32,32,6",
                   "--slices", "12,3,6", "--threads", "1", "--device", "cpu", "--random-weights", *sets])
    assert status == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["bundles"][BUNDLE]["overrides"] == TINY
    results = report["bundles"][BUNDLE]["results"]
    assert set(results) == {"cpu/default", "cpu/naive", "cpu/speedup"}
    assert results["cpu/speedup"]["e2e"] == results["cpu/naive"]["e2e_s"] / results["cpu/default"]["e2e_s"]
    assert results["cpu/default"]["runs"][0]["forward_calls"] == 2 and results["cpu/naive"]["runs"][0]["forward_calls"] == 6
    points = report["scaling"]["points"]
    assert [p["slices"] for p in points] == [3, 6, 12]  # sorted, and the 6-slice standard case reused
    assert points[1]["reused"] and points[1]["e2e_s"] == results["cpu/default"]["e2e_s"]
    assert [p["runs"][0]["forward_calls"] for p in points] == [1, 2, 4]
    fit = report["scaling"]["time_fit"]
    assert fit == benchmark.scaling_fit([(p["slices"], p["e2e_s"]) for p in points])
    md = (tmp_path / "out" / "bench.md").read_text()
    assert md == benchmark.to_markdown(report) and "| 12 |" in md and "cpu/naive" in md
    assert math.isfinite(report["total_s"])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_peak_memory_of_a_child_excludes_its_parent():
    """A measurement child spawned from a large parent reports its own peak, not the parent's
    (``ru_maxrss`` would report at least the parent's 400 MB here)."""
    import numpy as np

    from ctbundles.benchmark import peak_rss_mb

    ballast = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    assert peak_rss_mb() >= 400
    code = "from ctbundles.benchmark import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1 < child < 200
    del ballast
