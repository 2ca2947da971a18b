"""The deeply supervised 3D FCN for intracranial carotid artery calcification (ICAC) segmentation.

Bortsova G., van Tulder G., Dubost F., Peng T., Navab N., van der Lugt A., Bos D., de Bruijne M.,
"Segmentation of Intracranial Arterial Calcification with Deeply Supervised Residual Dropout
Networks", MICCAI 2017 (``/work/shared/papers/icac_3d_fcn_deep_supervision.txt``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from ctbundles.networks.blocks_icac_fcn import DROPOUT_POSITIONS, ICACBlock, PreActConv
from ctbundles.switches import require_bool

__all__ = ["ICACFCN", "DEFAULT_DROPOUT"]

#: Dropout probabilities of blocks 1..8 (paper Sec. 3: blocks 4-8 with [0.3, 0.3, 0.4, 0.4, 0.5]).
DEFAULT_DROPOUT = (0.0, 0.0, 0.0, 0.3, 0.3, 0.4, 0.4, 0.5)

# Per-axis layer plan (in-plane axes x, y share one plan; z has its own). Each entry is
# ("conv", kernel, stride), ("up", factor) or ("skip", level) / ("tap", name) markers.
# Blocks are two 3x3x3 valid convolutions. The plan is the single source of truth for the
# geometry helpers below and for the modules built in ``ICACFCN.__init__``.
_DOWN1 = (3, 3, 1)  # kernel of the first strided convolution (x, y, z)
_DOWN2 = (2, 2, 1)  # kernel of the second strided convolution
_STRIDE = (2, 2, 1)  # both downsamplings: 2 in-plane, 1 along z ("less downsampling along z")


def _plan(axis: int) -> list[tuple]:
    k1, k2, s = _DOWN1[axis], _DOWN2[axis], _STRIDE[axis]
    block = [("conv", 3, 1), ("conv", 3, 1)]
    plan: list[tuple] = [("conv", 3, 1), ("conv", 3, 1)]  # stem: two 3x3x3 convolutions
    plan += block + [("save", 0)]  # block 1 -> skip of level 0
    plan += [("conv", k1, s)] + block + [("tap", 2), ("save", 1)]  # down 1, block 2
    plan += [("conv", k2, s)]  # down 2
    plan += block + [("tap", 3)] + block + [("tap", 4)] + block + [("tap", 5)]  # blocks 3, 4, 5
    plan += [("up", s), ("concat", 1)] + block + [("tap", 6)]  # up, concat, (1x1x1 fuse), block 6
    plan += [("up", s), ("concat", 0)] + block + [("tap", 7)] + block  # up, concat, blocks 7, 8
    return plan


def _trace(axis: int, n: int | None = None) -> dict:
    """Follow one axis through the network.

    Tracks the nominal centre of voxel 0 and the spacing between voxel centres (``o + j * i``, in
    input voxels) and, when ``n`` is given, the number of voxels. A valid convolution with kernel
    ``k`` and stride ``s`` moves the centre by ``j (k - 1) / 2`` and multiplies ``j`` by ``s``;
    nearest-neighbour upsampling by ``f`` replaces each voxel by ``f`` voxels spaced ``j / f``.
    Returns the concatenation crops, the auxiliary-head crops and the output geometry.
    """
    o, j = Fraction(0), Fraction(1)
    size = n
    saved: dict[int, tuple] = {}
    taps: dict[int, tuple] = {}
    concat_lo: dict[int, int] = {}
    for op in _plan(axis):
        kind = op[0]
        if kind == "conv":
            _, k, s = op
            o += j * Fraction(k - 1, 2)
            j *= s
            if size is not None:
                size = (size - k) // s + 1
                if size < 1:
                    raise ValueError(f"input size {n} along axis {axis} is too small for the ICAC FCN")
        elif kind == "up":
            f = op[1]
            o -= j * Fraction(f - 1, 2 * f)
            j /= f
            if size is not None:
                size *= f
        elif kind == "save":
            saved[op[1]] = (o, j, size)
        elif kind == "tap":
            taps[op[1]] = (o, j, size)
        elif kind == "concat":
            so, sj, ssize = saved[op[1]]
            lo = math.floor((o - so) / sj)
            concat_lo[op[1]] = lo
            if size is not None and ssize < lo + size:
                raise ValueError(f"input size {n} along axis {axis} is too small for the ICAC FCN skip at level {op[1]}")
    out_lo = math.floor(o + Fraction(1, 2))  # input voxel aligned with output voxel 0 (round half up)
    tap_lo: dict[int, int] = {}
    for name, (to, tj, tsize) in taps.items():
        up_o = to - (tj - 1) / 2  # centre of voxel 0 after nearest upsampling by tj
        lo = math.floor(o - up_o + Fraction(1, 2)) if o != up_o else 0
        tap_lo[name] = lo
        if size is not None and tsize * int(tj) < lo + size:
            raise ValueError(f"input size {n} along axis {axis} is too small for auxiliary head {name}")
    return {"concat_lo": concat_lo, "tap_lo": tap_lo, "tap_scale": {k: int(v[1]) for k, v in taps.items()},
            "out_lo": out_lo, "out_size": size, "centre": o}


class _AuxHead(nn.Module):
    """Auxiliary classifier: BN -> ReLU -> 1x1x1 conv (-> BN), nearest upsampling, crop to the output."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int], crop: Sequence[int], logit_norm: bool):
        super().__init__()
        self.classifier = PreActConv(in_channels, out_channels, kernel_size=(1, 1, 1))
        self.norm = nn.BatchNorm3d(out_channels) if logit_norm else nn.Identity()
        self.scale = [int(s) for s in scale]
        self.crop = [int(c) for c in crop]

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        y = self.norm(self.classifier(x))
        if self.scale[0] != 1 or self.scale[1] != 1 or self.scale[2] != 1:
            y = y.repeat_interleave(self.scale[0], dim=2).repeat_interleave(self.scale[1], dim=3)
            y = y.repeat_interleave(self.scale[2], dim=4)
        c = self.crop
        return y[:, :, c[0] : c[0] + size[0], c[1] : c[1] + size[1], c[2] : c[2] + size[2]]


class ICACFCN(nn.Module):
    """Deeply supervised residual-dropout 3D FCN of Bortsova et al. (MICCAI 2017), Sec. 2, Fig. 1.

    Arrays are (batch, channel, X, Y, Z) with Z the longitudinal (slice) axis. The layer plan
    (documented in ``bundles/icac_ct_segmentation/docs/README.md``, "Network") is::

        stem      conv 3x3x3 (f0), BN-ReLU-conv 3x3x3 (f0)                     level 0
        block 1                                                                 level 0 -> skip 0
        down 1    BN-ReLU-conv 3x3x1, stride 2x2x1 (f1); block 2 [aux 1]        level 1 -> skip 1
        down 2    BN-ReLU-conv 2x2x1, stride 2x2x1 (f2); blocks 3, 4, 5 [aux 2-4] level 2
        up x2x2x1 (nearest), concat skip 1 (cropped), conv 1x1x1 (f1); block 6 [aux 5]
        up x2x2x1 (nearest), concat skip 0 (cropped), conv 1x1x1 (f0); block 7 [aux 6], block 8
        head      BN-ReLU-conv 1x1x1 (out_channels) -> BN (the paper's "BN, sigma")

    Every convolution is valid (no padding), so the output is smaller than the input:
    ``output_size(input_size)`` gives its size and ``border_lo`` the input voxel that output voxel
    0 is aligned with (``border(input_size)`` gives the voxels cropped on each side). Choices made
    where the text leaves Fig. 1 open, so that the published figures hold: 18 convolutions with a
    3-voxel extent along z and no downsampling along z give a receptive field of exactly
    1 + 2 x 18 = 37 slices; the in-plane strided kernels 3 then 2 with 2x nearest upsampling give
    exactly 85 voxels in-plane; the main path has 23 convolution layers (the paper: "24 layers").
    The receptive field is the same for every output voxel; nearest upsampling makes the output
    grid repeat with a period of ``size_multiple`` = (4, 4, 1) input voxels, so tiles placed at
    multiples of it reproduce the whole-volume prediction exactly.

    In training mode with ``deep_supervision`` the forward returns the main output and the six
    auxiliary outputs (nearest-upsampled and cropped to the main output's grid) stacked along
    dim 1, shape (B, 7, out_channels, *output_size), as MONAI's ``DynUNet`` does; in eval mode
    (or without deep supervision) it returns the main output (B, out_channels, *output_size).
    Outputs are logits (apply a sigmoid for one channel, a softmax for several).

    Args:
        in_channels: input channels (1: the CT).
        out_channels: output channels; 1 = the paper's single sigmoid unit (ICAC vs background).
        features: feature maps at resolution levels 0, 1, 2. The paper chose them to fit 8 GB of
            GPU memory and gives them only in Fig. 1; default (16, 32, 64).
        residual: residual blocks (True, the paper's best) or plain blocks (False, ablation).
        dropout: dropout probability of each of the eight blocks (0 = none); default: blocks 4-8
            with 0.3, 0.3, 0.4, 0.4, 0.5 (paper Sec. 3).
        dropout_position: "first_conv", "second_conv" or "addition" (paper Fig. 1, Table 2; the
            best and default: before the addition).
        deep_supervision: build the six auxiliary classifiers (on the outputs of blocks 2-7).
        logit_norm: batch normalisation on the classifier outputs before the sigmoid (Fig. 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (16, 32, 64),
        residual: bool = True,
        dropout: Sequence[float] = DEFAULT_DROPOUT,
        dropout_position: str = "addition",
        deep_supervision: bool = True,
        logit_norm: bool = True,
    ):
        super().__init__()
        residual = require_bool(residual, "residual", "ICACFCN")
        deep_supervision = require_bool(deep_supervision, "deep_supervision", "ICACFCN")
        logit_norm = require_bool(logit_norm, "logit_norm", "ICACFCN")
        if len(features) != 3:
            raise ValueError(f"features must give 3 numbers (levels 0, 1, 2), got {features}")
        if len(dropout) != 8:
            raise ValueError(f"dropout must give 8 probabilities (one per block), got {dropout}")
        if dropout_position not in DROPOUT_POSITIONS:
            raise ValueError(f"dropout_position must be one of {DROPOUT_POSITIONS}, got {dropout_position!r}")
        f0, f1, f2 = (int(f) for f in features)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features: tuple[int, int, int] = (f0, f1, f2)
        self.deep_supervision = deep_supervision
        traces = [_trace(a) for a in range(3)]
        self.concat_lo = [[traces[a]["concat_lo"][level] for a in range(3)] for level in (0, 1)]
        self.border_lo: tuple[int, int, int] = tuple(traces[a]["out_lo"] for a in range(3))
        self.size_multiple: tuple[int, int, int] = tuple(int(math.prod(_STRIDE[a] for _ in range(2))) for a in range(3))
        self.receptive_field: tuple[int, int, int] = (85, 85, 37)

        def block(i: int, ch: int) -> ICACBlock:
            return ICACBlock(ch, residual=residual, dropout=float(dropout[i - 1]), dropout_position=dropout_position)

        self.stem = nn.Sequential(PreActConv(in_channels, f0, norm=False), PreActConv(f0, f0))
        self.block1 = block(1, f0)
        self.down1 = PreActConv(f0, f1, kernel_size=_DOWN1, stride=_STRIDE)
        self.block2 = block(2, f1)
        self.down2 = PreActConv(f1, f2, kernel_size=_DOWN2, stride=_STRIDE)
        self.block3 = block(3, f2)
        self.block4 = block(4, f2)
        self.block5 = block(5, f2)
        self.fuse1 = nn.Conv3d(f2 + f1, f1, 1)
        self.block6 = block(6, f1)
        self.fuse0 = nn.Conv3d(f1 + f0, f0, 1)
        self.block7 = block(7, f0)
        self.block8 = block(8, f0)
        self.head = nn.Sequential(
            PreActConv(f0, out_channels, kernel_size=(1, 1, 1)), nn.BatchNorm3d(out_channels) if logit_norm else nn.Identity()
        )
        self.up_scale = [int(s) for s in _STRIDE]
        heads = []
        if deep_supervision:
            for tap, ch in zip((2, 3, 4, 5, 6, 7), (f1, f2, f2, f2, f1, f0)):
                scale = [traces[a]["tap_scale"][tap] for a in range(3)]
                crop = [traces[a]["tap_lo"][tap] for a in range(3)]
                heads.append(_AuxHead(ch, out_channels, scale, crop, logit_norm))
        self.heads = nn.ModuleList(heads)

    # ----------------------------------------------------------------------------------- geometry
    def output_size(self, input_size: Sequence[int]) -> tuple[int, int, int]:
        """Spatial size of the output for an input of spatial size ``input_size`` (X, Y, Z)."""
        return tuple(int(_trace(a, int(input_size[a]))["out_size"]) for a in range(3))

    def border(self, input_size: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Input voxels not covered by the output, (before, after) per axis, for ``input_size``.

        Output voxel ``i`` is aligned with input voxel ``border_lo + i``; ``before == border_lo``.
        """
        out = self.output_size(input_size)
        lo = self.border_lo
        hi = tuple(int(input_size[a]) - out[a] - lo[a] for a in range(3))
        return tuple(lo), hi

    def num_layers(self) -> int:
        """Convolution layers on the main path (auxiliary classifiers excluded): 23."""
        aux = sum(1 for h in self.heads for m in h.modules() if isinstance(m, nn.Conv3d))
        return sum(1 for m in self.modules() if isinstance(m, nn.Conv3d)) - aux

    # ------------------------------------------------------------------------------------ forward
    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        s = self.up_scale
        return x.repeat_interleave(s[0], dim=2).repeat_interleave(s[1], dim=3).repeat_interleave(s[2], dim=4)

    @staticmethod
    def _crop_like(skip: torch.Tensor, ref: torch.Tensor, lo: list[int]) -> torch.Tensor:
        n0, n1, n2 = ref.shape[2], ref.shape[3], ref.shape[4]
        return skip[:, :, lo[0] : lo[0] + n0, lo[1] : lo[1] + n1, lo[2] : lo[2] + n2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps: list[torch.Tensor] = []
        s0 = self.block1(self.stem(x))
        s1 = self.block2(self.down1(s0))
        taps.append(s1)
        y = self.block3(self.down2(s1))
        taps.append(y)
        y = self.block4(y)
        taps.append(y)
        y = self.block5(y)
        taps.append(y)
        y = self._upsample(y)
        y = self.fuse1(torch.cat([y, self._crop_like(s1, y, self.concat_lo[1])], dim=1))
        y = self.block6(y)
        taps.append(y)
        y = self._upsample(y)
        y = self.fuse0(torch.cat([y, self._crop_like(s0, y, self.concat_lo[0])], dim=1))
        y = self.block7(y)
        taps.append(y)
        out = self.head(self.block8(y))
        if self.training and self.deep_supervision:
            size = [out.shape[2], out.shape[3], out.shape[4]]
            outs = [out]
            for i, head in enumerate(self.heads):
                outs.append(head(taps[i], size))
            return torch.stack(outs, dim=1)
        return out
