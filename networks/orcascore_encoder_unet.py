"""Stages 2 and 3 of the orCaScore cascade: U-Net with a pre-defined encoder (EfficientNet / ResNet).

Araújo et al., "A Cascade Approach for Automatic Segmentation of Coronary Arteries Calcification in
Computed Tomography Images Using Deep Learning", Sect. 3.2.2 (calcification segmentation, EfficientNet-B0
encoder; the section says stages 2 and 3 both use it), Sect. 3.2.3 (false-positive removal on 96 x 96 crops) and
Sect. 4.3 / Table 6, where the EfficientNet-B5 encoder scores best for stage 3; encoder alternatives of Tables 3 and 6
(ResNet-34/50/101, EfficientNet-B0/B3/B5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

__all__ = ["OrcaScoreEncoderUNet", "ZeroPadShortcut", "PAPER_ENCODERS", "load_matching_weights"]

#: encoders compared in the paper's Tables 3 and 6, as MONAI FlexibleUNet backbone names
PAPER_ENCODERS = (
    "resnet34",
    "resnet50",
    "resnet101",
    "efficientnet-b0",
    "efficientnet-b3",
    "efficientnet-b5",
)


class ZeroPadShortcut(nn.Module):
    """Parameter-free ResNet shortcut (He et al. 2016, option A): strided subsampling + zero channels.

    The same computation as MONAI ``ResNet._downsample_basic_block`` (average pooling with a 1x1
    kernel and the block's stride, then zero-padding of the extra output channels), as a module so
    that ``torch.jit.script`` can compile it: MONAI stores that shortcut as a ``functools.partial``,
    which TorchScript cannot convert (monai 1.6.1, ResNet-10/18/34 backbones).

    Args:
        planes: output channels of the shortcut.
        stride: spatial subsampling step.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            out = x[:, :, :: self.stride, :: self.stride]
        else:
            out = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        shape = list(out.shape)
        shape[1] = self.planes - out.shape[1]
        zero_pads = torch.zeros(shape, dtype=out.dtype, device=out.device)
        return torch.cat([out, zero_pads], dim=1)


class OrcaScoreEncoderUNet(FlexibleUNet):
    """U-Net whose encoder is a pre-defined classification network (Araújo et al., Sects. 3.2.2-3.2.3).

    A MONAI :class:`~monai.networks.nets.FlexibleUNet` with the paper's choices: 2D slices, the
    EfficientNet-B0 encoder of the calcification stage by default (the false-positive stage uses
    ``backbone="efficientnet-b5"`` on 96 x 96 crops), decoder blocks that up-sample with a 2x2
    transposed convolution of stride 2 and concatenate the matching encoder features, and an output
    at the input resolution. No ImageNet weights are loaded (``pretrained=False``): they cannot be
    downloaded in this project, and the paper does not say whether it used them.

    ResNet-10/18/34 encoders are made scriptable by replacing MONAI's ``functools.partial`` shortcut
    with the equivalent :class:`ZeroPadShortcut` module; EfficientNet encoders script as they are
    (monai 1.6.1's memory-efficient swish is ``torch.nn.functional.silu``, so no
    ``set_swish(memory_efficient=False)`` switch is needed).

    Args:
        spatial_dims: number of spatial dimensions (2, axial slices).
        in_channels: input channels (1, the histogram-matched slice or crop).
        out_channels: output channels: 2 (background, calcium) as in the paper, or 4 (background,
            LAD incl. LM, LCX, RCA) for the per-artery output mode.
        backbone: FlexibleUNet encoder name; the paper's are listed in ``PAPER_ENCODERS``.
        decoder_channels: filters of the five decoder blocks.
        norm: normalization of the decoder convolutions.
        act: activation of the decoder convolutions.
        dropout: decoder dropout rate (the paper uses none).
        upsample: decoder up-sampling, "deconv" = the paper's 2x2 transposed convolution.
        pretrained: load ImageNet encoder weights (needs a download; False by default).
        encoder_bn_momentum: momentum (PyTorch convention) of the encoder's batch-norm running
            statistics, or None to keep the backbone's own (EfficientNet: 0.01, i.e. the TensorFlow/Keras decay
            0.99 of the original EfficientNet; ResNet: 0.1; the paper gives no value). With 0.01 the running statistics need a few
            hundred iterations to settle, so evaluation-mode outputs of a briefly trained network are
            meaningless (see the bundle README); short CPU trainings set 0.1.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "efficientnet-b0",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        pretrained: bool = False,
        encoder_bn_momentum: float | None = None,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=backbone,
            pretrained=pretrained,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=spatial_dims,
            norm=norm,
            act=act,
            dropout=dropout,
            upsample=upsample,
        )
        for module in self.encoder.modules():
            if isinstance(module, (ResNetBlock, ResNetBottleneck)):
                down = module.downsample
                if down is not None and not isinstance(down, nn.Module):
                    module.downsample = ZeroPadShortcut(planes=down.keywords["planes"], stride=down.keywords["stride"])
        if encoder_bn_momentum is not None:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = float(encoder_bn_momentum)


def load_matching_weights(network: nn.Module, path: str | None) -> int:
    """Copy every tensor of the state dict at ``path`` whose name and shape match ``network``'s (the rest
    keep their values); returns how many were copied (0 when ``path`` is ``None``).

    Used to start the stage-3 network from the trained stage-2 network (same encoder and decoder, a
    2-class head instead of 4 classes): a deviation of the synthetic recipe (docs/README.md).
    """
    if not path:
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = network.state_dict()
    matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matched:
        raise ValueError(f"{path}: no tensor matches the network's names and shapes")
    network.load_state_dict(matched, strict=False)
    return len(matched)
