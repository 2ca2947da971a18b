"""ICAC bundle, the synthetic-cohort training recipe and the shipped weights (docs/README.md, Performance).

The reduced configuration must keep the paper's architecture: the network's receptive field is
measured (gradient of one output voxel), the training patch gives a non-empty output, the
validation window covers the synthetic frame in one pass, and the schedules are the paper's
scaled to the recipe's epoch count. The training patches must supervise ICAC wherever it lies in
the frame (regression test of session 1's sampling bug). inference.json loads the shipped
``models/model.pt`` (the paper's features (16, 32, 64) since 0.7.0) strictly, and the reduced-width overlay
loads the 0.5.0 weights of features (4, 8, 16).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from torch import nn

from ctbundles.losses.icac_masked_ce import crop_target
from ctbundles.networks.mixed_precision import AutocastForward
from ctbundles.synthetic.head import generate_head

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "icac_ct_segmentation"
CONFIGS = BUNDLE / "configs"
#: the overlays of the paper-width fine-tune (training log, sessions 7-9), merged in this order
PAPER_WIDTH_RECIPE = ("train.json", "train_synthetic.json", "train_registered_clinical.json", "train_paper_width.json")


def _parser(*names) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    return parser


def _handler_config(parser: ConfigParser, handlers_key: str, target: str) -> dict:
    """The (unparsed) config of the first handler with ``_target_`` ``target`` in ``parser[handlers_key]``."""
    found = [h for h in parser[handlers_key] if h.get("_target_") == target]
    assert found, f"no {target} in {handlers_key}"
    return found[0]


def _assert_cpu_bf16_wrapper(wrapped, net) -> None:
    """``wrapped`` is the bf16 overlays' ``AutocastForward`` around ``net`` itself (CPU, bfloat16, enabled)."""
    assert isinstance(wrapped, AutocastForward) and wrapped.network is net
    assert (wrapped.device_type, wrapped.dtype, wrapped.enabled) == ("cpu", torch.bfloat16, True)


def test_synthetic_overlay_keeps_the_architecture_and_receptive_field():
    parser = _parser("train.json", "train_synthetic.json")
    net = parser.get_parsed_content("network_def")
    widths = sorted({m.out_channels for m in net.modules() if isinstance(m, nn.Conv3d) and m.out_channels > 1})
    assert widths == [16, 32, 64]
    assert net.num_layers() == 23 and len(net.heads) == 6
    # measured receptive field of one output voxel with positive averaging weights
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            nn.init.zeros_(m.bias)
    net.eval()
    x = torch.ones(1, 1, 89, 89, 38, requires_grad=True)
    out = net(x)
    assert tuple(out.shape[2:]) == (8, 8, 2)
    out[0, 0, 3, 4, 1].backward()
    support = (x.grad[0, 0] != 0).nonzero()
    assert (support.max(0).values - support.min(0).values + 1).tolist() == [85, 85, 37]
    # the training patch and the one-pass validation window
    patch = parser.get_parsed_content("patch_size")
    assert net.output_size(patch) == (36, 36, 17)
    frame = parser.get_parsed_content("frame_shape")
    roi_out = net.output_size(parser.get_parsed_content("val_roi_size"))
    assert all(o >= f for o, f in zip(roi_out, frame))
    # the cohort, the training overlay and inference_synthetic.json use inference.json's frame, in one window
    infer = _parser("inference.json", "inference_synthetic.json")
    assert list(_cohort_script().FRAME_SHAPE) == frame == infer.get_parsed_content("frame_shape") == [240, 240, 100]
    assert _parser("inference.json").get_parsed_content("frame_shape") == frame
    assert net.output_size(infer.get_parsed_content("patch_size")) == (244, 244, 100)


@pytest.mark.parametrize("epoch, lr", [(1, 1e-3), (24, 1e-3), (25, 1e-4), (36, 1e-4)])
def test_synthetic_schedules_over_36_epochs(epoch, lr):
    # the recipe's schedules (README, deviations): epochs of 28 patches from the warm start;
    # positive weight 1 and no auxiliary losses throughout; Adam lr 1e-3, / 10 after epoch 24
    parser = _parser("train.json", "train_synthetic.json")
    assert parser.get_parsed_content("epochs") == 36
    handler = parser.get_parsed_content("train#handlers#0")
    v = handler.values(epoch)
    assert v["pos_weight"] == 1.0 and v["aux_weight"] == 0.0 and v["lr"] == pytest.approx(lr)
    optimizer = parser.get_parsed_content("optimizer")
    handler.optimizer = optimizer
    handler.apply(epoch)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert "momentum" not in optimizer.param_groups[0]  # the SGD momentum schedule does not apply to Adam


# configs/train_registered.json (session 5, docs/training_log.md "Session 5"): 30 epochs, lr / 10 after epoch 20, validation
# every 5, same warm start; configs/train_registered_clinical.json (session 6, "Session 6"): 4 epochs, Adam lr
# 3e-4 then 3e-5 after epoch 3, validation every 2 (warm start from session 5's run 2). Both: positive weight 1,
# no auxiliary losses, and the rest is train_synthetic.json's (no registration in training: the frames are
# registered by scripts/make_registered_cohort.py), same network, dropout and patches.
_REGISTERED_OVERLAYS = {
    "train_registered.json": ((30, 5), ("init_ckpt",)),
    "train_registered_clinical.json": ((4, 2), ("sample_ratios",)),
}


@pytest.mark.parametrize("overlay, epoch, lr", [
    ("train_registered.json", 1, 1e-3), ("train_registered.json", 20, 1e-3), ("train_registered.json", 21, 1e-4),
    ("train_registered.json", 30, 1e-4),
    ("train_registered_clinical.json", 1, 3e-4), ("train_registered_clinical.json", 3, 3e-4),
    ("train_registered_clinical.json", 4, 3e-5),
])
def test_registered_overlays_change_only_the_run(overlay, epoch, lr):
    (epochs, val_interval), also_unchanged = _REGISTERED_OVERLAYS[overlay]
    base = _parser("train.json", "train_synthetic.json")
    parser = _parser("train.json", "train_synthetic.json", overlay)
    assert (parser.get_parsed_content("epochs"), parser.get_parsed_content("val_interval")) == (epochs, val_interval)
    v = parser.get_parsed_content("train#handlers#0").values(epoch)
    assert v["pos_weight"] == 1.0 and v["aux_weight"] == 0.0 and v["lr"] == pytest.approx(lr)
    for key in ("register_to_reference", "frame_shape", "patch_size", "features", "dropout", *also_unchanged):
        assert parser.get_parsed_content(key) == base.get_parsed_content(key), key
    assert parser.get_parsed_content("register_to_reference") is False


def test_paper_width_overlay_widens_the_network_and_loads_the_widened_reduced_weights(tmp_path):
    """configs/train_paper_width.json (training log, sessions 7-8): the paper's features on the session-6
    recipe, 12 epochs, lr 3e-4 then 3e-5 after epoch 9, validation every 3, checkpoint by validation Dice; its
    first warm start, scripts/widen_checkpoint.py on the reduced-width weights, loads strictly and computes
    what they do."""
    names = ("train.json", "train_synthetic.json", "train_registered_clinical.json")
    base, parser = _parser(*names), _parser(*names, "train_paper_width.json")
    assert parser.get_parsed_content("features") == base.get_parsed_content("features") == [16, 32, 64]
    assert (parser.get_parsed_content("epochs"), parser.get_parsed_content("val_interval")) == (12, 3)
    handler = parser.get_parsed_content("train#handlers#0")
    assert handler.values(9)["lr"] == pytest.approx(3e-4) and handler.values(10)["lr"] == pytest.approx(3e-5)
    assert list(parser["validate#key_metric"]) == ["val_mean_dice"]
    for key in ("patch_size", "dropout", "sample_ratios", "pos_weight", "register_to_reference"):
        assert parser.get_parsed_content(key) == base.get_parsed_content(key), key

    spec = importlib.util.spec_from_file_location("widen_checkpoint", BUNDLE / "scripts" / "widen_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    reduced = BUNDLE / "models" / "model_reduced_width.pt"
    out = tmp_path / "wide.pt"
    assert script.main(["--ckpt", str(reduced), "--old_features", "4", "8", "16",
                        "--new_features", "16", "32", "64", "--out", str(out)]) == 0
    wide = parser.get_parsed_content("network_def")
    wide.load_state_dict(torch.load(out, map_location="cpu"), strict=True)
    narrow = _parser("inference.json", "inference_reduced_width.json").get_parsed_content("network_def")
    narrow.load_state_dict(torch.load(reduced, map_location="cpu"), strict=True)
    x = torch.rand(1, 1, 97, 97, 41)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x), narrow.eval()(x), rtol=0, atol=1e-4)
    # a wrong width is refused with a message naming the file, and nothing is written
    bad = tmp_path / "bad.pt"
    assert script.main(["--ckpt", str(reduced), "--old_features", "8", "16", "32",
                        "--new_features", "16", "32", "64", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_reduced_width_overlay_loads_its_weights_and_they_differ_from_the_shipped_ones():
    """configs/inference_reduced_width.json: features (4, 8, 16) and models/model_reduced_width.pt (the 0.5.0
    weights) loaded strictly by inference.json's CheckpointLoader. The shipped paper-width weights started as
    their widening and moved in training: their first four channels no longer equal the reduced weights."""
    parser = _parser("inference.json", "inference_reduced_width.json")
    parser["bundle_root"] = str(BUNDLE)
    assert parser.get_parsed_content("features") == [4, 8, 16]
    net = parser.get_parsed_content("network_def").eval()
    loader = parser.get_parsed_content("handlers#0")
    assert loader.load_path.endswith("models/model_reduced_width.pt") and loader.strict
    reduced = torch.load(loader.load_path, map_location="cpu", weights_only=True)
    net.load_state_dict(reduced, strict=True)
    shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert shipped["block8.conv2.weight"].shape[:2] == (16, 16) and reduced["block8.conv2.weight"].shape[:2] == (4, 4)
    assert not torch.equal(shipped["block8.conv2.weight"][:4, :4], reduced["block8.conv2.weight"])
    with torch.no_grad():
        out = net(torch.rand(1, 1, 97, 97, 41))
    assert out.shape == (1, 1, 16, 16, 5) and torch.isfinite(out).all()


def test_cpu_bf16_overlay_wraps_the_engines_network_and_saves_the_network_itself():
    """configs/train_cpu_bf16.json (training log, "Session 9"): the trainer and the evaluator run the network
    under CPU bfloat16 autocast, while the optimiser, the warm start and the checkpoint saver keep working on
    @network itself, so a checkpoint of such a run loads strictly into inference.json."""
    names = PAPER_WIDTH_RECIPE
    parser = _parser(*names, "train_cpu_bf16.json")
    net = parser.get_parsed_content("network")
    for key in ("train#trainer#network", "validate#evaluator#network"):
        _assert_cpu_bf16_wrapper(parser.get_parsed_content(key), net)
    params = parser.get_parsed_content("optimizer").param_groups[0]["params"]
    assert len(params) == len(list(net.parameters())) and all(a is b for a, b in zip(params, net.parameters()))
    # the warm start loads into, and the saver saves, @network itself
    assert _handler_config(parser, "train#handlers", "CheckpointLoader")["load_dict"] == {"model": "@network"}
    assert _handler_config(parser, "validate#handlers", "CheckpointSaver")["save_dict"] == {"model": "@network"}
    base = _parser(*names)
    for key in ("patch_size", "epochs", "learning_rate", "features", "pos_weight", "train#trainer#amp"):
        assert parser.get_parsed_content(key) == base.get_parsed_content(key), key


def test_cpu_bf16_inference_overlay_wraps_the_evaluator_and_loads_the_shipped_weights_into_the_network():
    """configs/inference_cpu_bf16.json (training log, "Session 10"): the evaluator runs the shipped weights under
    CPU bfloat16 autocast; the checkpoint loader still fills @network (float32), and the wrapped logits stay
    within bfloat16's precision of the float32 ones."""
    parser = _parser("inference.json", "inference_cpu_bf16.json")
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network")
    wrapped = parser.get_parsed_content("evaluator#network")
    _assert_cpu_bf16_wrapper(wrapped, net)
    assert _handler_config(parser, "handlers", "CheckpointLoader")["load_dict"] == {"model": "@network"}
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    torch.manual_seed(0)
    x = torch.rand(1, 1, 97, 97, 41)
    with torch.no_grad():
        ref, out = net(x), wrapped(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, 1, 16, 16, 5)
    assert not torch.equal(out, ref)
    torch.testing.assert_close(torch.sigmoid(out), torch.sigmoid(ref), rtol=0, atol=1e-2)
    base = _parser("inference.json")
    for key in ("patch_size", "overlap", "features"):
        assert parser.get_parsed_content(key) == base.get_parsed_content(key), key


def test_paper_patch_overlay_restores_the_papers_training_patch_and_changes_only_the_run():
    """configs/train_paper_patch.json (training log, "Session 9", tried and not shipped): train.json's paper
    patch 178 x 178 x 98 (whose valid-convolution output is 96 x 96 x 62, 26 times the 36 x 36 x 17 of the
    117 x 117 x 53 recipe patch), Adam 1e-4 for 6 epochs then 1e-5, 8 epochs, validation every 2."""
    names = PAPER_WIDTH_RECIPE
    base, parser = _parser(*names), _parser(*names, "train_cpu_bf16.json", "train_paper_patch.json")
    patch = parser.get_parsed_content("patch_size")
    assert patch == _parser("train.json").get_parsed_content("patch_size") == [178, 178, 98]
    net = parser.get_parsed_content("network_def")
    assert net.output_size(patch) == (96, 96, 62)
    assert net.output_size(base.get_parsed_content("patch_size")) == (36, 36, 17)
    assert (parser.get_parsed_content("epochs"), parser.get_parsed_content("val_interval")) == (8, 2)
    handler = parser.get_parsed_content("train#handlers#0")
    assert handler.values(6)["lr"] == pytest.approx(1e-4) and handler.values(7)["lr"] == pytest.approx(1e-5)
    for key in ("features", "dropout", "sample_ratios", "sample_margin", "pos_weight", "val_roi_size"):
        assert parser.get_parsed_content(key) == base.get_parsed_content(key), key


@pytest.mark.parametrize("device, patch, overlap", [
    ("$torch.device('cpu')", [325, 325, 136], 0.0), ("$torch.device('cuda:0')", [178, 178, 98], 0.5),
    ("cpu", [325, 325, 136], 0.0), ("cuda", [178, 178, 98], 0.5),  # MONAI Label sets device as a string
])
def test_inference_window_is_the_papers_patches_on_gpu_and_the_whole_frame_on_cpu(device, patch, overlap):
    """On a GPU inference.json tiles the paper's 178 x 178 x 98 patches with overlap 0.5; on a CPU one window
    whose 244 x 244 x 100 output covers the 240 x 240 x 100 frame (the same logits: the tiling reproduces a
    whole-volume pass, tests/networks/test_icac_inferer.py; one pass instead of 48). The device may be a
    torch.device (inference.json's own) or a string (what MONAI Label's bundle tasks put there)."""
    parser = _parser("inference.json")
    parser["device"] = device
    assert parser.get_parsed_content("patch_size") == patch and parser.get_parsed_content("overlap") == overlap
    inferer = parser.get_parsed_content("inferer")
    assert inferer.roi_size == tuple(patch)
    net = parser.get_parsed_content("network_def")
    if patch[0] == 325:
        frame = parser.get_parsed_content("frame_shape")
        assert all(o >= f for o, f in zip(net.output_size(patch), frame))
    else:
        assert net.output_size(patch) == (96, 96, 62)


@pytest.mark.parametrize("overlays, selected", [
    (("train_synthetic.json",), 3),  # the paper's rule: lowest validation loss
    (("train_synthetic.json", "train_registered_clinical.json"), 2),  # session 6: highest validation Dice
])
def test_checkpoint_selection_rule(tmp_path, overlays, selected):
    # The validator's CheckpointSaver keeps the model of the best key metric. Three validations with
    # Dice 0.2, 0.5, 0.3 and loss 0.10, 0.30, 0.05: the loss rule keeps validation 3, the Dice rule 2.
    from ignite.engine import Engine, Events

    parser = _parser("train.json", *overlays)
    parser["ckpt_dir"] = str(tmp_path)
    parser["features"] = [1, 2, 2]
    key = "val_mean_dice" if selected == 2 else "val_loss"
    assert list(parser["validate#key_metric"]) == [key]
    assert sorted([key, *parser["validate#additional_metrics"]]) == ["val_loss", "val_mean_dice"]
    cmp = parser.get_parsed_content("validate#evaluator#metric_cmp_fn")
    assert cmp(0.5, 0.2) is (key == "val_mean_dice") and cmp(0.2, 0.5) is (key == "val_loss")
    network = parser.get_parsed_content("network")
    saver = parser.get_parsed_content("validate#handlers#1")
    dice, loss = [0.2, 0.5, 0.3], [0.10, 0.30, 0.05]
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _validated(e):  # what the evaluator does at the end of a validation
        i = e.state.epoch - 1
        e.state.key_metric_name = key
        e.state.metrics = {"val_mean_dice": dice[i], "val_loss": loss[i]}
        with torch.no_grad():
            for param in network.parameters():
                param.fill_(float(e.state.epoch))

    saver.attach(engine)
    engine.run([0], max_epochs=3)
    state = torch.load(tmp_path / "model.pt", map_location="cpu")
    weights = [v for k, v in state.items() if k.endswith("weight") and v.is_floating_point()]
    assert weights and all(torch.all(w == float(selected)) for w in weights)


def test_synthetic_recipe_keeps_the_paper_dropout_warm_starts_and_loads_into_inference():
    parser = _parser("train.json", "train_synthetic.json")
    net = parser.get_parsed_content("network_def")
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.4, 0.4, 0.5]
    # the warm start: a CheckpointLoader of init_ckpt appended to the trainer's handlers (after the schedules)
    last = len(parser["train#handlers"]) - 1
    assert [h["_target_"] for h in parser["train#handlers"]][-1] == "CheckpointLoader"
    loader = parser.get_parsed_content(f"train#handlers#{last}")
    assert type(parser.get_parsed_content("train#handlers#0")).__name__ == "ICACScheduleHandler"
    assert loader.load_path == parser.get_parsed_content("init_ckpt") and loader.strict
    assert parser.get_parsed_content("init_ckpt").endswith("models/model.pt")
    # the training network's state dict loads strictly into inference.json's network and back
    infer = _parser("inference.json").get_parsed_content("network_def")
    infer.load_state_dict(net.state_dict(), strict=True)
    net.load_state_dict(infer.state_dict(), strict=True)


def test_synthetic_patches_are_centred_on_the_three_sampling_classes():
    """RandCropByLabelClassesd centres patches 1:1:1 on ICAC, on bone within the margin of ICAC, on other bone."""
    parser = _parser("train.json", "train_synthetic.json")
    assert parser.get_parsed_content("sample_ratios") == [0, 1, 1, 1]
    margin = parser.get_parsed_content("sample_margin")
    shape = (200, 60, 40)
    label = -torch.ones((1, *shape))
    label[0, 20, 30, 20] = 1.0  # one ICAC voxel
    label[0, 20 + margin[0], 30, 20] = 0.0  # bone at the edge of the near box
    label[0, 21 + margin[0] + 100, 30, 20] = 0.0  # bone far from ICAC
    image = torch.arange(shape[0], dtype=torch.float32).view(1, -1, 1, 1).expand(1, *shape) / 1000.0  # x / 1000
    for cls, x in ((1, 20), (2, 20 + margin[0]), (3, 121 + margin[0])):
        parser["sample_ratios"] = [float(c == cls) for c in range(4)]
        crop = Compose(parser.get_parsed_content("train#sampling_transforms") + parser.get_parsed_content("train#random_transforms"))
        crop.set_random_state(seed=cls)
        out = crop({"image": image.clone(), "label": label.clone()})
        out = out[0] if isinstance(out, list) else out
        centre = [s // 2 for s in out["label"].shape[1:]]
        assert float(out["label"][0, centre[0], centre[1], centre[2]]) == (1.0 if cls == 1 else 0.0)
        # the centred voxel is the one voxel of its class: its x is read back from the image ramp
        assert float(out["image"][0, centre[0], centre[1], centre[2]]) * 1000.0 == pytest.approx(x, abs=1e-3)


def test_training_patches_supervise_icac_at_the_frame_edge():
    """Regression test: a plaque at the frame border lies in the supervised centre of its patch.

    The network's output is the patch minus (41, 40) voxels in-plane and 18 along z. Session 1's
    recipe cropped positive-centred patches inside the unpadded volume, so a plaque closer than 41
    voxels to the frame edge (every carotid of the synthetic frame lies there) was clamped out of
    the supervised centre and ICAC was almost never supervised. The recipe now pads the volume by
    the network border (image 0 = -1000 HU, label -1 = unsupervised) before cropping.
    """
    parser = _parser("train.json", "train_synthetic.json")
    parser["sample_ratios"] = [0, 1, 0, 0]  # ICAC-centred patches only
    net = parser.get_parsed_content("network_def")
    crop = Compose(parser.get_parsed_content("train#sampling_transforms") + parser.get_parsed_content("train#random_transforms"))
    crop.set_random_state(seed=0)
    shape = (60, 50, 30)
    image = torch.full((1, *shape), 0.3)
    label = torch.zeros((1, *shape))
    label[0, 0:2, 47:50, 0:2] = 1.0  # a plaque in a corner of the frame
    for _ in range(4):
        out = crop({"image": image.clone(), "label": label.clone()})
        out = out[0] if isinstance(out, list) else out
        patch = tuple(out["image"].shape[1:])
        assert patch == tuple(parser.get_parsed_content("patch_size"))
        target = crop_target(out["label"][None], net.output_size(patch), net.border_lo)
        assert int((target == 1).sum()) == 12  # the whole plaque (2 x 3 x 2 voxels) is supervised
        # the padding outside the frame is air and unsupervised
        assert float(out["image"].min()) == 0.0 and float(out["label"].min()) == -1.0


def test_inference_loads_the_shipped_weights_at_the_papers_width():
    weights = BUNDLE / "models" / "model.pt"
    assert weights.stat().st_size < 25 * 2**20
    parser = _parser("inference.json")
    assert parser.get_parsed_content("handlers#0#load_path").endswith("models/model.pt")
    net = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in net.parameters()) == 842613  # about 0.84 M parameters at features 16/32/64
    widths = sorted({m.out_channels for m in net.modules() if isinstance(m, nn.Conv3d) and m.out_channels > 1})
    assert widths == [16, 32, 64]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state), strict=True)
    train_net = _parser("train.json").get_parsed_content("network_def")
    train_net.load_state_dict(state.get("model", state), strict=True)  # training output loads in inference


def _cohort_script():
    spec = importlib.util.spec_from_file_location("make_synthetic_cohort", BUNDLE / "scripts" / "make_synthetic_cohort.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registered_cohort_script():
    spec = importlib.util.spec_from_file_location(
        "make_registered_cohort", BUNDLE / "scripts" / "make_registered_cohort.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registered_cohort_raw_grids():
    # --raw_grid fine (default) is the slow test's 400 x 400 x 150 head of 0.5 x 0.5 x 1 mm; clinical is
    # `ctbundles synth head`'s 512 x 512 x 200 of 0.45 x 0.45 x 0.7 mm (what `ctbundles demo` runs);
    # --raw_shape / --raw_spacing replace the preset's values
    script = _registered_cohort_script()
    assert script.raw_grid() == ((400, 400, 150), (0.5, 0.5, 1.0))
    assert script.raw_grid("clinical") == ((512, 512, 200), (0.45, 0.45, 0.7))
    assert script.raw_grid("clinical", spacing=(1, 1, 2)) == ((512, 512, 200), (1.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="raw grid"):
        script.raw_grid("coarse")
    with pytest.raises(ValueError, match="positive"):
        script.raw_grid("fine", shape=(0, 10, 10))


def test_registered_cohort_writes_heads_on_the_requested_raw_grid(tmp_path):
    # --raw_only writes the unregistered heads (inference.json registers them) on the chosen grid
    # (a coarse one here, to keep the test short)
    script = _registered_cohort_script()
    assert script.main(["--out", str(tmp_path), "--seeds", "7-8", "--raw_only", "--raw_grid", "clinical",
                        "--raw_shape", "100", "100", "60", "--raw_spacing", "2", "2", "2.5"]) == 0
    for seed in (7, 8):
        image = nib.load(str(tmp_path / "imagesTr" / f"icac_synth_{seed:04d}.nii.gz"))
        label = nib.load(str(tmp_path / "labelsTr" / f"icac_synth_{seed:04d}.nii.gz"))
        assert image.shape == label.shape == (100, 100, 60)
        np.testing.assert_allclose(image.header.get_zooms(), (2.0, 2.0, 2.5))
        np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), (2.0, 2.0, 2.5))
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path / "x"), "--seeds", "7", "--raw_only", "--raw_shape", "0", "10", "10"])


def _infer_and_dice(case, tmp_path, *overlays, **overrides) -> float:
    """Run inference.json (+ overlays) with the shipped weights on one case; Dice against its label >= 130 HU."""
    images = tmp_path / "images"
    images.mkdir()
    src = images / f"{case.case_id}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(case.image, np.float32), case.affine), str(src))
    out = tmp_path / "out"
    parser = _parser("inference.json", *overlays)
    parser.update(dict(bundle_root=str(BUNDLE), dataset_dir=str(images), output_dir=str(out), **overrides))
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluator").run()
    seg = nib.load(str(out / f"{case.case_id}_seg.nii.gz"))
    assert seg.shape == case.image.shape and np.allclose(seg.affine, case.affine, atol=1e-4)
    pred = np.asarray(seg.dataobj) > 0
    ref = (np.asarray(case.label) > 0) & (np.asarray(case.image) >= 130.0)
    report = json.loads((out / f"{case.case_id}.json").read_text())
    voxel_mm3 = float(np.prod(case.spacing))
    assert report["total_mm3"] == pytest.approx(pred.sum() * voxel_mm3, rel=1e-6)
    dice = 2.0 * (pred & ref).sum() / (pred.sum() + ref.sum())
    print(f"{case.case_id}: Dice {dice:.3f} ({int(pred.sum())} predicted, {int(ref.sum())} reference voxels)")
    return dice


@pytest.mark.slow
def test_shipped_model_segments_a_fresh_synthetic_head_on_the_frame(tmp_path):
    """A head generated on the network frame (seed 5000, unseen), no registration (about 35 s).

    0.7.0 (the paper-width 0.6.0 weights): Dice 0.742 (212 predicted, 351 reference voxels); the reduced
    width 0.5.0: 0.647 (187 predicted); 0.4.0: 0.522, an expected failure until 0.5.0. The bar 0.6 is
    this test's, not the 0.8 target (docs/README.md, Performance)."""
    script = _cohort_script()
    case = generate_head(5000, shape=script.FRAME_SHAPE, spacing=script.FRAME_SPACING,
                         grid_centre_mm=script.FRAME_CENTRE_MM, pose=True, max_rotation_deg=script.ROTATION_DEG,
                         max_translation_mm=script.TRANSLATION_MM, n_calcifications=(1, 4))
    case.case_id = "icac_synth_5000"
    assert _infer_and_dice(case, tmp_path, "inference_synthetic.json") >= 0.6


@pytest.mark.slow
def test_shipped_model_segments_a_fresh_registered_synthetic_head(tmp_path):
    """The paper's pipeline with the shipped weights: a posed head (seed 5001) registered to the reference.

    0.7.0 (paper width, the probability resampled back onto the scan): Dice 0.776 (258 predicted, 379
    reference voxels); 0.5.1 (reduced width): 0.674 (232 predicted); 0.5.0 (label resampled back,
    nearest): 0.679 (254 predicted); 0.4.0 with the 0.4.1 registration start: 0.51, an expected failure
    until 0.5.0."""
    case = generate_head(5001, shape=(400, 400, 150), spacing=(0.5, 0.5, 1.0), n_calcifications=(1, 4))
    case.case_id = "icac_synth_5001"
    dice = _infer_and_dice(case, tmp_path, patch_size=[325, 325, 136], overlap=0.0)
    assert dice >= 0.6
