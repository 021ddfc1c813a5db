"""Open-vocabulary phrase grounding: image encoder + text encoder + cross-attention fusion + DETR decoder.

Pieces and papers:

* image encoder: any timm model's last (or ``feature_index``) feature map as tokens; Swin-T (Liu et
  al., ICCV 2021, https://arxiv.org/abs/2103.14030) by default, whose timm >= 0.9 features are NHWC
  (B, 7, 7, 768 at 224 px); CNNs give NCHW. Both become (B, HW, C), projected to ``dim``, with fixed
  2-D sine positions (DETR).
* text encoder (:mod:`src.models.text_encoders`): fastText-style hashed character n-gram word
  embeddings (Bojanowski et al., TACL 2017) + a small Transformer encoder, trained from scratch,
  offline, no vocabulary file (the default); or any pretrained Hugging Face encoder (BERT, as GLIP;
  RoBERTa, as MDETR, Kamath et al., ICCV 2021), frozen or fine-tuned, projected to ``dim``, with
  phrases mapped from words to subword tokens by character offsets.
* fusion: ``fusion_layers`` bidirectional cross-attention layers (image <- text, text <- image, as
  GLIP, Li et al., CVPR 2022) built on :class:`Attention`: separate q/k/v projections and
  ``F.scaled_dot_product_attention``.
* decoder: DETR (Carion et al., ECCV 2020, https://arxiv.org/abs/2005.12872) with ``num_queries``
  queries seeded by two-stage query selection (see :class:`GroundingModel`), each with an anchor box
  whose sine embedding is the query position (DAB-DETR, Liu et al., ICLR 2022) and which every layer
  refines (Deformable DETR, Zhu et al., ICLR 2021): layers self-attend, attend to the fused image
  tokens and to the text. Every layer outputs boxes (cxcywh in [0, 1]) and phrase logits, for the
  auxiliary losses.
* phrase logits: scaled cosine similarity between each query's embedding and each phrase embedding
  (mean of the phrase's fused text tokens: words for the hashed encoder, the subword tokens inside
  the phrase's characters for a pretrained one) plus a bias: ``exp(logit_scale) * cos + bias`` (CLIP).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP

from src.models.text_encoders import DEFAULT_BUCKETS, HASHED, build_text_encoder
from src.models.timm_features import create_timm_features
# the focal-loss prior (RetinaNet): logits start near sigmoid^-1(0.01), so the many negatives do not
# swamp the first steps
PRIOR_PROB = 0.01


def sine_positions(h: int, w: int, dim: int, device=None, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's fixed 2-D sine position embedding of an h x w grid: (h*w, dim), row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    coords = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1)  # (HW, 2) in [0, 1]
    return coord_sine(coords, dim, temperature)


def coord_sine(coords: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of each of the last axis' k coordinates in [0, 1]: (..., k) -> (..., dim)."""
    k = coords.shape[-1]
    per = dim // k
    freq = temperature ** (2 * (torch.arange(per, device=coords.device) // 2) / per)
    x = coords[..., None] * (2 * math.pi) / freq                          # (..., k, per)
    x = torch.stack([x[..., 0::2].sin(), x[..., 1::2].cos()], -1).flatten(-2)
    out = x.flatten(-2)
    return F.pad(out, (0, dim - out.shape[-1])) if out.shape[-1] < dim else out


def pool_phrases(tokens: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each phrase's tokens: tokens (B, T, D), phrase_mask (B, P, T) -> (B, P, D); a phrase
    with no token (padding) pools to zeros. The mean (GLIP likewise averages over a phrase's tokens,
    through its normalized positive map), so a phrase's length does not scale its embedding."""
    m = phrase_mask.to(tokens.dtype)
    return m @ tokens / m.sum(-1, keepdim=True).clamp(min=1)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections and ``F.scaled_dot_product_attention``
    (flash / memory-efficient kernels where available). ``key_mask`` (B, Lk) is True on keys to use."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, Lq, D = q.shape
        h = self.heads
        q = self.q_proj(q).view(B, Lq, h, D // h).transpose(1, 2)        # (B, h, Lq, d)
        k = self.k_proj(k).view(B, k.shape[1], h, D // h).transpose(1, 2)
        v = self.v_proj(v).view(B, v.shape[1], h, D // h).transpose(1, 2)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, D))


def _ffn(dim: int, mult: int, dropout: float) -> nn.Module:
    return MLP(dim, [dim * mult, dim], activation_layer=nn.GELU, dropout=dropout)


class ImageEncoder(nn.Module):
    """timm features -> tokens (B, HW, dim) and positions (HW, dim).

    timm returns NCHW for CNNs and NHWC for Swin-style models (``output_fmt``); both are read
    correctly here (the seed project flattened Swin's NHWC map as if it were NCHW)."""

    def __init__(self, name: str, dim: int, pretrained: bool = False, pretrained_weights: str | None = None,
                 feature_index: int = -1, image_size: int | None = None) -> None:
        super().__init__()
        kwargs = {}
        if image_size and "swin" in name:
            kwargs["img_size"] = image_size   # Swin's window grid is fixed at build time
        self.backbone = create_timm_features(name, pretrained, pretrained_weights, feature_index, **kwargs)
        self.nhwc = str(getattr(self.backbone, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.channels = self.backbone.feature_info.channels()[-1]
        self.reduction = self.backbone.feature_info.reduction()[-1]
        self.proj = nn.Sequential(nn.Linear(self.channels, dim), nn.LayerNorm(dim))
        self.dim = dim
        self.pretrained = bool(pretrained or pretrained_weights)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the backbone's feature map as NHWC, (B, h, w, C)."""
        fmap = self.backbone(images)[-1]
        return fmap if self.nhwc else fmap.permute(0, 2, 3, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> backbone tokens before projection, (B, h*w, C), row-major."""
        return self.feature_map(images).flatten(1, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Projected tokens (B, h*w, dim), their positions (h*w, dim) and the grid (h, w)."""
        fmap = self.feature_map(images)
        h, w = fmap.shape[1:3]
        tokens = self.proj(fmap.flatten(1, 2))
        return tokens, sine_positions(h, w, self.dim, tokens.device).to(tokens.dtype), (h, w)


class FusionLayer(nn.Module):
    """Bidirectional cross-attention: image tokens attend to text, text tokens attend to the image,
    then a feed-forward per stream; pre-norm residual blocks."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, attention=Attention) -> None:
        super().__init__()
        self.norm_img, self.norm_txt = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.img_from_txt, self.txt_from_img = attention(dim, heads, dropout), attention(dim, heads, dropout)
        self.norm_img2, self.norm_txt2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn_img, self.ffn_txt = _ffn(dim, 4, dropout), _ffn(dim, 4, dropout)

    def forward(self, img: torch.Tensor, img_pos: torch.Tensor, txt: torch.Tensor,
                text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.norm_img(img), self.norm_txt(txt)
        img = img + self.img_from_txt(a + img_pos, b, b, text_mask)
        txt = txt + self.txt_from_img(b, a + img_pos, a)
        img = img + self.ffn_img(self.norm_img2(img))
        txt = txt + self.ffn_txt(self.norm_txt2(txt))
        return img, txt


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to image tokens, cross-attention to text, feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn, self.img_attn, self.txt_attn = (Attention(dim, heads, dropout) for _ in range(3))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.ffn = _ffn(dim, 4, dropout)

    def forward(self, q, q_pos, img, img_pos, txt, text_mask):
        n = self.norms
        x = n[0](q)
        q = q + self.self_attn(x + q_pos, x + q_pos, x)
        q = q + self.img_attn(n[1](q) + q_pos, img + img_pos, img)
        q = q + self.txt_attn(n[2](q), txt, txt, text_mask)
        return q + self.ffn(n[3](q))


class GroundingModel(nn.Module):
    """Images + tokenized captions + phrase spans -> dense proposals and per decoder layer boxes and
    phrase logits.

    Two-stage query selection (Deformable DETR's two-stage variant; "language-guided query
    selection" in Grounding DINO, Liu et al., 2023): every fused image token first proposes a box
    around its own grid cell and scores it against each phrase; the ``num_queries`` tokens that
    score highest for any phrase of the caption seed the decoder queries (their features as content,
    their boxes as anchors). The dense proposals are supervised with the same set loss, which gives
    the encoder a direct, position-anchored signal from the first steps: DETR's learnable queries
    alone take far longer to converge, which matters when training from random init on a CPU.

    Inputs: ``images`` (B, 3, S, S); ``words``: the text encoder's input, (B, L, G) n-gram ids for
    the hashed encoder or the B caption strings for a pretrained one (their whitespace words are the
    L axis); ``text_mask`` (B, L) True on words; ``phrase_mask`` (B, P, L) True on each phrase's
    words (an all-False row is padding). The text encoder turns the word masks into masks over its
    T tokens (T = L for the hashed encoder, subword tokens for a pretrained one).
    Output: ``{"layers": [one dict per decoder layer, last = final], "proposals": dict}``, each dict
    with ``boxes`` (B, N, 4) cxcywh in [0, 1] and ``logits`` (B, N, P); N = num_queries (layers) or
    the number of image tokens (proposals).
    """

    pretrained_prefixes = ("image_encoder.backbone.",)

    def __init__(self, image_encoder: ImageEncoder, text_encoder: nn.Module, dim: int, fusion_layers: int,
                 fusion_heads: int, decoder_layers: int, num_queries: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        # a pretrained text model trains at its own lr (the engine's prefix_lrs, set from --text-lr)
        own = getattr(text_encoder, "own_lr_prefix", None)
        self.text_model_prefix = f"text_encoder.{own}" if own else None
        self.num_queries = num_queries
        self.fusion = nn.ModuleList(FusionLayer(dim, fusion_heads, dropout) for _ in range(fusion_layers))
        self.img_norm, self.txt_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query_content = nn.Linear(dim, dim)
        self.query_pos = MLP(dim, [dim, dim], activation_layer=nn.ReLU)
        self.layers = nn.ModuleList(DecoderLayer(dim, fusion_heads, dropout) for _ in range(decoder_layers))
        self.out_norm = nn.LayerNorm(dim)
        # heads shared by the proposals and every decoder layer (DETR shares them across layers)
        self.box_head = MLP(dim, [dim, dim, 4], activation_layer=nn.ReLU)
        nn.init.zeros_(self.box_head[-2].weight)   # boxes start at the anchors (index -1 is the final dropout)
        nn.init.zeros_(self.box_head[-2].bias)
        self.query_embed = nn.Linear(dim, dim)
        self.phrase_embed = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-math.log((1 - PRIOR_PROB) / PRIOR_PROB)))

    def encode(self, images, words, text_mask, phrase_mask):
        """Fused image tokens (B, HW, D), their positions (HW, D), fused text tokens (B, T, D), the
        token mask (B, T), the phrases over tokens (B, P, T) and the token grid (h, w)."""
        img, pos, grid = self.image_encoder(images)
        txt, text_mask, phrase_mask = self.text_encoder(words, text_mask, phrase_mask)
        for layer in self.fusion:
            img, txt = layer(img, pos, txt, text_mask)
        return self.img_norm(img), pos, self.txt_norm(txt), text_mask, phrase_mask, grid

    def phrase_embeddings(self, txt: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
        """Mean of each phrase's fused tokens (:func:`pool_phrases`), projected and L2-normalized: (B, P, D)."""
        return F.normalize(self.phrase_embed(pool_phrases(txt, phrase_mask)), dim=-1)

    def predict(self, feats: torch.Tensor, ref: torch.Tensor, phrases: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boxes refined from ``ref`` (B, N, 4) and scaled-cosine phrase logits for features (B, N, D)."""
        out = self.out_norm(feats)
        boxes = (torch.logit(ref, eps=1e-5) + self.box_head(out)).sigmoid()
        emb = F.normalize(self.query_embed(out), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * emb @ phrases.transpose(1, 2) + self.logit_bias
        return {"boxes": boxes, "logits": logits}

    @staticmethod
    def cell_anchors(h: int, w: int, device, dtype) -> torch.Tensor:
        """(h*w, 4) cxcywh: each token's grid-cell centre with a box two cells wide."""
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
        return torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h,
                            torch.full((h * w,), 2.0 / w, device=device, dtype=dtype),
                            torch.full((h * w,), 2.0 / h, device=device, dtype=dtype)], -1)

    def forward(self, images, words, text_mask, phrase_mask) -> dict:
        real = phrase_mask.any(-1)        # (B, P) from the words: a phrase truncated off the tokens stays real
        img, pos, txt, text_mask, phrase_mask, (h, w) = self.encode(images, words, text_mask, phrase_mask)
        phrases = self.phrase_embeddings(txt, phrase_mask)
        B = images.shape[0]
        anchors = self.cell_anchors(h, w, img.device, torch.float32).expand(B, -1, -1)
        proposals = self.predict(img, anchors, phrases)
        # query selection: the tokens that best match any real phrase of their caption
        score = proposals["logits"].detach().float().masked_fill(~real[:, None, :], float("-inf"))
        idx = score.max(-1).values.topk(min(self.num_queries, h * w), dim=1).indices     # (B, Q)
        q = self.query_content(torch.gather(img, 1, idx[..., None].expand(-1, -1, img.shape[-1])))
        ref = torch.gather(proposals["boxes"].detach(), 1, idx[..., None].expand(-1, -1, 4))
        layers = []
        for layer in self.layers:
            q_pos = self.query_pos(coord_sine(ref, q.shape[-1]).to(q.dtype))
            q = layer(q, q_pos, img, pos, txt, text_mask)
            out = self.predict(q, ref, phrases)
            layers.append(out)
            ref = out["boxes"].detach()   # iterative refinement: the next layer starts from these boxes
        return {"layers": layers, "proposals": proposals}


def build_grounding_model(image_encoder: str = "swin_tiny_patch4_window7_224", dim: int = 256,
                          fusion_layers: int = 1, fusion_heads: int = 4, decoder_layers: int = 3,
                          num_queries: int = 20, text_layers: int = 2, buckets: int = DEFAULT_BUCKETS,
                          max_words: int = 64, image_size: int = 224, feature_index: int = -1,
                          dropout: float = 0.0, pretrained: bool = False,
                          pretrained_weights: str | None = None, text_encoder: str = HASHED,
                          freeze_text_encoder: bool = False) -> GroundingModel:
    """The grounding model; ``text_encoder`` is ``"hashed"`` (``text_layers``, ``buckets``,
    ``max_words`` apply) or a Hugging Face name / local folder (frozen with ``freeze_text_encoder``)."""
    img = ImageEncoder(image_encoder, dim, pretrained, pretrained_weights, feature_index, image_size)
    txt = build_text_encoder(text_encoder, dim, text_layers, fusion_heads, buckets, max_words, dropout,
                             freeze_text_encoder)
    return GroundingModel(img, txt, dim, fusion_layers, fusion_heads, decoder_layers, num_queries, dropout)
