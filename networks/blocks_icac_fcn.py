"""Building blocks of the ICAC 3D FCN (Bortsova et al., MICCAI 2017, Sec. 2.1 and 2.3, Fig. 1).

Every convolution is *valid* (no padding), so a block made of two 3x3x3 convolutions shrinks its
input by two voxels on each side; the residual shortcut is cropped by the same amount before the
addition (the paper's Fig. 1 omits these cropping layers "for the sake of simplicity").
"""

from __future__ import annotations

import torch
from torch import nn

DROPOUT_POSITIONS = ("first_conv", "second_conv", "addition")


def center_crop_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Crop the spatial axes (2, 3, 4) of ``x`` symmetrically (extra voxel at the end) to ``size``."""
    lo0 = (x.shape[2] - size[0]) // 2
    lo1 = (x.shape[3] - size[1]) // 2
    lo2 = (x.shape[4] - size[2]) // 2
    return x[:, :, lo0 : lo0 + size[0], lo1 : lo1 + size[1], lo2 : lo2 + size[2]]


class PreActConv(nn.Sequential):
    """BN -> ReLU -> valid 3D convolution (the pre-activation order of He et al., ECCV 2016).

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: convolution kernel (3 ints).
        stride: convolution stride (3 ints); a strided convolution is the paper's downsampling.
        norm: put BN + ReLU in front of the convolution (False for the very first layer on the image).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(3, 3, 3), stride=(1, 1, 1), norm: bool = True):
        layers: list[nn.Module] = []
        if norm:
            layers += [nn.BatchNorm3d(in_channels), nn.ReLU(inplace=False)]
        layers.append(nn.Conv3d(in_channels, out_channels, tuple(kernel_size), stride=tuple(stride), padding=0))
        super().__init__(*layers)


class ICACBlock(nn.Module):
    """A plain or residual block of the ICAC FCN (Bortsova et al. 2017, Sec. 2.1 and 2.3, Fig. 1).

    Layer order (both variants): ``BN -> ReLU -> conv3x3x3 -> BN -> ReLU -> conv3x3x3``; the residual
    variant adds the input, cropped by 2 voxels per side, to the result (pre-activation ResNet,
    He et al. 2016, the order the paper says it uses). The plain variant is the same sequence
    without the addition, so that the ablation "plain vs residual" changes only the skip connection.

    Dropout (at most one layer per block; it never precedes BN):
        - ``"first_conv"``: after the first BN-ReLU, right before the first convolution;
        - ``"second_conv"``: after the second BN-ReLU, right before the second convolution;
        - ``"addition"``: on the output of the second convolution, before the addition (residual);
          for a plain block, on the block output (where the addition would be).

    Args:
        channels: feature maps in and out.
        residual: residual (True) or plain (False) block.
        dropout: dropout probability (0 = no dropout layer).
        dropout_position: one of ``DROPOUT_POSITIONS``.
    """

    def __init__(self, channels: int, residual: bool = True, dropout: float = 0.0, dropout_position: str = "addition"):
        super().__init__()
        if dropout_position not in DROPOUT_POSITIONS:
            raise ValueError(f"dropout_position must be one of {DROPOUT_POSITIONS}, got {dropout_position!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {dropout}")
        self.residual = residual
        self.dropout_p = float(dropout)
        self.dropout_position = dropout_position
        self.act1 = nn.Sequential(nn.BatchNorm3d(channels), nn.ReLU(inplace=False))
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=0)
        self.act2 = nn.Sequential(nn.BatchNorm3d(channels), nn.ReLU(inplace=False))
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=0)
        p = self.dropout_p
        self.drop1 = nn.Dropout(p) if p > 0 and dropout_position == "first_conv" else nn.Identity()
        self.drop2 = nn.Dropout(p) if p > 0 and dropout_position == "second_conv" else nn.Identity()
        self.drop3 = nn.Dropout(p) if p > 0 and dropout_position == "addition" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.drop1(self.act1(x)))
        out = self.drop3(self.conv2(self.drop2(self.act2(out))))
        if self.residual:
            out = out + x[:, :, 2:-2, 2:-2, 2:-2]
        return out
