"""Attention blocks for convolutional feature maps (written here: no maintained library has them
in the exact form the seed project used).

- ``LinearAttention2D`` / ``BoTBlock(attention="linear")``: multi-head linear attention,
  Katharopoulos et al. 2020, "Transformers are RNNs" (https://arxiv.org/abs/2006.16236), with the
  feature map ``phi(x) = elu(x) + 1`` (the seed docs call it ReLU; the seed code uses elu+1).
- ``SoftmaxAttention2D`` / ``BoTBlock(attention="softmax")``: the Bottleneck Transformer block,
  Srinivas et al. 2021 (https://arxiv.org/abs/2101.11605), computed with
  ``F.scaled_dot_product_attention``.
- ``CoordAttention`` / ``CABlock``: Coordinate Attention, Hou et al. 2021
  (https://arxiv.org/abs/2103.02907).
- ``ECA``: Efficient Channel Attention, Wang et al. 2020 (https://arxiv.org/abs/1910.03151).

Both attention variants add a fixed 2D sinusoidal (absolute) position encoding to queries and keys;
the seed docs call it "relative", which it is not.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_position_2d(channels: int, height: int, width: int, device=None,
                           dtype=torch.float32) -> torch.Tensor:
    """Fixed 2D sine/cosine encoding, shape ``(channels, height, width)``.

    Half of the channels encode the row, half the column (as in DETR's ``PositionEmbeddingSine``).
    Computed on the fly so any input resolution works.
    """
    if channels % 4:
        raise ValueError(f"channels must be divisible by 4 for 2D sin/cos encoding, got {channels}")
    quarter = channels // 4
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / quarter))                       # quarter
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq   # H, quarter
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq    # W, quarter
    pe_y = torch.cat([ys.sin(), ys.cos()], dim=1).T[:, :, None].expand(-1, height, width)
    pe_x = torch.cat([xs.sin(), xs.cos()], dim=1).T[:, None, :].expand(-1, height, width)
    return torch.cat([pe_y, pe_x], dim=0).to(dtype)                          # C, H, W


class _QKV2D(nn.Module):
    """1x1-conv q/k/v projections (no bias) with position encoding added to q and k."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.k = nn.Conv2d(dim, dim, 1, bias=False)
        self.v = nn.Conv2d(dim, dim, 1, bias=False)

    def project(self, x: torch.Tensor):
        """x: (B, C, H, W) -> q, k, v each (B, heads, N, head_dim) with N = H*W."""
        b, c, h, w = x.shape
        pos = sinusoidal_position_2d(c, h, w, device=x.device, dtype=x.dtype)
        q, k, v = self.q(x) + pos, self.k(x) + pos, self.v(x)

        def split(t):  # B, C, H, W -> B, heads, N, head_dim
            return t.reshape(b, self.heads, self.head_dim, h * w).transpose(2, 3)

        return split(q), split(k), split(v)

    @staticmethod
    def merge(out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, heads, N, head_dim) -> (B, C, H, W)."""
        b, heads, n, d = out.shape
        return out.transpose(2, 3).reshape(b, heads * d, h, w)


class LinearAttention2D(_QKV2D):
    """Multi-head linear attention over the H*W positions of a feature map.

    ``out = phi(q) (phi(k)^T v) / (phi(q) . sum_n phi(k_n))`` with ``phi = elu + 1`` and q scaled by
    ``1/sqrt(head_dim)``: O(N d^2) time and O(d^2) extra memory instead of O(N^2).

    Args:
        dim: channels C of the input (and output); must be divisible by ``heads``.
        heads: number of heads; each head has ``dim // heads`` channels.
        eps: floor of the normaliser. The product is computed in fp32 even under autocast: the
            seed's 1e-6 clamp underflows in fp16.
    """

    def __init__(self, dim: int, heads: int = 4, eps: float = 1e-6) -> None:
        super().__init__(dim, heads)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: B, C, H, W
        h, w = x.shape[-2:]
        q, k, v = self.project(x)                                  # B, heads, N, d
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.elu(q.float() * self.head_dim ** -0.5) + 1.0
            k = F.elu(k.float()) + 1.0
            kv = torch.einsum("bhnd,bhne->bhde", k, v.float())     # B, heads, d, d
            norm = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2))  # B, heads, N
            out = torch.einsum("bhnd,bhde->bhne", q, kv) / norm.clamp_min(self.eps)[..., None]
        return self.merge(out.to(x.dtype), h, w)                   # B, C, H, W


class SoftmaxAttention2D(_QKV2D):
    """Multi-head softmax self-attention over H*W positions (``F.scaled_dot_product_attention``,
    which picks a fused kernel where one exists). Same projections and position encoding as
    :class:`LinearAttention2D`, so the two differ only in the attention itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: B, C, H, W
        h, w = x.shape[-2:]
        q, k, v = self.project(x)                                  # B, heads, N, d
        return self.merge(F.scaled_dot_product_attention(q, k, v), h, w)


class BoTBlock(nn.Module):
    """Bottleneck-Transformer block as in the seed project.

    ``x -> 1x1 conv (C -> C/4) -> ReLU -> attention -> 1x1 conv (C/4 -> C) -> + x -> ReLU``.
    The seed has no BatchNorm here; the reduced width ``C/4`` keeps the attention cheap.

    Args:
        channels: C of the input/output feature map.
        heads: attention heads (``C/4`` must be divisible by ``4 * heads`` for the 2D encoding).
        attention: ``"linear"`` or ``"softmax"``.
    """

    def __init__(self, channels: int, heads: int = 4, attention: str = "linear") -> None:
        super().__init__()
        inner = channels // 4
        self.reduce = nn.Conv2d(channels, inner, 1)
        attn_cls = {"linear": LinearAttention2D, "softmax": SoftmaxAttention2D}[attention]
        self.attn = attn_cls(inner, heads)
        self.expand = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, H, W -> B, C, H, W
        y = self.expand(self.attn(F.relu(self.reduce(x))))
        return F.relu(x + y)


class CoordAttention(nn.Module):
    """Coordinate Attention (Hou et al. 2021): direction-aware channel attention.

    Pools over W and over H separately, encodes both with a shared 1x1 conv to
    ``mip = max(8, C // reduction)`` channels + BN + ReLU, splits, and turns each half into a
    sigmoid gate. Convs have no bias (their outputs feed BN or a gate; this is also how the seed's
    parameter count comes out).
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv_h = nn.Conv2d(mip, channels, 1, bias=False)
        self.conv_w = nn.Conv2d(mip, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, H, W
        h, w = x.shape[-2:]
        pool_h = x.mean(dim=3, keepdim=True)                       # B, C, H, 1
        pool_w = x.mean(dim=2, keepdim=True).transpose(2, 3)       # B, C, W, 1
        y = F.relu(self.bn1(self.conv1(torch.cat([pool_h, pool_w], dim=2))))  # B, mip, H+W, 1
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))                      # B, C, H, 1
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))      # B, C, 1, W
        return x * a_h * a_w


class CABlock(nn.Module):
    """``x -> 1x1 conv (no bias) -> BN -> ReLU -> CoordAttention -> + x`` (seed's CA block)."""

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.ca = CoordAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, H, W -> B, C, H, W
        return x + self.ca(F.relu(self.bn(self.conv(x))))


class ECA(nn.Module):
    """Efficient Channel Attention: GAP -> Conv1d over channels (k=3, no bias) -> sigmoid gate."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, H, W
        y = x.mean(dim=(2, 3))[:, None, :]                        # B, 1, C
        gate = torch.sigmoid(self.conv(y))[:, 0, :, None, None]   # B, C, 1, 1
        return x * gate
