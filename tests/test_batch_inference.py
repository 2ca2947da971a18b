"""Batch inference (ctbundles.batch_inference, `ctbundles batch`): a failing case is recorded and the
others finish, a resumed run redoes only unfinished cases, network and weights are set up once, the
outputs equal those of `monai.bundle run` on the same case, and a 2-process torchrun split covers
every case exactly once. Tiny DenseRAUnet (config overrides) with random weights, 64 x 64 cases."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai.bundle import ConfigWorkflow

from ctbundles.batch_inference import (
    BundleRunner,
    bundle_with_random_weights,
    case_keys,
    list_cases,
    merge_parts,
    read_manifest,
    run_batch,
)
from ctbundles.datasets.nifti_folder import write_case
from ctbundles.errors import CTInputError
from ctbundles.synthetic.registry import generate

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cac_chest_cardiac_ct_segmentation"
TINY = {
    "network_def#init_features": 8, "network_def#growth_rate": 4, "network_def#block_config": [1, 1, 1, 1],
    "in_plane_size": [64, 64], "slab_batch_size": 6,
    "refuse_findings": [],  # the 64 x 64 crops of the small generator can hold no air
}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return bundle_with_random_weights(BUNDLE, tmp_path_factory.mktemp("bundle") / "cac", TINY)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three small synthetic chest CTs and one corrupt file among them (sorted between them)."""
    root = tmp_path_factory.mktemp("cohort")
    for seed in range(3):
        write_case(generate("chest", seed, small=True, shape=(64, 64, 8), n_plaques=3), root)
    folder = root / "imagesTr"
    (folder / "chest_1b.nii.gz").write_bytes(b"this is not a NIfTI file")
    return folder


def _counting(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def wrapper(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def test_random_weights_bundle_holds_the_configs_network(tiny_bundle):
    import torch

    state = torch.load(tiny_bundle / "models" / "model.pt", map_location="cpu")
    assert "conv0.weight" in state or any(k.endswith("weight") for k in state)
    runner = BundleRunner(tiny_bundle, tiny_bundle / "eval", TINY)
    net = runner.networks()[0]
    assert net.init_features == 8 and net.growth_rate == 4
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # the CheckpointLoader ran
    assert runner.checkpoints == [str(tiny_bundle / "models" / "model.pt")]


def test_failing_case_recorded_others_finish(tiny_bundle, cohort, tmp_path, monkeypatch):
    from monai.handlers import CheckpointLoader

    from ctbundles.networks.dense_ra_unet import DenseRAUnet

    loads = _counting(monkeypatch, CheckpointLoader, "__call__")
    builds = _counting(monkeypatch, DenseRAUnet, "__init__")
    lines = []
    result = run_batch(tiny_bundle, cohort, tmp_path / "out", overrides=TINY, progress=lines.append)
    assert result.done == ["chest_0", "chest_1", "chest_2"]  # chest_2 runs after the failure
    assert result.failed == ["chest_1b"] and result.total == 4
    assert len(loads) == 1 and len(builds) == 1  # weights loaded and network built once for 4 cases
    with open(tmp_path / "out" / "failures.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["file"] == str(cohort / "chest_1b.nii.gz")
    assert row["error_type"] == "CTInputError" and "chest_1b.nii.gz" in row["message"] and "NIfTI" in row["message"]
    with open(tmp_path / "out" / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == ["chest_0", "chest_1", "chest_2"]
    for r in rows:
        report = json.loads((tmp_path / "out" / "cases" / r["key"] / f"{r['key']}.json").read_text())
        assert float(r["agatston"]) == pytest.approx(report["agatston"])
        assert (tmp_path / "out" / "cases" / r["key"] / f"{r['key']}_seg.nii.gz").is_file()
        assert not list((tmp_path / "out" / "cases" / r["key"]).glob("*.csv"))  # the handler's running CSV is not kept per case
    progress = [l for l in lines if l.startswith("[rank 0]")]
    assert len(progress) == 4 and progress[-1].startswith("[rank 0] 4/4 chest_2 done") and "ETA" in progress[-1]
    assert "FAILED (CTInputError)" in progress[2]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {"finished": 3, "failed": 1, "total": 4, "missing": []}
    # an earlier manifest is not overwritten without --resume
    with pytest.raises(CTInputError, match="--resume"):
        run_batch(tiny_bundle, cohort, tmp_path / "out", overrides=TINY, progress=lines.append)


def test_outputs_equal_monai_bundle_run(tiny_bundle, cohort, tmp_path):
    image = cohort / "chest_2.nii.gz"
    run_batch(tiny_bundle, image.parent, tmp_path / "batch", overrides=TINY, progress=lambda _: None)
    wf = ConfigWorkflow(str(tiny_bundle / "configs" / "inference.json"), workflow_type="infer", bundle_root=str(tiny_bundle),
                        output_dir=str(tmp_path / "plain"), datalist=[str(image)], **TINY)
    wf.initialize()
    wf.run()
    wf.finalize()
    a = np.asarray(nib.load(tmp_path / "batch" / "cases" / "chest_2" / "chest_2_seg.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "plain" / "chest_2_seg.nii.gz").dataobj)
    assert a.shape == (64, 64, 8) and np.array_equal(a, b)
    ra = json.loads((tmp_path / "batch" / "cases" / "chest_2" / "chest_2.json").read_text())
    rb = json.loads((tmp_path / "plain" / "chest_2.json").read_text())
    assert ra["agatston"] == rb["agatston"] and ra["volume_mm3"] == rb["volume_mm3"]


class Crash(BaseException):
    """Stands for a kill: not an Exception, so the per-case handler does not catch it."""


def test_resume_redoes_only_unfinished(tiny_bundle, cohort, tmp_path, monkeypatch):
    import ctbundles.batch_inference as bi

    out = tmp_path / "out"

    def kill_after_two(key, status):
        if key == "chest_1":
            raise Crash()

    with pytest.raises(Crash):
        run_batch(tiny_bundle, cohort, out, overrides=TINY, progress=lambda _: None, after_case=kill_after_two)
    assert sorted(read_manifest(out)) == ["chest_0", "chest_1"]

    # second run: crash in the middle of chest_2, after its outputs were staged
    original = BundleRunner.run_case

    def crash_mid_case(self, path):
        original(self, path)
        if path.endswith("chest_2.nii.gz"):
            raise Crash()

    monkeypatch.setattr(BundleRunner, "run_case", crash_mid_case)
    seen = []
    with pytest.raises(Crash):
        run_batch(tiny_bundle, cohort, out, resume=True, overrides=TINY, progress=lambda _: None, after_case=lambda k, s: seen.append(k))
    assert seen == ["chest_1b"]  # chest_0 and chest_1 were not redone; chest_2 crashed
    assert list((out / ".staging" / "rank0").glob("chest_2*"))  # its partial outputs were left staged
    assert "chest_2" not in read_manifest(out)

    # third run: crash after chest_2's folder was moved into place but before the manifest line
    monkeypatch.setattr(BundleRunner, "run_case", original)
    real_append = bi._append_line

    def crash_before_manifest(path, record):
        if path.name == "rank0.jsonl" and record["key"] == "chest_2":
            raise Crash()
        real_append(path, record)

    monkeypatch.setattr(bi, "_append_line", crash_before_manifest)
    with pytest.raises(Crash):
        run_batch(tiny_bundle, cohort, out, resume=True, overrides=TINY, progress=lambda _: None)
    assert (out / "cases" / "chest_2").is_dir() and "chest_2" not in read_manifest(out)

    # fourth run: only chest_2 (unrecorded) and the failing chest_1b are run again
    monkeypatch.setattr(bi, "_append_line", real_append)
    seen.clear()
    result = run_batch(tiny_bundle, cohort, out, resume=True, overrides=TINY, progress=lambda _: None, after_case=lambda k, s: seen.append(k))
    assert seen == ["chest_1b", "chest_2"] and result.skipped == ["chest_0", "chest_1"]
    assert sorted(read_manifest(out)) == ["chest_0", "chest_1", "chest_2"]
    assert not (out / ".staging" / "rank0").exists()
    with open(out / "cohort.csv", newline="") as f:
        assert [r["key"] for r in csv.DictReader(f)] == ["chest_0", "chest_1", "chest_2"]
    with open(out / "failures.csv", newline="") as f:
        assert [r["key"] for r in csv.DictReader(f)] == ["chest_1b"]


def test_manifest_ignores_torn_line_and_missing_folder(tmp_path):
    (tmp_path / "manifest").mkdir()
    (tmp_path / "cases" / "a").mkdir(parents=True)
    (tmp_path / "manifest" / "rank0.jsonl").write_text(
        json.dumps({"key": "a", "input": "a.nii.gz", "rank": 0, "seconds": 1.0, "rows": [{"case": "a", "agatston": 3}]}) + "\n"
        + json.dumps({"key": "b", "input": "b.nii.gz", "rank": 0, "seconds": 1.0, "rows": []}) + "\n"  # folder b missing
        + '{"key": "c", "inp'  # torn by a crash
    )
    assert list(read_manifest(tmp_path)) == ["a"]
    cohort, failures = merge_parts(tmp_path, expected=["a", "b", "c"])
    with open(cohort, newline="") as f:
        assert list(csv.DictReader(f)) == [{"key": "a", "input": "a.nii.gz", "rank": "0", "seconds": "1.0", "case": "a", "agatston": "3"}]
    assert json.loads((tmp_path / "summary.json").read_text())["missing"] == ["b", "c"]
    (tmp_path / "cohort.csv").unlink()
    from ctbundles.cli import main

    assert main(["batch", str(BUNDLE), "--out", str(tmp_path), "--merge"]) == 0  # the --merge step alone
    assert (tmp_path / "cohort.csv").read_text().splitlines()[1] == "a,a.nii.gz,0,1.0,a,3"


def test_case_keys_and_datalist_input(tmp_path):
    assert case_keys(["/x/p1/dicom", "/x/p2/dicom", "/y/c.nii.gz"])[2] == "c"
    k1, k2 = case_keys(["/x/p1/dicom", "/x/p2/dicom"])
    assert k1 != k2 and k1.startswith("dicom-") and k2.startswith("dicom-")
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"testing": [{"image": "a.nii.gz"}, {"image": "/abs/b.nii.gz"}]}))
    assert list_cases(datalist) == [str(tmp_path / "a.nii.gz"), "/abs/b.nii.gz"]
    with pytest.raises(CTInputError, match="neither a folder nor a datalist"):
        list_cases(tmp_path / "missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_cover_every_case_once(tiny_bundle, cohort, tmp_path):
    out = tmp_path / "out"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ctbundles.cli", "batch", str(tiny_bundle), "--input", str(cohort),
           "--out", str(out), "--threads", "1", *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a rank saw the corrupt file
    parts = {r: [json.loads(l)["key"] for l in (out / "manifest" / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    keys = ["chest_0", "chest_1", "chest_1b", "chest_2"]  # sorted input order; rank r takes r, r + 2
    assert parts[0] == ["chest_0"] and parts[1] == ["chest_1", "chest_2"]  # chest_1b (case 2, rank 0) failed
    failed = [json.loads(l)["key"] for l in (out / "manifest" / "failures.rank0.jsonl").read_text().splitlines()]
    assert failed == ["chest_1b"] and not (out / "manifest" / "failures.rank1.jsonl").exists()
    assert sorted(parts[0] + parts[1] + failed) == keys  # every case exactly once
    with open(out / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["key"], r["rank"]) for r in rows) == [("chest_0", "0"), ("chest_1", "1"), ("chest_2", "1")]
    with open(out / "failures.csv", newline="") as f:
        assert [(r["key"], r["rank"]) for r in csv.DictReader(f)] == [("chest_1b", "0")]


def test_random_weight_copy_fills_the_stage_weights_the_config_loads(tmp_path):
    """The cascade loads stage 1 from ``roi_weights`` where its config builds the network, not through
    a handler: the random-weight copy (used by bench) must write that file too."""
    from ctbundles.bundle_runner import missing_weights
    from tests_support import BUNDLES_DIR

    copy = bundle_with_random_weights(BUNDLES_DIR / "cac_orcascore_cascade_ct_segmentation", tmp_path / "cascade")
    assert sorted(p.name for p in (copy / "models").glob("*.pt")) == ["model.pt", "model_fp.pt", "model_roi.pt"]  # stage 3 on as shipped
    assert missing_weights(copy) == []


def test_a_folder_without_scans_is_refused_naming_it(tiny_bundle, cohort, tmp_path):
    """The bundle's own datalist (ctbundles.datasets.scan_folder) refuses a folder with no scan; the runner
    passes that error on unwrapped, so `ctbundles batch` names the folder instead of running nothing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no scans here")
    runner = BundleRunner(tiny_bundle, tmp_path / "eval", TINY)
    with pytest.raises(CTInputError, match=r"empty: no scans to read in dataset_dir"):
        runner.datalist(empty)
    assert [Path(p).name for p in runner.datalist(cohort)] == sorted(p.name for p in cohort.iterdir())


def test_out_inside_the_input_folder_is_refused(tiny_bundle, cohort, tmp_path):
    """Review of session 16: --out inside --input made the batch list its own cases/ and manifest/ as scans."""
    before = sorted(p.name for p in cohort.iterdir())
    for out in (cohort, cohort / "batch"):
        with pytest.raises(CTInputError, match="is the input folder"):
            run_batch(tiny_bundle, cohort, out, overrides=TINY, progress=lambda _: None)
    assert sorted(p.name for p in cohort.iterdir()) == before
    json_list = tmp_path / "cases.json"
    json_list.write_text(json.dumps({"test": [{"image": str(p)} for p in sorted(cohort.iterdir())]}))
    assert list_cases(json_list) == [str(p) for p in sorted(cohort.iterdir())]  # the folder layouts' "test" key
    json_list.write_text(json.dumps({"testing": []}))
    with pytest.raises(CTInputError, match="no cases under"):
        list_cases(json_list)
