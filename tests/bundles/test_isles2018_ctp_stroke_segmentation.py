"""Bundle isles2018_ctp_stroke_segmentation: configs, the shipped weights (strict load, export, a learning
regression on a fresh synthetic slab), a tiny training and inference run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests_support.ctp_cases import write_isles_case, write_stacked, write_synthetic_stacked

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "isles2018_ctp_stroke_segmentation"
CONFIGS = BUNDLE / "configs"
SHIPPED = BUNDLE / "models" / "model.pt"
WIDTH_KEYS = ("init_features", "growth_rate", "block_config", "bn_size", "up_channels", "head_channels")
# the shipped reduced network and the paper's (DenseNet-121 widths and depth), docs/README.md deviation 1
SHIPPED_WIDTH = (16, 8, [3, 3, 3, 3], 2, [32, 32, 16, 16], 16)
PAPER_WIDTH = (64, 32, [6, 12, 24, 16], 4, [256, 128, 64, 32], 32)
TINY_NET = {
    "network_def#init_features": 8,
    "network_def#growth_rate": 4,
    "network_def#block_config": [2, 2, 2, 2],
    "network_def#bn_size": 2,
    "network_def#up_channels": [8, 8, 8, 8],
    "network_def#head_channels": 8,
}


def _parser(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.read_config([str(CONFIGS / n) for n in names])
    for k, v in overrides.items():
        parser[k] = v
    return parser


@pytest.mark.parametrize("names", [("inference.json",), ("train.json",), ("train.json", "evaluate.json")])
def test_configs_parse_and_network_def(names):
    parser = _parser(*names)
    net = parser.get_parsed_content("network_def", instantiate=True)
    assert type(net).__name__ == "MSDCNN"
    assert net.path1.stem[0].in_channels == 3 and net.path2.stem[0].in_channels == 1
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4
    assert image["channel_def"] == {"0": "CBF", "1": "CBV", "2": "MTT", "3": "Tmax"}


def test_train_config_paper_values():
    parser = _parser("train.json")
    assert parser["epochs"] == 70 and parser["batch_size"] == 4 and parser["learning_rate"] == 0.001
    assert parser["roi_size"] == [160, 160]
    ids = ["bundle_root", "device", "dataset_dir", "output_dir", "train#trainer", "train#trainer#max_epochs",
           "train#dataset#data", "train#handlers", "validate#evaluator", "validate#dataset#data", "validate#handlers",
           "val_interval"]
    for i in ids:
        assert i in parser, i
    loss = parser.get_parsed_content("loss")
    assert type(loss).__name__ == "PseudoDiceLoss"


def test_inference_ids_for_monai_label():
    parser = _parser("inference.json")
    for i in ("bundle_root", "device", "network_def", "network", "preprocessing", "inferer", "postprocessing",
              "output_dir", "dataset_dir", "datalist", "dataset", "evaluator", "handlers", "initialize", "run",
              "displayable_configs"):
        assert i in parser, i
    names = [t["_target_"] for t in parser["preprocessing#transforms"]]
    assert "Spacingd" not in names and names[0].endswith("LoadCTPMapsd")


def test_width_values_top_level_and_identical_in_inference_and_train():
    """The training output loads in inference: both configs build the network from the same top-level values."""
    inf, train = _parser("inference.json"), _parser("train.json")
    assert tuple(inf[k] for k in WIDTH_KEYS) == SHIPPED_WIDTH
    assert tuple(train[k] for k in WIDTH_KEYS) == SHIPPED_WIDTH
    for k in WIDTH_KEYS:
        assert inf[f"network_def#{k}"] == train[f"network_def#{k}"] == f"@{k}"
    assert inf["roi_size"] == train["roi_size"] == [160, 160]


@pytest.mark.parametrize("base", ["inference.json", "train.json"])
def test_paper_network_overlay_builds_the_paper_size_network(base):
    parser = _parser(base, "paper_network.json")
    assert tuple(parser[k] for k in WIDTH_KEYS) == PAPER_WIDTH
    net = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in net.parameters()) == 32_825_825
    assert [len(b) for b in net.path1.dense_blocks] == [6, 12, 24, 16]
    convs = [m for m in [*net.path1.modules(), *net.head.modules()] if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 123  # the depth the paper states: 1 + 58 x 2 + 4 along one path, 2 in the head


def test_shipped_model_strict_load_and_size():
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 25_000_000
    net = _parser("inference.json").get_parsed_content("network_def")
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert set(state) == set(net.state_dict())
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == 239_985


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_shipped_model_segments_a_fresh_synthetic_slab(tmp_path):
    """Learning regression: inference.json as shipped (160 x 160, models/model.pt, median filter, threshold) on a
    slab of a patient seed the training cohort (seeds 100-119) and the held-out cohort (1000-1009) never used."""
    from monai.bundle import ConfigWorkflow

    src, label = write_synthetic_stacked(tmp_path, seed=4242)
    assert label.sum() > 500
    wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"),
                        logging_file=None, workflow_type="infer", bundle_root=str(BUNDLE),
                        dataset_dir=str(Path(src).parent), output_dir=str(tmp_path / "out"),
                        device="$torch.device('cpu')")
    wf.initialize()
    wf.run()
    wf.finalize()
    seg = np.asarray(nib.load(str(tmp_path / "out" / "slab_4242_seg.nii.gz")).dataobj)
    assert seg.shape == label.shape == nib.load(src).shape[:3]
    assert _dice(seg, label) >= 0.7


def test_verify_net_in_out_shipped_network():
    """The zoo check, in process (monai.bundle.verify_net_in_out): 160 x 160 input, output as the metadata says."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), n=10, device="cpu")


def _check_export(ts: Path) -> None:
    net = _parser("inference.json").get_parsed_content("network_def")
    net.load_state_dict(torch.load(SHIPPED, map_location="cpu", weights_only=True))
    net.eval()
    x = torch.rand(2, 4, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(ts))(x).numpy(), net(x).numpy(), atol=1e-5)


def test_ckpt_export_shipped_weights(tmp_path):
    """The zoo export, in process (monai.bundle.ckpt_export): TorchScript of the shipped weights, same outputs."""
    from monai.bundle import ckpt_export

    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(SHIPPED), meta_file=str(CONFIGS / "metadata.json"),
                config_file=str(CONFIGS / "inference.json"))
    _check_export(ts)


@pytest.mark.slow  # about 30 s on the shared 2-core CPU, most of it importing monai in the subprocess
def test_verify_net_in_out_shipped_network_command():
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
           str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"), "--n", "10"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow  # about 30 s on the shared 2-core CPU, most of it importing monai in the subprocess
def test_ckpt_export_shipped_weights_command(tmp_path):
    ts = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
           str(SHIPPED), "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    _check_export(ts)


def test_multi_gpu_overlay_ids():
    parser = _parser("train.json", "multi_gpu_train.json")
    assert parser["network#_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser["train#dataloader#sampler"] == "@train#sampler" and parser["train#dataloader#shuffle"] is False
    assert parser["validate#dataloader#sampler"] == "@validate#sampler"
    assert parser["epochs"] == 70  # the overlay changes only the distribution


def test_torchscript_network_def():
    net = _parser("inference.json", **TINY_NET).get_parsed_content("network_def").eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 4, 32, 32)
    assert torch.allclose(scripted(x), net(x), atol=1e-6)


def _tiny_run_overrides(tmp_path: Path) -> dict:
    return {**TINY_NET, "bundle_root": str(tmp_path), "roi_size": [32, 32], "num_workers": 0, "sw_batch_size": 4,
            "device": "$torch.device('cpu')"}


def _items(root: Path, n: int = 4, shape=(40, 40, 3)) -> list[dict]:
    items = [write_isles_case(root, i, seed=i, shape=shape) for i in range(1, n + 1)]
    for i, it in enumerate(items):
        it["patient"], it["fold"] = f"p{i}", i % 2
    return items


def _save_tiny_model(bundle_root: Path) -> Path:
    torch.manual_seed(0)
    net = _parser("inference.json", **TINY_NET).get_parsed_content("network_def")
    path = bundle_root / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def _workflow(tmp_path: Path, files, workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / f) for f in files]
    return ConfigWorkflow(config_file=files, meta_file=str(CONFIGS / "metadata.json"), logging_file=None,
                          workflow_type=workflow_type, **_tiny_run_overrides(tmp_path), **overrides)


def test_train_one_epoch(tmp_path):
    wf = _workflow(tmp_path, ["train.json"], "train", epochs=1, val_interval=1, datalist=_items(tmp_path / "isles"),
                   n_folds=2, fold=0)
    wf.initialize()
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1 and trainer.state.iteration == 2  # 2 training cases, one batch of 4 slices each
    batch = trainer.state.batch  # decollated: 4 slices of 4 maps, roi 32 x 32
    assert len(batch) == 4 and batch[0]["image"].shape == (4, 32, 32) and batch[0]["label"].shape == (1, 32, 32)
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    assert 0.0 <= evaluator.state.metrics["val_mean_dice"] <= 1.0
    assert (tmp_path / "models" / "model.pt").is_file()
    wf.finalize()


def test_evaluate_overlay_isles_metrics_on_original_grid(tmp_path):
    _save_tiny_model(tmp_path)
    wf = _workflow(tmp_path, ["train.json", "evaluate.json"], "eval", datalist=_items(tmp_path / "isles", n=2, shape=(44, 40, 3)),
                   n_folds=2, fold=1, output_dir=str(tmp_path / "eval"))
    wf.initialize()
    wf.run()
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.output[0]["pred"].shape == (1, 44, 40, 3)  # back on the label's grid
    summary = json.loads((tmp_path / "eval" / "isles_summary.json").read_text())
    assert set(summary) >= {"isles2018", "isles2022", "hd_sentinel_mm"}
    assert summary["isles2018"]["n"] == 1
    rows = list(csv.DictReader(open(tmp_path / "eval" / "isles_metrics.csv")))
    assert [r["convention"] for r in rows] == ["isles2018", "isles2022"] and rows[0]["case"] == "case_2"
    assert float(rows[0]["volume_truth_ml"]) > 0
    wf.finalize()


def test_inference_stacked_input_like_monai_label(tmp_path):
    """One stacked 4-channel file per case under ``image``; prediction and volume report on the input grid."""
    _save_tiny_model(tmp_path)
    stacked_dir = tmp_path / "stacked"
    stacked_dir.mkdir()
    src, _ = write_stacked(stacked_dir / "case9.nii.gz", seed=9, shape=(44, 36, 3))
    (stacked_dir / "case9_label.nii.gz").unlink()
    inf = _workflow(tmp_path, ["inference.json"], "infer", dataset_dir=str(stacked_dir), output_dir=str(tmp_path / "out"))
    inf.initialize()
    inf.run()
    seg = tmp_path / "out" / "case9_seg.nii.gz"
    assert seg.is_file()
    img_in, img_out = nib.load(src), nib.load(str(seg))
    assert img_out.shape[:3] == (44, 36, 3)
    np.testing.assert_allclose(img_out.affine, img_in.affine, atol=1e-4)
    assert set(np.unique(np.asarray(img_out.dataobj))) <= {0, 1}
    report = json.loads((tmp_path / "out" / "case9.json").read_text())
    n = int(np.asarray(img_out.dataobj).sum())
    assert report["n_voxels"] == n
    assert report["volume_ml"] == pytest.approx(n * 0.9 * 0.9 * 5.0 / 1000)
    rows = list(csv.DictReader(open(tmp_path / "out" / "lesion_volumes.csv")))
    assert len(rows) == 1 and rows[0]["case"] == "case9"
    assert float(rows[0]["total_mm3"]) == pytest.approx(report["total_mm3"])
    inf.finalize()
