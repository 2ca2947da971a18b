"""Building blocks of DenseRAUnet (Ma and Zhang, "Automatic Calcium Scoring in Cardiac and Chest CT
Using DenseRAUnet", section 2.3): the Residual Atrous Unit, the scSE block and the decoder module.

Each block reuses MONAI's ``Convolution`` (conv + BN + ReLU) and ``ChannelSELayer`` and could be
contributed back to ``monai.networks.blocks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.layers.factories import Conv

__all__ = ["ResidualAtrousUnit", "SpatialSELayer", "ChannelSpatialSELayer", "DecoderModule"]


class ResidualAtrousUnit(nn.Module):
    """Residual Atrous Unit (RAU), the lateral connection of DenseRAUnet (paper section 2.3, Fig. 1).

    Parallel dilated 3x3 convolutions (ASPP-like, one branch per rate, each conv + BN + ReLU) are
    concatenated (Inception-like), fused back to ``in_channels`` by a 1x1 convolution + BN, added to
    the input (the residual path) and passed through ReLU::

        x --+-- conv3x3 d=2 --+
            +-- conv3x3 d=4 --+-- concat -- conv1x1 + BN --(+)-- ReLU
            +-- conv3x3 d=8 --+                             |
            +-----------------------------------------------+

    Args:
        spatial_dims: number of spatial dimensions (2 for the paper's 2.5D network).
        in_channels: channels of the skip feature map (output has the same number).
        dilations: dilation rates of the parallel branches; the paper uses (2, 4, 8).
        branch_channels: output channels of each dilated branch; default ``in_channels // 4``
            (not given in the paper).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        dilations: Sequence[int] = (2, 4, 8),
        branch_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(dilations) < 1:
            raise ValueError("ResidualAtrousUnit needs at least one dilation rate")
        branch = int(branch_channels) if branch_channels is not None else max(in_channels // 4, 1)
        self.dilations = tuple(int(d) for d in dilations)
        self.branches = nn.ModuleList(
            [
                Convolution(
                    spatial_dims, in_channels, branch, kernel_size=3, dilation=d, adn_ordering="NA",
                    act="relu", norm="batch", bias=False,
                )
                for d in self.dilations
            ]
        )
        self.fuse = Convolution(
            spatial_dims, branch * len(self.dilations), in_channels, kernel_size=1, adn_ordering="N",
            act=None, norm="batch", bias=False,
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        return self.act(x + self.fuse(torch.cat(outs, dim=1)))


class SpatialSELayer(nn.Module):
    """Spatial squeeze and channel excitation (sSE) of Roy et al., MICCAI 2018: a 1x1 convolution to
    one channel and a sigmoid give a spatial map that rescales every channel.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class ChannelSpatialSELayer(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (scSE), Roy, Navab and Wachinger, MICCAI
    2018 (DenseRAUnet reference [14]): the element-wise sum of the channel SE (MONAI
    ``ChannelSELayer``) and the spatial SE outputs, the aggregation Roy et al. recommend.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
        r: channel reduction ratio of the cSE bottleneck (Roy et al. use 2).
    """

    def __init__(self, spatial_dims: int, in_channels: int, r: int = 2) -> None:
        super().__init__()
        self.cse = ChannelSELayer(spatial_dims, in_channels, r=r, acti_type_1="relu")
        self.sse = SpatialSELayer(spatial_dims, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cse(x) + self.sse(x)


class DecoderModule(nn.Module):
    """One DenseRAUnet decoder module (paper section 2.3): a 2x deconvolution of the deeper features,
    concatenation with the lateral (skip) features, two 3x3 convolutions each followed by BN and
    ReLU, then an optional scSE block.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the deeper feature map.
        skip_channels: channels of the lateral feature map (0 for none).
        out_channels: channels after the deconvolution and the two convolutions.
        use_scse: append a :class:`ChannelSpatialSELayer`; identity otherwise.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int, use_scse: bool = True
    ) -> None:
        super().__init__()
        self.up = Convolution(
            spatial_dims, in_channels, out_channels, strides=2, kernel_size=2, padding=0, output_padding=0,
            is_transposed=True, conv_only=True,
        )
        self.conv1 = Convolution(
            spatial_dims, out_channels + skip_channels, out_channels, kernel_size=3, adn_ordering="NA",
            act="relu", norm="batch", bias=False,
        )
        self.conv2 = Convolution(
            spatial_dims, out_channels, out_channels, kernel_size=3, adn_ordering="NA", act="relu", norm="batch",
            bias=False,
        )
        self.scse: nn.Module = ChannelSpatialSELayer(spatial_dims, out_channels) if use_scse else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        return self.scse(self.conv2(self.conv1(x)))
