"""DenseRAUnet: Ma and Zhang, "Automatic Calcium Scoring in Cardiac and Chest CT Using DenseRAUnet"
(Infervision, arXiv 2019), section 2.3 and Fig. 1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.networks.nets.densenet import DenseNet, _DenseBlock

from ctbundles.networks.blocks_dense_ra_unet import DecoderModule, ResidualAtrousUnit
from ctbundles.switches import require_bool

__all__ = ["DenseRAUnet"]


class DenseRAUnet(nn.Module):
    """DenseRAUnet for 2.5D coronary calcium segmentation (paper section 2.3, Fig. 1).

    The network takes ``in_channels`` (9) consecutive axial slices as channels and returns the
    segmentation logits of the centre slice (``out_channels`` = 2: background, calcium).

    Layout (DenseNet-121 encoder from MONAI, ``DenseNet.features``)::

        input (9, H, W)
        stem   conv7x7/2 + BN + ReLU          -> s0 (64, H/2)     first skip connection (-> EDB)
        stage1 maxpool/2 + dense block 1 (6)  -> s1 (256, H/4)    lateral 3 (-> RAU) -> decoder 3
        stage2 transition + dense block 2 (12)-> s2 (512, H/8)    lateral 2 (-> RAU) -> decoder 2
        stage3 transition + dense block 3 (24)-> s3 (1024, H/16)  lateral 1 (-> RAU) -> decoder 1
        stage4 transition + dense block 4 (16) + BN + ReLU -> (1024, H/32) bottleneck
        decoder 1..3: deconv x2, concat lateral, 2 x (conv3x3 + BN + ReLU), scSE   -> (128, H/4)
        head: deconv x2, concat first skip (through the EDB), conv3x3 + BN + ReLU  -> (64, H/2)
              deconv x2, conv3x3 + BN + ReLU, conv1x1                               -> (2, H)

    Choices where the paper's text leaves Fig. 1 open (documented in the bundle README): the three
    decoder modules bring the DenseNet-121 bottleneck (H/32) to H/4 using the skips of dense blocks
    3, 2, 1, each through a Residual Atrous Unit; the "first skip connection" is the shallowest one,
    the 64-channel stem features at H/2, which pass through the Extra Dense Block (a MONAI
    ``_DenseBlock`` of ``edb_layers`` layers) into the output head; decoder widths (512, 256, 128)
    and head widths (64, 32) are not printed in the paper. Inputs whose size is not a multiple of 32
    are padded (replicate) and the output is cropped back, so any H, W >= 1 works. Weights are
    Gaussian initialised (He normal for convolutions), as the paper trains "from scratch and
    initialized by the Gauss method".

    Args:
        spatial_dims: number of spatial dimensions; the paper's network is 2D (2.5D input).
        in_channels: number of stacked slices; 9 in the paper.
        out_channels: number of output classes; 2 (background, calcium).
        init_features: DenseNet-121 stem features (64).
        growth_rate: DenseNet-121 growth rate k (32).
        block_config: DenseNet-121 layers per dense block (6, 12, 24, 16).
        bn_size: DenseNet bottleneck factor (4).
        decoder_channels: output channels of the three decoder modules, deep to shallow.
        head_channels: channels of the two output-head stages (H/2 and H).
        use_rau: Residual Atrous Units as the lateral connections (identity skips otherwise).
        use_edb: the Extra Dense Block in the first skip connection (identity otherwise).
        use_scse: scSE block after each decoder module (identity otherwise).
        rau_dilations: dilation rates of the RAU branches, (2, 4, 8) in the paper.
        edb_layers: dense layers in the Extra Dense Block (not printed in the paper; 4).
        dropout_prob: dropout after each dense layer of the encoder (0, none in the paper).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 9,
        out_channels: int = 2,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        decoder_channels: Sequence[int] = (512, 256, 128),
        head_channels: Sequence[int] = (64, 32),
        use_rau: bool = True,
        use_edb: bool = True,
        use_scse: bool = True,
        rau_dilations: Sequence[int] = (2, 4, 8),
        edb_layers: int = 4,
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if len(block_config) != 4:
            raise ValueError(f"block_config must list the four DenseNet blocks, got {block_config}")
        if len(decoder_channels) != 3:
            raise ValueError(f"decoder_channels must give the three decoder modules, got {decoder_channels}")
        if len(head_channels) != 2:
            raise ValueError(f"head_channels must give two values, got {head_channels}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_rau = use_rau = require_bool(use_rau, "use_rau", "DenseRAUnet")
        self.use_edb = use_edb = require_bool(use_edb, "use_edb", "DenseRAUnet")
        self.use_scse = use_scse = require_bool(use_scse, "use_scse", "DenseRAUnet")
        self.block_config = tuple(int(b) for b in block_config)
        self.growth_rate = int(growth_rate)
        self.init_features = int(init_features)
        self.divisor = 32

        backbone = DenseNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, init_features=init_features,
            growth_rate=growth_rate, block_config=block_config, bn_size=bn_size, dropout_prob=dropout_prob,
        )
        f = backbone.features
        self.stem = nn.Sequential(f.conv0, f.norm0, f.relu0)
        self.stage1 = nn.Sequential(f.pool0, f.denseblock1)
        self.stage2 = nn.Sequential(f.transition1, f.denseblock2)
        self.stage3 = nn.Sequential(f.transition2, f.denseblock3)
        self.stage4 = nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU())

        # published DenseNet-121 channel counts follow from the configuration
        c0 = init_features
        c1 = c0 + block_config[0] * growth_rate
        c2 = c1 // 2 + block_config[1] * growth_rate
        c3 = c2 // 2 + block_config[2] * growth_rate
        c4 = c3 // 2 + block_config[3] * growth_rate
        self.encoder_channels = (c0, c1, c2, c3, c4)

        def lateral(ch: int) -> nn.Module:
            return ResidualAtrousUnit(spatial_dims, ch, dilations=rau_dilations) if use_rau else nn.Identity()

        self.lateral1 = lateral(c3)
        self.lateral2 = lateral(c2)
        self.lateral3 = lateral(c1)
        self.edb: nn.Module = (
            _DenseBlock(spatial_dims, layers=edb_layers, in_channels=c0, bn_size=bn_size, growth_rate=growth_rate,
                        dropout_prob=0.0)
            if use_edb
            else nn.Identity()
        )
        first_skip = c0 + edb_layers * growth_rate if use_edb else c0

        d1, d2, d3 = (int(c) for c in decoder_channels)
        self.decoder1 = DecoderModule(spatial_dims, c4, c3, d1, use_scse=use_scse)
        self.decoder2 = DecoderModule(spatial_dims, d1, c2, d2, use_scse=use_scse)
        self.decoder3 = DecoderModule(spatial_dims, d2, c1, d3, use_scse=use_scse)

        h1, h2 = (int(c) for c in head_channels)
        self.head_up1 = Convolution(
            spatial_dims, d3, h1, strides=2, kernel_size=2, padding=0, output_padding=0, is_transposed=True,
            conv_only=True,
        )
        self.head_conv1 = Convolution(
            spatial_dims, h1 + first_skip, h1, kernel_size=3, adn_ordering="NA", act="relu", norm="batch", bias=False
        )
        self.head_up2 = Convolution(
            spatial_dims, h1, h2, strides=2, kernel_size=2, padding=0, output_padding=0, is_transposed=True,
            conv_only=True,
        )
        self.head_conv2 = Convolution(
            spatial_dims, h2, h2, kernel_size=3, adn_ordering="NA", act="relu", norm="batch", bias=False
        )
        self.classifier = Conv[Conv.CONV, spatial_dims](h2, out_channels, kernel_size=1)

        self._init_gaussian()

    def _init_gaussian(self) -> None:
        """Gaussian (He normal) initialisation of every (de)convolution; BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                              nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pads: list[int] = []
        needs_pad = False
        for i in range(len(spatial) - 1, -1, -1):
            extra = (self.divisor - spatial[i] % self.divisor) % self.divisor
            pads += [0, extra]
            if extra > 0:
                needs_pad = True
        if needs_pad:
            x = F.pad(x, pads, mode="replicate")

        s0 = self.stem(x)
        s1 = self.stage1(s0)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        y = self.stage4(s3)

        y = self.decoder1(y, self.lateral1(s3))
        y = self.decoder2(y, self.lateral2(s2))
        y = self.decoder3(y, self.lateral3(s1))

        y = self.head_conv1(torch.cat([self.head_up1(y), self.edb(s0)], dim=1))
        y = self.head_conv2(self.head_up2(y))
        y = self.classifier(y)

        if needs_pad:
            if len(spatial) == 2:
                y = y[:, :, : spatial[0], : spatial[1]]
            elif len(spatial) == 3:
                y = y[:, :, : spatial[0], : spatial[1], : spatial[2]]
            else:
                y = y[:, :, : spatial[0]]
        return y
