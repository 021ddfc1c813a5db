"""YOLOv8-style building blocks, backbone and PAN neck, written here (ultralytics is AGPL-3.0, so it
is neither imported nor copied; the architecture itself is public: Jocher et al., Ultralytics YOLOv8,
2023, https://github.com/ultralytics/ultralytics, and the C2f/SPPF/PAN ideas before it: CSPNet,
Wang et al. 2019, https://arxiv.org/abs/1911.11929; SPP, He et al. 2014; PANet, Liu et al. 2018,
https://arxiv.org/abs/1803.01534).

With ``width=0.25, depth=0.33, max_channels=1024`` (the "n" scale) :class:`YOLOv8Backbone` +
:class:`YOLOv8PAN` have exactly the layer widths and depths of ultralytics' ``yolov8n.yaml`` layers
0-21 (everything but the Detect head): 2,259,536 parameters (tested).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def scaled_channels(c: int, width: float, max_channels: int) -> int:
    """Channel count of a yaml "c" at a model scale (ultralytics' rule: cap, scale, round up to 8)."""
    return make_divisible(min(c, max_channels) * width, 8)


def scaled_depth(n: int, depth: float) -> int:
    return max(round(n * depth), 1) if n > 1 else n


class ConvBNSiLU(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, "same" padding for odd kernels."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        # eps/momentum as YOLOv8 trains them (PyTorch's momentum 0.1 is 0.03 there)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvBNSiLU with an optional residual (only when shapes agree)."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = ConvBNSiLU(c_in, hidden, 3)
        self.cv2 = ConvBNSiLU(hidden, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions (YOLOv8): split the 1x1 output in two halves, run ``n``
    bottlenecks on the second half keeping every intermediate output, concatenate all, fuse by 1x1.
    Keeping every bottleneck's output gives the richer gradient flow that replaced C3 in YOLOv8."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = ConvBNSiLU(c_in, 2 * self.hidden, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.hidden, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, self.hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).chunk(2, dim=1))        # 2 x (B, h, H, W)
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))          # B, c_out, H, W


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k max-pools equal pools of k, 2k-1, 3k-2."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNSiLU(c_in, hidden, 1)
        self.cv2 = ConvBNSiLU(hidden * 4, c_out, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], dim=1))


class YOLOv8Backbone(nn.Module):
    """CSPDarknet of YOLOv8 (yaml layers 0-9). Input ``(B, 3, H, W)`` with H, W multiples of 32;
    returns P3, P4, P5 at strides 8, 16, 32 with :attr:`channels` channels."""

    def __init__(self, width: float = 0.25, depth: float = 0.33, max_channels: int = 1024) -> None:
        super().__init__()
        c = [scaled_channels(v, width, max_channels) for v in (64, 128, 256, 512, 1024)]
        n3, n6 = scaled_depth(3, depth), scaled_depth(6, depth)
        self.stem = nn.Sequential(ConvBNSiLU(3, c[0], 3, 2), ConvBNSiLU(c[0], c[1], 3, 2), C2f(c[1], c[1], n3, True))
        self.stage3 = nn.Sequential(ConvBNSiLU(c[1], c[2], 3, 2), C2f(c[2], c[2], n6, True))
        self.stage4 = nn.Sequential(ConvBNSiLU(c[2], c[3], 3, 2), C2f(c[3], c[3], n6, True))
        self.stage5 = nn.Sequential(ConvBNSiLU(c[3], c[4], 3, 2), C2f(c[4], c[4], n3, True), SPPF(c[4], c[4], 5))
        self.channels = (c[2], c[3], c[4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage3(self.stem(x))     # B, c3, H/8, W/8
        p4 = self.stage4(p3)               # B, c4, H/16, W/16
        p5 = self.stage5(p4)               # B, c5, H/32, W/32
        return p3, p4, p5


class YOLOv8PAN(nn.Module):
    """PAN-FPN neck of YOLOv8 (yaml layers 10-21): top-down (upsample + concat + C2f), then
    bottom-up (stride-2 conv + concat + C2f). Outputs N3, N4, N5 with the input's channel counts."""

    def __init__(self, channels: tuple[int, int, int], depth: float = 0.33) -> None:
        super().__init__()
        c3, c4, c5 = channels
        n = scaled_depth(3, depth)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = C2f(c5 + c4, c4, n)        # layer 12
        self.top3 = C2f(c4 + c3, c3, n)        # layer 15
        self.down3 = ConvBNSiLU(c3, c3, 3, 2)  # layer 16
        self.bottom4 = C2f(c3 + c4, c4, n)     # layer 18
        self.down4 = ConvBNSiLU(c4, c4, 3, 2)  # layer 19
        self.bottom5 = C2f(c4 + c5, c5, n)     # layer 21
        self.channels = channels

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor):
        t4 = self.top4(torch.cat([self.up(p5), p4], 1))          # B, c4, H/16, W/16
        n3 = self.top3(torch.cat([self.up(t4), p3], 1))          # B, c3, H/8, W/8
        n4 = self.bottom4(torch.cat([self.down3(n3), t4], 1))    # B, c4, H/16, W/16
        n5 = self.bottom5(torch.cat([self.down4(n4), p5], 1))    # B, c5, H/32, W/32
        return n3, n4, n5
