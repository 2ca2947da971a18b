"""Stage 1 of the orCaScore cascade: the modified U-Net that segments the heart region of interest.

Araújo et al., "A Cascade Approach for Automatic Segmentation of Coronary Arteries Calcification in
Computed Tomography Images Using Deep Learning", Sect. 3.2.1 (the modified U-Net of Yoshida et al.,
ref. [6]: U-Net with batch normalization after every convolution).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import BasicUNet

__all__ = ["OrcaScoreHeartUNet"]


class OrcaScoreHeartUNet(BasicUNet):
    """Modified U-Net for the heart ROI (Araújo et al., Sect. 3.2.1; Yoshida et al. 2021).

    Built on MONAI :class:`~monai.networks.nets.BasicUNet`: every encoder block is two
    (3x3 convolution, batch normalization, ReLU) units followed by 2x2 max-pooling, the number of
    filters doubles per block from 64 to 1024, every decoder block up-samples with a 2x2
    transposed convolution of stride 2, concatenates the matching encoder block and applies two
    3x3 convolution units. The last layer maps to ``out_channels`` at the input resolution
    (a 1x1 convolution; Sect. 3.2.1 only says a transposed convolution returns an image of the input's size, and a
    stride-1 transposed convolution with a 1x1 kernel, this project's reading, is the same operation).

    Args:
        spatial_dims: number of spatial dimensions; the paper works on 2D axial slices (2).
        in_channels: input channels; one histogram-matched CT slice (1).
        out_channels: output channels; background and heart (2). Use 1 with a sigmoid loss.
        features: filters of the five encoder levels and of the last decoder level; the paper's
            64, 128, 256, 512, 1024 (decoder ends at 64).
        act: activation; ReLU as in the paper.
        norm: normalization after every convolution; batch normalization as in the paper.
        bias: whether the convolutions have a bias term.
        dropout: dropout rate; the paper uses none (0.0).
        upsample: up-sampling mode; "deconv" is the paper's 2x2 transposed convolution.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (64, 128, 256, 512, 1024, 64),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = ("batch", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ) -> None:
        if len(features) != 6:
            raise ValueError(f"features must give 6 filter counts (5 encoder levels + last decoder), got {features}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(features),
            act=act,
            norm=norm,
            bias=bias,
            dropout=dropout,
            upsample=upsample,
        )
