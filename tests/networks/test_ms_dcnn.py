"""MS-DCNN structure and shapes (Liu et al., ISLES 2018, sections 2.2-2.3)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.densenet import _DenseBlock, _DenseLayer

from ctbundles.networks.ms_dcnn import CTP_MAP_ORDER, MSDCNN, MSDCNNTransition, MSDCNNUpBlock


@pytest.fixture(scope="module")
def paper_net() -> MSDCNN:
    torch.manual_seed(0)
    return MSDCNN().eval()


def _tiny(**kw) -> MSDCNN:
    args = dict(init_features=8, growth_rate=4, block_config=(2, 2, 2, 2), bn_size=2, up_channels=(8, 8, 8, 8),
                head_channels=8)
    args.update(kw)
    return MSDCNN(**args)


def test_channel_order_and_path_inputs(paper_net):
    assert CTP_MAP_ORDER == ("CBF", "CBV", "MTT", "Tmax")
    # path 1 = Tmax + CBF + CBV, path 2 = MTT
    assert [CTP_MAP_ORDER[i] for i in paper_net.path1_index.tolist()] == ["Tmax", "CBF", "CBV"]
    assert [CTP_MAP_ORDER[i] for i in paper_net.path2_index.tolist()] == ["MTT"]
    assert paper_net.path1.stem[0].in_channels == 3
    assert paper_net.path2.stem[0].in_channels == 1


def test_dual_first_layer_kernels(paper_net):
    assert paper_net.path1.stem[0].kernel_size == (3, 3)
    assert paper_net.path2.stem[0].kernel_size == (7, 7)
    assert paper_net.path1.stem[0].out_channels == paper_net.path2.stem[0].out_channels == 64
    # the single pooling layer of each path: max pooling 3x3 stride 2
    pool = paper_net.path1.stem[3]
    assert isinstance(pool, torch.nn.MaxPool2d) and pool.kernel_size == 3 and pool.stride == 2


@pytest.mark.parametrize("path_name, rate", [("path1", 0.01), ("path2", 0.5)])
def test_dropout_rates_per_path(paper_net, path_name, rate):
    path = getattr(paper_net, path_name)
    drops = [m for m in path.modules() if isinstance(m, torch.nn.Dropout)]
    # one dropout after each of the 58 dense units and each of the 3 transitions
    assert len(drops) == 58 + 3
    assert {d.p for d in drops} == {rate}
    up_drops = [m for b in path.up_blocks for m in b.modules() if isinstance(m, torch.nn.Dropout)]
    assert up_drops == []


@pytest.mark.parametrize("dropout_type, cls", [("element", torch.nn.Dropout), ("channel", torch.nn.Dropout2d)])
def test_dropout_type(dropout_type, cls):
    net = _tiny(dropout_type=dropout_type)
    drops = [m for m in net.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]
    assert len(drops) == 2 * (8 + 3) and all(type(d) is cls for d in drops)


def test_dense_blocks_are_densenet121(paper_net):
    path = paper_net.path1
    assert [len(b) for b in path.dense_blocks] == [6, 12, 24, 16]
    assert all(isinstance(b, _DenseBlock) for b in path.dense_blocks)
    unit = path.dense_blocks[0].denselayer1
    assert isinstance(unit, _DenseLayer)
    # dense unit: BN-ReLU-Conv(1x1, 4k) - BN-ReLU-Conv(3x3, k), k = 32
    kinds = [type(m).__name__ for m in unit.layers]
    assert kinds == ["BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "Dropout"]
    assert unit.layers.conv1.out_channels == 128 and unit.layers.conv2.out_channels == 32
    assert unit.layers.conv2.kernel_size == (3, 3)
    # growth: 64 + 6*32 = 256, + 12*32 = 640, + 24*32 = 1408, + 16*32 = 1920 (no transition compression)
    assert path.skip_channels == [256, 640, 1408, 1920]
    assert path.dense_blocks[3].denselayer1.layers.norm1.num_features == 1408


def test_transition_blocks(paper_net):
    trans = paper_net.path2.transitions
    assert len(trans) == 3
    for t, c in zip(trans, (256, 640, 1408)):
        assert isinstance(t, MSDCNNTransition)
        assert [type(m).__name__ for m in t] == ["BatchNorm2d", "ReLU", "AvgPool2d", "Dropout"]
        assert t.norm.num_features == c and t.pool.kernel_size == 2 and t.pool.stride == 2


def test_up_blocks(paper_net):
    ups = paper_net.path1.up_blocks
    assert len(ups) == 4 and all(isinstance(u, MSDCNNUpBlock) for u in ups)
    assert [u.conv.in_channels for u in ups] == [1920, 256 + 1408, 128 + 640, 64 + 256]
    assert [u.conv.out_channels for u in ups] == [256, 128, 64, 32]
    assert all(u.mode == "bilinear" for u in ups)


def test_layer_count_123(paper_net):
    convs = [n for n, m in paper_net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    per_path = [n for n in convs if n.startswith("path1.")]
    head = [n for n in convs if n.startswith("head.")]
    assert len(per_path) == 1 + 58 * 2 + 4
    assert len(head) == 2
    assert len(per_path) + len(head) == 123
    assert paper_net.head[-1].out_channels == 1 and paper_net.head[-1].kernel_size == (1, 1)


@pytest.mark.parametrize("size", [(32, 48)])
def test_paper_net_shape_and_range(paper_net, size):
    x = torch.randn(1, 4, *size)
    with torch.no_grad():
        y = paper_net(x)
    assert y.shape == (1, 1, *size)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_paths_read_only_their_maps():
    torch.manual_seed(0)
    net = _tiny().eval()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        p2 = net.path2(x[:, 2:3])
        x_mod = x.clone()
        x_mod[:, [0, 1, 3]] = torch.randn(1, 3, 32, 32)  # change everything except MTT
        assert torch.allclose(net.path2(torch.index_select(x_mod, 1, net.path2_index)), p2)
        assert not torch.allclose(net(x_mod), net(x))


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    net = _tiny(dropout_probs=(0.5, 0.5))
    x = torch.randn(2, 4, 32, 32)
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    assert torch.allclose(net(x), net(x))


def test_sigmoid_switch():
    torch.manual_seed(0)
    net = _tiny().eval()
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        probs = net(x)
        net.sigmoid = False
        logits = net(x)
    assert torch.allclose(torch.sigmoid(logits), probs, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_matches_eager(spatial_dims):
    torch.manual_seed(0)
    net = _tiny(spatial_dims=spatial_dims).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 4, *([16] * spatial_dims))
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)
    assert net(x).shape == (1, 1, *([16] * spatial_dims))


@pytest.mark.parametrize(
    "kw",
    [dict(path_channels=((0, 1, 5), (2,))), dict(first_kernel_sizes=(3, 4)), dict(dropout_probs=(0.1,)),
     dict(up_channels=(8, 8, 8)), dict(dropout_type="spatial")],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        _tiny(**kw)
