"""Stage 2 of `cac_orcascore_cascade_ct_segmentation` learns: a tiny overfit through the bundle's own pipeline.

A few calcium slices of one synthetic cardiac case go through the configs' deterministic transforms
(loading, 4-class label mapping, the > 130 HU lesion rule, histogram matching, intensity scaling,
label-based ROI crop), then the network, loss and optimizer of `train.json` + `train_cpu_small.json`
are trained on them and scored in evaluation mode with the configs' validation post-processing and
F1 metric. This catches image/label misalignment, a wrong class-channel convention between the
label, the loss and the metric, broken intensity scaling, and evaluation-mode networks whose batch-norm
statistics have not followed the training (the cause of the earlier 0.0002 validation F1).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import BUNDLES_DIR

BUNDLE = BUNDLES_DIR / "cac_orcascore_cascade_ct_segmentation"
CONFIGS = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "train_cpu_small.json")]


# Adam steps of the overfit test: enough to converge on every synthetic case seen (F1 0.87-0.97 at 120
# on the 52-voxel case; 60 steps gave 0.17 on it), far too few without the overlay's BN momentum.
STEPS = 120


@pytest.fixture(scope="module")
def case_root(tmp_path_factory):
    from ctbundles.datasets import orcascore
    from ctbundles.synthetic.registry import generate

    root = tmp_path_factory.mktemp("orcascore_overfit")
    orcascore.write_case(generate("cardiac", 3, small=True), root, vendor=1, patient=1)
    return root


def parsed(root) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(root), "num_workers": 0})
    return parser


def calcium_windows(parser, size: int = 32, n: int = 6):
    """``n`` ``size`` x ``size`` windows centred on calcium, from the configs' deterministic transforms."""
    item = parser.get_parsed_content("datalist")[0]
    d = Compose(parser.get_parsed_content("deterministic_transforms"))(dict(item))
    image, label = d["image"].as_tensor(), d["label"].as_tensor()
    xs, ys = [], []
    for z in np.nonzero((label[0] > 0).flatten(0, 1).any(0).numpy())[0][:n]:
        cx, cy = (int(v.float().mean()) for v in torch.nonzero(label[0, :, :, z] > 0, as_tuple=True))
        x0 = min(max(cx - size // 2, 0), image.shape[1] - size)
        y0 = min(max(cy - size // 2, 0), image.shape[2] - size)
        xs.append(image[:, x0 : x0 + size, y0 : y0 + size, z])
        ys.append(label[:, x0 : x0 + size, y0 : y0 + size, z])
    return torch.stack(xs).float(), torch.stack(ys).float(), d


def test_label_rule_keeps_reference_voxels_above_130_hu(case_root):
    """orCaScore reference lesions are voxels > 130 HU: the label rule drops the partial-volume rim."""
    from ctbundles.transforms.ct_io import load_ct, load_label

    parser = parsed(case_root)
    item = parser.get_parsed_content("datalist")[0]
    hu = load_ct(item["image"])
    raw = load_label(item["label"], like=hu).numpy()
    d = Compose(parser.get_parsed_content("load") + parser.get_parsed_content("label_rule"))(dict(item))
    lab = d["label"][0].numpy()
    expected = np.where((hu.numpy() > 130) & (raw != 4), raw, 0)  # 4 (undetermined) -> background
    np.testing.assert_array_equal(lab, expected)
    assert 0 < (lab > 0).sum() < (raw > 0).sum()


def test_stage2_overfits_a_few_slices_in_eval_mode(case_root):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    parser = parsed(case_root)
    x, y, d = calcium_windows(parser)
    # image/label alignment and intensity scaling: calcium is bright in the scaled [0, 1] image
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(np.unique(y.numpy())) <= {0.0, 1.0, 2.0, 3.0} and (y > 0).sum() >= 6
    assert float(x[y > 0].mean()) > float(torch.quantile(x.flatten(), 0.9))
    net = parser.get_parsed_content("network_def")
    loss_fn = parser.get_parsed_content("loss")
    optimizer = torch.optim.Adam(net.parameters(), lr=parser.get_parsed_content("learning_rate"))
    start, first = time.time(), None
    for _ in range(STEPS):
        net.train()
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.2 * first
    net.eval()
    with torch.no_grad():
        out = net(x)
    # the configs' validation post-processing (argmax + one-hot, 4 classes) and key metric (F1 without background)
    post = parser.get_parsed_content("validate#postprocessing")
    metric = parser.get_parsed_content("validate#key_metric#val_f1")
    batch = [post({"pred": o, "label": t}) for o, t in zip(out, y)]
    from monai.metrics import ConfusionMatrixMetric

    cm = ConfusionMatrixMetric(include_background=False, metric_name="f1 score", compute_sample=False)
    cm([b["pred"] for b in batch], [b["label"] for b in batch])
    f1_per_class_mean = float(cm.aggregate()[0])
    pred, ref = out.argmax(1) > 0, y[:, 0] > 0
    f1_any = 2 * float((pred & ref).sum()) / float(pred.sum() + ref.sum())
    assert metric.metric_name == "f1 score"
    print(f"calcium F1 {f1_any:.3f}, per-artery mean F1 {f1_per_class_mean:.3f}, {int(ref.sum())} voxels")
    assert f1_any > 0.3, f"binary calcium F1 {f1_any:.3f} after overfitting {int(ref.sum())} voxels"
    assert f1_per_class_mean > 0.2
    assert time.time() - start < 60
