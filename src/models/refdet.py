"""Reference-based (few-shot) detection in drone video: find the object shown in K reference photos.

Parts (DESIGN section 5):

* :class:`SupportEncoder`: a DINOv3 ViT-S/16 from timm (Simeoni et al. 2025, "DINOv3",
  https://arxiv.org/abs/2508.10104), its first ``freeze_layers`` blocks frozen. The frozen part's
  output depends only on the image, so it can be cached per (video, support view)
  (:class:`SupportCache`); the trainable blocks always run, so the prototypes receive gradients
  (the seed computed them under ``no_grad`` and never trained its projections).
* Prototypes: CLS token and mean patch token of every reference image, projected and averaged over
  the K references (prototypical networks, Snell et al. 2017, https://arxiv.org/abs/1703.05175).
* :class:`~src.models.layers.yolo.YOLOv8Backbone` + :class:`~src.models.layers.yolo.YOLOv8PAN` on
  the query frame (width 0.25, depth 0.33 = yolov8n's layers 0-21; random init, or ultralytics'
  yolov8n weights through :mod:`src.models.ultralytics_keys`).
* Fusion per scale, where the reference conditions the query features:
  :class:`PSALMFusion` (prototype-similarity + linear cross-attention from every query pixel to the
  support's patch tokens, Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236) or
  :class:`CHEAFFusion` (FiLM channel modulation by the prototype, Perez et al. 2018,
  https://arxiv.org/abs/1709.07871, plus a similarity map; cheaper). The seed's CHEAF never let the
  support reach the query; here a test checks that changing the reference changes the output.
* :class:`RefDetHead`: anchor-free decoupled head (YOLOv8): a DFL box branch (``reg_max`` bins,
  Li et al. 2020, https://arxiv.org/abs/2006.04388) and a classification branch whose logit is the
  scaled cosine similarity between each anchor's embedding and the prototype (learnable temperature
  and bias), trained on all anchors, background included.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torchvision.ops import nms

from src.errors import DataError
from src.losses.refdet import decode_boxes
from src.models.layers.yolo import ConvBNSiLU, YOLOv8Backbone, YOLOv8PAN
from src.models.timm_features import create_timm_model
from src.models.ultralytics_keys import load_detector_weights

STRIDES = (8, 16, 32)


class SupportCache:
    """LRU cache of the frozen part's support tokens, keyed by ``"video_id@view"``, bounded in MB.

    Only valid while the cached part is frozen (its output depends on the image alone); the model
    bypasses it otherwise. Hit and miss counts feed the log and ``metrics.json``.
    """

    def __init__(self, max_mb: float = 200.0) -> None:
        self.max_bytes = int(max_mb * 2 ** 20)
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        if key in self._items:
            old = self._items.pop(key)
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def reset_counts(self) -> tuple[int, int]:
        """(hits, misses) since the last reset; then zero them (per-epoch rates)."""
        counts = (self.hits, self.misses)
        self.hits = self.misses = 0
        return counts

    def __len__(self) -> int:
        return len(self._items)


class SupportEncoder(nn.Module):
    """timm ViT (DINOv3 by default) over the reference images, split at ``freeze_layers``.

    Args:
        timm_name: e.g. ``vit_small_patch16_dinov3`` (21.59M params; ``.lvd1689m`` weights).
        image_size: side of the (square, letterboxed) reference images.
        freeze_layers: the patch embedding and the first ``freeze_layers`` blocks get no gradient
            (all blocks: the final norm too). 0 trains everything and disables the cache.
    """

    def __init__(self, timm_name: str, image_size: int, freeze_layers: int, pretrained: bool = False,
                 pretrained_weights: str | None = None) -> None:
        super().__init__()
        self.vit = create_timm_model(timm_name, pretrained, pretrained_weights, num_classes=0, img_size=image_size)
        depth = len(self.vit.blocks)
        if not 0 <= freeze_layers <= depth:
            raise ValueError(f"freeze_layers must be in [0, {depth}] for {timm_name}, got {freeze_layers}")
        self.freeze_layers, self.depth = freeze_layers, depth
        self.dim, self.num_prefix = self.vit.embed_dim, self.vit.num_prefix_tokens
        self.patch = self.vit.patch_embed.patch_size[0]
        self.image_size = image_size
        if freeze_layers:
            frozen = [self.vit.patch_embed, self.vit.norm_pre, *self.vit.blocks[:freeze_layers]]
            if freeze_layers == depth:
                frozen.append(self.vit.norm)
            for module in frozen:
                module.requires_grad_(False)
            for name in ("cls_token", "reg_token", "pos_embed"):
                param = getattr(self.vit, name, None)
                if isinstance(param, nn.Parameter):
                    param.requires_grad_(False)

    @property
    def cacheable(self) -> bool:
        return self.freeze_layers > 0

    def _rope(self, grid: tuple[int, int]):
        rope = getattr(self.vit, "rope", None)
        return rope.get_embed(shape=list(grid)) if rope is not None else None

    def _blocks(self, x: torch.Tensor, blocks, grid) -> torch.Tensor:
        rope = self._rope(grid)
        kwargs = {"rope": rope} if rope is not None else {}
        for blk in blocks:
            x = blk(x, **kwargs)
        return x

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.patch, self.image_size // self.patch)

    def frozen_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, s, s) -> (N, T, D) after the frozen blocks (the cacheable part)."""
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = x[0] if isinstance(x, tuple) else x       # Eva returns (tokens, rope)
        x = vit.norm_pre(x)
        x = self._blocks(x, vit.blocks[:self.freeze_layers], self.grid)
        return vit.norm(x) if self.freeze_layers == self.depth else x

    def trainable_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_layers == self.depth:
            return x
        return self.vit.norm(self._blocks(x, self.vit.blocks[self.freeze_layers:], self.grid))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_layers:      # frozen blocks stay deterministic (no dropout/drop-path) for the cache
            for module in (self.vit.patch_embed, *self.vit.blocks[:self.freeze_layers]):
                module.train(False)
        return self


@dataclass
class SupportFeatures:
    """What the detector needs from a video's references; computed once per video at inference."""
    protos: list[torch.Tensor]       # per scale (V, C_s): fusion prototypes
    tokens: list[torch.Tensor]       # per scale (V, K * N, C_s): support patch tokens for attention
    embed: torch.Tensor              # (V, E) L2-normalized prototype in the head's embedding space


class PSALMFusion(nn.Module):
    """Prototype-Similarity Attention with Linear cost (PSALM): every query pixel attends to the
    support's patch tokens with linear attention (elu + 1 feature map, computed in fp32: the sums
    overflow/underflow in fp16), and the cosine similarity to the prototype is appended as a map.

    ``F' = F + conv1x1([attn(F, S), F * p, cos(F, p)])``: a residual, so an untrained fusion starts
    near the identity and the detector trains from the first step.
    """

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.kv = nn.Linear(channels, 2 * channels, bias=False)
        self.out = nn.Sequential(nn.Conv2d(2 * channels + 1, channels, 1, bias=False),
                                 nn.BatchNorm2d(channels, eps=1e-3, momentum=0.03), nn.SiLU(inplace=True))

    def forward(self, x: torch.Tensor, proto: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape                                           # proto: B, C; tokens: B, T, C
        h, d = self.heads, C // self.heads
        q = self.q(x).flatten(2).transpose(1, 2).reshape(B, H * W, h, d).transpose(1, 2)  # B, h, HW, d
        k, v = self.kv(tokens).chunk(2, dim=-1)
        k = k.reshape(B, -1, h, d).transpose(1, 2)                      # B, h, T, d
        v = v.reshape(B, -1, h, d).transpose(1, 2)
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = (F.elu(t.float()) + 1 if i < 2 else t.float() for i, t in enumerate((q, k, v)))
            kv = k.transpose(-2, -1) @ v                                # B, h, d, d
            norm = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1)     # B, h, HW, 1
            att = (q @ kv) / norm.clamp_min(1e-6)                       # B, h, HW, d
        att = att.to(x.dtype).transpose(1, 2).reshape(B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
        p = proto[:, :, None, None]
        sim = F.cosine_similarity(x, p.expand_as(x), dim=1)[:, None]    # B, 1, H, W
        return x + self.out(torch.cat([att, x * p, sim], dim=1))


class CHEAFFusion(nn.Module):
    """Channel-wise (FiLM) modulation by the prototype plus a prototype-similarity map:
    ``F' = F + conv3x3([F * (1 + tanh(g(p))) + b(p), cos(F, p)])``. No attention, so it is cheaper
    than PSALM; the support still conditions every output (the seed's CHEAF did not)."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.film = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.out = ConvBNSiLU(channels + 1, channels, 3)

    def forward(self, x: torch.Tensor, proto: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(proto)[:, :, None, None].chunk(2, dim=1)   # B, C, 1, 1 each
        sim = F.cosine_similarity(x, proto[:, :, None, None].expand_as(x), dim=1)[:, None]
        return x + self.out(torch.cat([x * (1 + torch.tanh(gamma)) + beta, sim], dim=1))


FUSIONS = {"psalm": PSALMFusion, "cheaf": CHEAFFusion}


class RefDetHead(nn.Module):
    """YOLOv8's decoupled anchor-free head with a prototype-similarity classifier.

    Per scale: box branch Conv3x3-Conv3x3-Conv1x1 to ``4 * reg_max`` DFL logits (YOLOv8's widths);
    class branch Conv3x3-Conv3x3-Conv1x1 to an ``embed_dim`` embedding. Logit of every anchor =
    ``exp(logit_scale) * cos(embedding, prototype) + bias``; the bias starts at a 1% prior so the
    many background anchors do not swamp the first steps (Lin et al. 2017, Focal Loss, section 4.1).
    """

    def __init__(self, channels: tuple[int, ...], embed_dim: int, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        c_box = max(16, channels[0] // 4, 4 * reg_max)
        c_cls = max(channels[0], embed_dim)
        self.box = nn.ModuleList(nn.Sequential(ConvBNSiLU(c, c_box, 3), ConvBNSiLU(c_box, c_box, 3),
                                               nn.Conv2d(c_box, 4 * reg_max, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(ConvBNSiLU(c, c_cls, 3), ConvBNSiLU(c_cls, c_cls, 3),
                                               nn.Conv2d(c_cls, embed_dim, 1)) for c in channels)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))    # exp(2.3) ~ 10: cosine in [-1, 1] -> logits +-10
        self.logit_bias = nn.Parameter(torch.tensor(-4.6))    # sigmoid(-4.6) ~ 0.01
        for seq in self.box:   # YOLOv8's bias init: equal mass on the DFL bins
            nn.init.constant_(seq[-1].bias, 1.0)

    def forward(self, feats: list[torch.Tensor], proto_embed: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats: per scale (B, C_s, H_s, W_s); proto_embed: (B, E) L2-normalized.

        Returns ``logits`` (B, A), ``dist`` (B, A, 4, reg_max), ``embed`` (B, A, E) normalized,
        where A = sum of H_s * W_s over the scales (scale-major, row-major inside a scale).
        """
        dists, embeds = [], []
        for x, box, cls in zip(feats, self.box, self.cls):
            B = x.shape[0]
            dists.append(box(x).flatten(2).transpose(1, 2).reshape(B, -1, 4, self.reg_max))
            embeds.append(cls(x).flatten(2).transpose(1, 2))
        embed = F.normalize(torch.cat(embeds, 1).float(), dim=-1)                  # B, A, E
        logits = (embed @ proto_embed.float()[:, :, None]).squeeze(-1) * self.logit_scale.exp() + self.logit_bias
        return {"logits": logits, "dist": torch.cat(dists, 1), "embed": embed}


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a few rows (V videos) indexed many times (B frames), as a one-hot matmul:
    the backward of ``x[index]`` with repeated indices is a scatter-add whose summation order
    varies between CPU threads, which made two runs with the same seed differ in the last bits."""
    onehot = F.one_hot(index, x.shape[0]).to(x.dtype)                       # B, V
    return (onehot @ x.reshape(x.shape[0], -1)).reshape(index.shape[0], *x.shape[1:])


@contextmanager
def _frozen_batchnorm(*modules: nn.Module):
    """BatchNorm layers in eval mode for a pass over the references: they are normalized with the
    query frames' running statistics, as every frame is at inference, and a batch of small, centred,
    plain-background photos does not pull those statistics away from the frames' (which made the
    validation of a trained model collapse). Gradients still flow."""
    norms = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(norms, modes):
            m.train(mode)


def make_anchors(sizes: list[tuple[int, int]], strides=STRIDES, offset: float = 0.5,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres in input pixels (A, 2) and their strides (A, 1), in the head's anchor order."""
    points, stride_list = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx, yy], -1).reshape(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=device))
    return torch.cat(points), torch.cat(stride_list)


class RefDetModel(nn.Module):
    """DINOv3 support encoder + YOLOv8n-style detector + fusion + prototype head.

    ``forward(images, support, query_video, support_keys=None)``:
        images (B, 3, S, S) query frames; support (V, K, 3, s, s) reference images of the V videos of
        the batch; query_video (B,) which video each frame belongs to. Returns the head's outputs plus
        ``anchors`` (A, 2) and ``strides`` (A, 1) in input pixels and ``proto`` (B, E).
    """

    def __init__(self, dino_model: str = "vit_small_patch16_dinov3", support_size: int = 224,
                 freeze_dino_layers: int = 6, width: float = 0.25, depth: float = 0.33, fusion: str = "psalm",
                 embed_dim: int = 128, reg_max: int = 16, fusion_heads: int = 4, pretrained: bool = False,
                 pretrained_weights: str | None = None, siamese: bool = True,
                 pretrained_detector: bool = False) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, got {fusion!r}")
        self.support_encoder = SupportEncoder(dino_model, support_size, freeze_dino_layers, pretrained,
                                              pretrained_weights)
        self.backbone = YOLOv8Backbone(width, depth)
        self.neck = YOLOv8PAN(self.backbone.channels, depth)
        channels = self.backbone.channels
        D = self.support_encoder.dim
        self.proto_norm = nn.LayerNorm(2 * D)
        self.proto_proj = nn.ModuleList(nn.Linear(2 * D, c) for c in channels)
        self.token_proj = nn.ModuleList(nn.Linear(D, c) for c in channels)
        self.proto_embed = nn.Linear(2 * D, embed_dim)
        self.fusion = nn.ModuleList(FUSIONS[fusion](c, fusion_heads) for c in channels)
        self.head = RefDetHead(channels, embed_dim, reg_max)
        self.siamese = siamese
        self.siam_embed = nn.Linear(sum(channels), embed_dim) if siamese else None
        self.reg_max = reg_max
        self.support_cache: SupportCache | None = None
        # pretrained parts get --base-lr (src.training.optim): the support encoder, and the detector when
        # it starts from yolov8n weights (src.models.ultralytics_keys.load_detector_weights)
        self.pretrained_prefixes = (("support_encoder.",) if (pretrained or pretrained_weights) else ()) + \
            (("backbone.", "neck.") if pretrained_detector else ())

    def param_breakdown(self) -> dict[str, int]:
        """Parameters per part (the four the issue reports): dino, detector, fusion, head."""
        def count(*modules):
            return sum(p.numel() for m in modules for p in m.parameters())
        return {"dino": count(self.support_encoder), "detector": count(self.backbone, self.neck),
                "fusion": count(self.fusion, self.proto_norm, self.proto_proj, self.token_proj, self.proto_embed,
                                *([self.siam_embed] if self.siamese else [])),
                "head": count(self.head)}

    def _support_tokens(self, support: torch.Tensor, keys: list[str] | None) -> torch.Tensor:
        """(V, K, 3, s, s) -> (V * K, T, D) final support tokens, via the cache for the frozen part."""
        V, K = support.shape[:2]
        flat = support.flatten(0, 1)
        enc = self.support_encoder
        cache = self.support_cache if (enc.cacheable and keys is not None) else None
        if cache is None:
            return enc.trainable_tokens(enc.frozen_tokens(flat))
        parts, missing = [None] * V, []
        for v, key in enumerate(keys):
            hit = cache.get(key)
            if hit is None:
                missing.append(v)
            else:
                parts[v] = hit
        with torch.no_grad():
            for v in missing:
                # one video at a time: its tokens must not depend on which other videos shared the batch
                # (matmul kernels round differently for other batch sizes), or a resumed run, whose cache
                # starts empty, would drift from an uninterrupted one in the last bits
                parts[v] = enc.frozen_tokens(support[v])                 # K, T, D
                cache.put(keys[v], parts[v].detach())
        return enc.trainable_tokens(torch.stack(parts).flatten(0, 1))

    def encode_support(self, support: torch.Tensor, keys: list[str] | None = None) -> SupportFeatures:
        """Prototypes of V videos from their K reference images each: (V, K, 3, s, s)."""
        V, K = support.shape[:2]
        tokens = self._support_tokens(support, keys)                    # V*K, T, D
        enc = self.support_encoder
        patches = tokens[:, enc.num_prefix:]                            # V*K, N, D
        desc = self.proto_norm(torch.cat([tokens[:, 0], patches.mean(1)], -1))  # V*K, 2D
        desc = desc.reshape(V, K, -1).mean(1)                           # V, 2D: average over references
        patches = patches.reshape(V, K * patches.shape[1], -1)          # V, K*N, D
        protos = [proj(desc) for proj in self.proto_proj]
        embed = self.proto_embed(desc)
        if self.siamese:
            # the references also pass through the detector's own backbone + neck (shared weights, as
            # in SiamFC, Bertinetto et al. 2016, https://arxiv.org/abs/1606.09549): a prototype in the
            # query features' own space, so the fusion's similarity map means "looks like the
            # reference" from the first step, for objects never seen in training; the DINO prototype
            # adds what a pretrained encoder knows
            with _frozen_batchnorm(self.backbone, self.neck):
                ref_feats = self.features(support.flatten(0, 1))
            siam = [f.mean((2, 3)).reshape(V, K, -1).mean(1) for f in ref_feats]
            protos = [p + q for p, q in zip(protos, siam)]                # V, C_s each
            embed = embed + self.siam_embed(torch.cat(siam, -1))
        return SupportFeatures(protos=protos, tokens=[proj(patches) for proj in self.token_proj],
                               embed=F.normalize(embed.float(), dim=-1))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Query frames (B, 3, S, S) -> N3, N4, N5 of the YOLOv8 backbone + neck."""
        return list(self.neck(*self.backbone(images)))

    def fuse(self, feats: list[torch.Tensor], support: SupportFeatures, query_video: torch.Tensor) -> list:
        return [fuse(x, gather_rows(protos, query_video), gather_rows(tokens, query_video))
                for fuse, x, protos, tokens in zip(self.fusion, feats, support.protos, support.tokens)]

    def predict(self, fused: list[torch.Tensor], support: SupportFeatures, query_video: torch.Tensor) -> dict:
        proto = gather_rows(support.embed, query_video)
        out = self.head(fused, proto)
        anchors, strides = make_anchors([tuple(f.shape[-2:]) for f in fused], STRIDES, device=fused[0].device)
        return {**out, "anchors": anchors, "strides": strides, "proto": proto}

    def detect(self, images: torch.Tensor, support: SupportFeatures, query_video: torch.Tensor) -> dict:
        """Per-frame detection given the videos' support features; ``query_video`` (B,) indexes them."""
        return self.predict(self.fuse(self.features(images), support, query_video), support, query_video)

    def forward(self, images: torch.Tensor, support: torch.Tensor, query_video: torch.Tensor,
                support_keys: list[str] | None = None, negative_video: torch.Tensor | None = None) -> dict:
        """``negative_video`` (B,): also pair every frame with another video's references, sharing the
        backbone pass; the outputs then hold 2B rows, the B true pairings first (the caller supervises
        the second half as all-background)."""
        sup = self.encode_support(support, support_keys)
        feats = self.features(images)
        if negative_video is None:
            return self.predict(self.fuse(feats, sup, query_video), sup, query_video)
        feats = [torch.cat([f, f]) for f in feats]
        videos = torch.cat([query_video, negative_video])
        return self.predict(self.fuse(feats, sup, videos), sup, videos)

def build_refdet_model(dino_model: str = "vit_small_patch16_dinov3", support_size: int = 224,
                       freeze_dino_layers: int = 6, fusion: str = "psalm", embed_dim: int = 128,
                       width: float = 0.25, depth: float = 0.33, reg_max: int = 16, pretrained: bool = False,
                       pretrained_weights: str | None = None, support_cache_mb: float = 0.0,
                       siamese: bool = True, detector_weights: str | None = None,
                       pretrained_detector: bool = False) -> RefDetModel:
    """The model; ``detector_weights``: a yolov8n state dict for the backbone + neck
    (:func:`~src.models.ultralytics_keys.load_detector_weights`; ``model.detector_init`` is a line saying
    what was loaded). ``pretrained_detector`` (implied by ``detector_weights``) puts the detector in the pretrained
    parameter group without loading anything, for a resumed run whose ``last.pt`` holds the weights."""
    if siamese and support_size % 32:
        raise DataError(f"must be a multiple of 32 (the detector's stride) with the siamese prototype, got "
                        f"{support_size}", param="support_size")
    model = RefDetModel(dino_model, support_size, freeze_dino_layers, width, depth, fusion, embed_dim, reg_max,
                        pretrained=pretrained, pretrained_weights=pretrained_weights, siamese=siamese,
                        pretrained_detector=pretrained_detector or bool(detector_weights))
    # what was loaded, for the log (a line, not the Conversion: the EMA deep-copies the model)
    model.detector_init = load_detector_weights(model, detector_weights).describe(detector_weights) \
        if detector_weights else None
    if support_cache_mb > 0:
        model.support_cache = SupportCache(support_cache_mb)
    return model


# ----------------------------------------------------------------------------- post-processing

@torch.no_grad()
def postprocess(out: dict, max_det: int = 10, min_score: float = 0.01, iou: float = 0.5):
    """Per frame: (boxes (n, 4) xyxy input pixels, scores (n,)) after NMS, best first."""
    scores = out["logits"].float().sigmoid()                         # B, A
    boxes = decode_boxes(out)                                        # B, A, 4
    results = []
    for s, b in zip(scores, boxes):
        top = s.topk(min(100, s.numel()))
        keep = top.values >= min_score
        cand_s, cand_b = top.values[keep], b[top.indices[keep]]
        kept = nms(cand_b, cand_s, iou)[:max_det]
        results.append((cand_b[kept], cand_s[kept]))
    return results


def to_original(boxes: torch.Tensor, scale: float, orig_size) -> torch.Tensor:
    """Letterboxed-input boxes -> the video's pixels, clipped to the frame (``orig_size`` = (H, W))."""
    h, w = orig_size
    out = boxes.float() / scale
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


class FrameDetector(nn.Module):
    """Per-frame detection with one video's support computed once (how a video is processed): frames
    (B, 3, S, S) -> head outputs. Without a support it encodes random references once, which is what
    the FPS figure times (the support encoder's one-off cost is not per frame)."""

    def __init__(self, model: nn.Module, support_size: int) -> None:
        super().__init__()
        self.model, self.support_size = model, support_size
        self._support = None

    def forward(self, images: torch.Tensor) -> dict:
        if self._support is None:
            support = torch.randn(1, 3, 3, self.support_size, self.support_size, device=images.device)
            self._support = self.model.encode_support(support)
        zeros = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return self.model.detect(images, self._support, zeros)
