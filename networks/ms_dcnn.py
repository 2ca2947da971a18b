"""MS-DCNN: the multi-scale dual-path dense U-network of Liu et al. (ISLES 2018).

Liu L., Yang S., Meng L., Li M., Wang J., "Multi-scale Deep Convolutional Neural Network for Stroke
Lesions Segmentation on CT Images", BrainLes 2018 (LNCS 11383), ISLES 2018 challenge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.densenet import _DenseBlock

__all__ = ["CTP_MAP_ORDER", "MSDCNN", "MSDCNNPath", "MSDCNNTransition", "MSDCNNUpBlock"]

#: Channel order of the stacked network input (and of the stacked 4-channel NIfTI the bundle accepts).
CTP_MAP_ORDER: tuple[str, ...] = ("CBF", "CBV", "MTT", "Tmax")


def _dropout(dropout_type: str, spatial_dims: int, p: float) -> nn.Module:
    """Element-wise (paper, eqs. 1-3) or channel-wise (MONAI DenseNet) dropout."""
    if dropout_type == "element":
        return nn.Dropout(p)
    if dropout_type == "channel":
        return Dropout[Dropout.DROPOUT, spatial_dims](p)
    raise ValueError(f"dropout_type must be 'element' or 'channel', got {dropout_type!r}")


class MSDCNNTransition(nn.Sequential):
    """Transition block of MS-DCNN (paper section 2.2): BN, ReLU, average pooling (2x2, stride 2), dropout.

    Unlike DenseNet-121's transition the paper lists no 1x1 compression convolution, so the number of
    channels is kept.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: number of input (= output) channels.
        dropout_prob: dropout rate after the pooling (the path's rate, section 2.3).
        dropout_type: "element" (neuron-wise Bernoulli dropout, the paper's eqs. 1-3) or "channel"
            (whole feature maps, as MONAI's DenseNet).
        act: activation type and arguments.
        norm: feature normalisation type and arguments.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        dropout_prob: float,
        dropout_type: str = "element",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        self.add_module("norm", get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels))
        self.add_module("relu", get_act_layer(name=act))
        self.add_module("pool", Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2))
        if dropout_prob > 0:
            self.add_module("dropout", _dropout(dropout_type, spatial_dims, dropout_prob))


class MSDCNNUpBlock(nn.Module):
    """Up-sampling block of MS-DCNN (paper section 2.2): concatenation, BN, ReLU, convolution, then
    bilinear (trilinear in 3D) interpolation to the size of the next finer level.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels after the concatenation (decoder input + skip).
        out_channels: channels of the convolution.
        kernel_size: convolution kernel size (3, padding keeps the size).
        act: activation type and arguments.
        norm: feature normalisation type and arguments.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        self.norm = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.act = get_act_layer(name=act)
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2, bias=False
        )
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        x = self.conv(self.act(self.norm(x)))
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)


class MSDCNNPath(nn.Module):
    """One U-shaped path of MS-DCNN (paper section 2.2, Fig. 1).

    Contracting path: the path's own first-layer convolution (its kernel is one of the "dual parallel
    kernels"), BN, ReLU, max pooling (3x3, stride 2), then 4 dense blocks of DenseNet-121 dense units
    (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, MONAI's ``_DenseBlock``) separated by 3 transition blocks;
    dropout at the path's rate after every dense unit and every transition. Expansive path: 4
    up-sampling blocks, the first on the deepest features, each later one on the concatenation of the
    previous up-sampling output and the dense block of the same scale; the last one interpolates to
    the input size.

    Args:
        spatial_dims: number of spatial dimensions (2 as in the paper; 3 is allowed).
        in_channels: number of maps this path reads.
        first_kernel_size: kernel size of the first convolution.
        init_features: channels of the first convolution (64, as DenseNet-121).
        growth_rate: channels added by each dense unit (32, as DenseNet-121).
        block_config: dense units per dense block ((6, 12, 24, 16), as DenseNet-121).
        bn_size: bottleneck factor of a dense unit (4, as DenseNet-121).
        up_channels: output channels of the 4 up-sampling blocks, deepest first.
        dropout_prob: dropout rate of this path (0.01 for TMAX+CBF+CBV, 0.5 for MTT, section 2.3).
        dropout_type: "element" (paper) or "channel" (MONAI DenseNet's Dropout2d).
        act: activation type and arguments.
        norm: feature normalisation type and arguments.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        first_kernel_size: int,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        up_channels: Sequence[int] = (256, 128, 64, 32),
        dropout_prob: float = 0.0,
        dropout_type: str = "element",
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if len(up_channels) != len(block_config):
            raise ValueError(f"up_channels {tuple(up_channels)} needs one entry per dense block {tuple(block_config)}")
        if first_kernel_size % 2 != 1:
            raise ValueError(f"first_kernel_size must be odd to keep the size, got {first_kernel_size}")
        self.stem = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](
                in_channels, init_features, kernel_size=first_kernel_size, padding=first_kernel_size // 2, bias=False
            ),
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=init_features),
            get_act_layer(name=act),
            Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1),
        )
        self.dense_blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        channels = init_features
        skip_channels: list[int] = []
        for i, layers in enumerate(block_config):
            block = _DenseBlock(spatial_dims, layers, channels, bn_size, growth_rate, dropout_prob, act=act, norm=norm)
            if dropout_prob > 0:  # MONAI's dense unit drops whole channels; swap in the chosen dropout
                for unit in block:
                    unit.layers.dropout = _dropout(dropout_type, spatial_dims, dropout_prob)
            self.dense_blocks.append(block)
            channels += layers * growth_rate
            skip_channels.append(channels)
            if i < len(block_config) - 1:
                self.transitions.append(MSDCNNTransition(spatial_dims, channels, dropout_prob, dropout_type, act=act, norm=norm))
        self.up_blocks = nn.ModuleList()
        dec_in = skip_channels[-1]
        for i, out_c in enumerate(up_channels):
            self.up_blocks.append(MSDCNNUpBlock(spatial_dims, dec_in, out_c, act=act, norm=norm))
            if i < len(up_channels) - 1:
                dec_in = out_c + skip_channels[-2 - i]
        self.skip_channels = skip_channels
        self.out_channels = up_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = list(x.shape[2:])
        y = self.stem(x)
        skips: list[torch.Tensor] = []
        n_trans = len(self.transitions)
        for i, block in enumerate(self.dense_blocks):
            y = block(y)
            skips.append(y)
            for j, trans in enumerate(self.transitions):
                if j == i:
                    y = trans(y)
        n_up = len(self.up_blocks)
        d = skips[-1]
        for i, up in enumerate(self.up_blocks):
            if i > 0:
                d = torch.cat([d, skips[n_trans - i]], dim=1)
            target = size if i == n_up - 1 else list(skips[n_trans - 1 - i].shape[2:])
            d = up(d, target)
        return d


class MSDCNN(nn.Module):
    """MS-DCNN (Liu et al., ISLES 2018, section 2.2, Fig. 1): two symmetric U-shaped dense paths.

    The input stacks the four CT perfusion maps in the order :data:`CTP_MAP_ORDER` = (CBF, CBV, MTT,
    Tmax). The network splits it internally: path 1 reads TMAX + CBF + CBV (channels 3, 0, 1) with
    dropout 0.01, path 2 reads MTT (channel 2) with dropout 0.5 (section 2.3). The two paths differ in
    the kernel of their first layer (the "dual parallel kernels", default 3 and 7; the paper does not
    give the sizes). The outputs of the two expansive paths are concatenated, then two convolutions
    (3x3 with BN and ReLU, then 1x1) and a sigmoid give the lesion probability at the input size.

    Layer count: per path 1 first convolution + 58 dense units x 2 convolutions + 4 up-sampling
    convolutions, plus the 2 output convolutions = 123 convolution layers, the depth the paper gives
    ("we extend the deep of DenseNet-121 to 123 layers").

    Args:
        spatial_dims: number of spatial dimensions (2: the paper segments 160 x 160 slices).
        in_channels: channels of the stacked input (4).
        out_channels: output channels (1: lesion probability).
        path_channels: input channel indices read by each path ((3, 0, 1) = Tmax, CBF, CBV; (2,) = MTT).
        first_kernel_sizes: first-layer kernel size of each path.
        dropout_probs: dropout rate of each path (0.01, 0.5).
        dropout_type: "element" (default: neuron-wise, the paper's eqs. 1-3) or "channel" (MONAI
            DenseNet's Dropout2d), used in dense units and transitions.
        init_features: channels of each path's first convolution (64, DenseNet-121).
        growth_rate: dense unit growth rate (32, DenseNet-121).
        block_config: dense units per block ((6, 12, 24, 16), DenseNet-121).
        bn_size: dense unit bottleneck factor (4, DenseNet-121).
        up_channels: channels of the 4 up-sampling blocks of each path, deepest first.
        head_channels: channels of the first output convolution.
        sigmoid: apply the sigmoid (True, the paper's output); False returns logits.
        act: activation type and arguments.
        norm: feature normalisation type and arguments.

    The spatial size must be divisible by 16 for the skips to line up without rounding (160 is).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        path_channels: Sequence[Sequence[int]] = ((3, 0, 1), (2,)),
        first_kernel_sizes: Sequence[int] = (3, 7),
        dropout_probs: Sequence[float] = (0.01, 0.5),
        dropout_type: str = "element",
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        up_channels: Sequence[int] = (256, 128, 64, 32),
        head_channels: int = 32,
        sigmoid: bool = True,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if len(path_channels) != 2 or len(first_kernel_sizes) != 2 or len(dropout_probs) != 2:
            raise ValueError("MS-DCNN has two paths: path_channels, first_kernel_sizes and dropout_probs need 2 entries")
        for idx in path_channels:
            if not idx or any(not 0 <= int(c) < in_channels for c in idx):
                raise ValueError(f"path channel indices {tuple(idx)} must lie in [0, {in_channels})")
        self.register_buffer("path1_index", torch.tensor([int(c) for c in path_channels[0]]), persistent=False)
        self.register_buffer("path2_index", torch.tensor([int(c) for c in path_channels[1]]), persistent=False)
        common = dict(
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
            bn_size=bn_size,
            up_channels=up_channels,
            dropout_type=dropout_type,
            act=act,
            norm=norm,
        )
        self.path1 = MSDCNNPath(
            spatial_dims, len(path_channels[0]), first_kernel_sizes[0], dropout_prob=dropout_probs[0], **common
        )
        self.path2 = MSDCNNPath(
            spatial_dims, len(path_channels[1]), first_kernel_sizes[1], dropout_prob=dropout_probs[1], **common
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.head = nn.Sequential(
            conv(self.path1.out_channels + self.path2.out_channels, head_channels, kernel_size=3, padding=1, bias=False),
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=head_channels),
            get_act_layer(name=act),
            conv(head_channels, out_channels, kernel_size=1),
        )
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = self.path1(torch.index_select(x, 1, self.path1_index))
        p2 = self.path2(torch.index_select(x, 1, self.path2_index))
        out = self.head(torch.cat([p1, p2], dim=1))
        if self.sigmoid:
            out = torch.sigmoid(out)
        return out
