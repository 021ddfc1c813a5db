"""VietOCR text-line recognisers (https://github.com/pbcquoc/vietocr), with VietOCR's state-dict names.

A CNN turns a text-line image (N, 3, 32, W) into a sequence of T = W/2 feature vectors; a sequence
model reads them and writes the text token by token.

- CNN: VGG19 with batch norm (Simonyan & Zisserman 2014, https://arxiv.org/abs/1409.1556), torchvision's
  ``vgg19_bn`` ``features``, every MaxPool replaced in order by an AvgPool of kernel = stride
  ``(2,2), (2,2), (2,1), (2,1), (1,1)`` (the last ones keep the width, so the sequence stays long
  enough for long lines), dropout 0.5 and a 1x1 conv 512 -> d_model.
- ``vgg_transformer``: a post-norm Transformer encoder-decoder (Vaswani et al. 2017,
  https://arxiv.org/abs/1706.03762), ``nn.Transformer`` sequence-first as in VietOCR, sinusoidal
  positions added to both the image sequence and the text after scaling by ``sqrt(d_model)``.
- ``vgg_seq2seq``: a bidirectional GRU encoder and a GRU decoder with additive attention
  (Bahdanau et al. 2015, https://arxiv.org/abs/1409.0473), as VietOCR's ``Seq2Seq``.

Module names follow VietOCR (``cnn.model.features.*``, ``cnn.model.last_conv_1x1.*``,
``transformer.embed_tgt``, ``transformer.transformer.*``, ``transformer.fc``; ``transformer.encoder.rnn``,
``transformer.decoder.attention.attn`` ...), so a VietOCR checkpoint loads with ``load_state_dict``.

Decoding differs from VietOCR on purpose (DESIGN section 5): VietOCR's greedy decoder re-runs the whole
decoder on the whole prefix at every step and its beam search takes one image at a time. Here greedy
decoding is batched with a key/value cache computed with the decoder layers' own weights (so the state
dict stays VietOCR's), finished lines leave the batch, and beam search is batched over lines and
beams. ``greedy_decode_reference`` keeps VietOCR's method for tests and benchmarks.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential
from torchvision.models import VGG19_BN_Weights
from torchvision.models import vgg as tv_vgg

from src.errors import DataError
from src.training.checkpoint import torch_load_file

VIETOCR_ARCHS = ("vgg_transformer", "vgg_seq2seq")
MODEL_SIZES = ("full", "small")

# VietOCR's pooling schedule, (kernel = stride) as (H, W) per pool, in order
POOL_SIZES = ((2, 2), (2, 2), (2, 1), (2, 1), (1, 1))

# "small": 4 VGG stages (16, 32, 64x2, 128x2 convs) and the same 5 pools, so T = W/2 at H = 32 as in
# "full". The last pool is (1, 1), an identity in both; it is kept so the schedule reads the same.
SMALL_CNN_CFG = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", "M"]

SIZES: dict[str, dict] = {
    # VietOCR's vgg_transformer / vgg_seq2seq configs
    "full": dict(cnn_cfg=tv_vgg.cfgs["E"], d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, hidden=256, cnn_dropout=0.5, dropout=0.1, scale_src=True),
    # a CPU size that learns from random init in minutes: 1,285,417 (transformer) / 926,505 (seq2seq)
    # parameters with 233 tokens. Two measured departures besides the widths (docs/train_vietocr.md):
    # no dropout on the CNN features (0.5 slowed learning from scratch: valid line accuracy 0.235 vs 0.120
    # after 1,500 steps) and the image sequence is not scaled by sqrt(d_model) before the positions are
    # added (scaled, the positions are small next to the features: 0.015 vs 0.045 after ~1,500 steps).
    # No dropout in the transformer either: drawing the masks took 16% of a CPU training step.
    "small": dict(cnn_cfg=SMALL_CNN_CFG, d_model=128, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                  dim_feedforward=512, hidden=128, cnn_dropout=0.0, dropout=0.0, scale_src=False),
}

VGG19_BN_URL = VGG19_BN_Weights.IMAGENET1K_V1.url


class PretrainedWeightsError(DataError, RuntimeError):
    """Pretrained CNN weights could not be loaded. A ``DataError`` so the scripts print it as one line
    and exit 2; a ``RuntimeError`` for callers that use the model outside the scripts."""


class DecodeResult(NamedTuple):
    """``tokens``: (N, L) generated ids without sos, ending with eos, pad after it (lines that reach
    ``max_len`` have no eos). ``confidence``: (N,) mean probability of the chosen tokens, eos included."""

    tokens: torch.Tensor
    confidence: torch.Tensor


# ----------------------------------------------------------------------------- CNN

def vgg_features(cfg: list, pool_sizes=POOL_SIZES) -> nn.Sequential:
    """torchvision's VGG ``features`` (Conv3x3-BN-ReLU stacks) for ``cfg``, each ``"M"`` pool replaced
    in order by ``AvgPool2d(k, stride=k)`` with ``k`` from ``pool_sizes``.

    Built with torchvision's ``make_layers`` rather than ``vgg19_bn()`` so the 123M-parameter classifier
    that VietOCR discards is never allocated; module indices (``features.0.weight`` ...) are the same.
    """
    features = tv_vgg.make_layers(cfg, batch_norm=True)
    pools = iter(pool_sizes)
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            k = tuple(next(pools))
            features[i] = nn.AvgPool2d(kernel_size=k, stride=k, padding=0)
    if next(pools, None) is not None:
        raise ValueError(f"cfg has fewer pools than pool_sizes ({len(pool_sizes)})")
    # torchvision's VGG init (make_layers alone would leave PyTorch's default conv init)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features


class VGGBackbone(nn.Module):
    """VietOCR's ``Vgg``: VGG features -> dropout -> 1x1 conv, read column by column into a sequence.

    Args:
        cfg: torchvision-style VGG config (channels and ``"M"`` pools).
        hidden: output channels of the 1x1 conv (the sequence model's d_model).
        dropout: dropout on the feature map before the 1x1 conv.
        pool_sizes: kernel = stride of each pool, in order.
    """

    def __init__(self, cfg: list, hidden: int, dropout: float = 0.5, pool_sizes=POOL_SIZES) -> None:
        super().__init__()
        self.features = vgg_features(cfg, pool_sizes)
        self.dropout = nn.Dropout(dropout)
        channels = [c for c in cfg if c != "M"][-1]
        self.last_conv_1x1 = nn.Conv2d(channels, hidden, 1)
        self.grad_checkpointing = False
        self.num_pools = len(pool_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N, 3, H, W -> T, N, hidden
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # one segment per pooling stage; BN running stats are updated again when a segment is
            # recomputed (as with timm's checkpoint_seq), a small shift of their moving average
            conv = checkpoint_sequential(self.features, self.num_pools, x, use_reentrant=False)
        else:
            conv = self.features(x)                                  # N, C, h, w
        conv = self.last_conv_1x1(self.dropout(conv))                # N, hidden, h, w
        # VietOCR's order: column by column, each column top to bottom (t = col * h + row)
        return conv.transpose(-1, -2).flatten(2).permute(2, 0, 1)    # T = w*h, N, hidden


class CNN(nn.Module):
    """Wrapper that only exists for VietOCR's key names (``cnn.model.*``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N, 3, H, W -> T, N, C
        return self.model(x)


def load_vgg19_bn_features(features: nn.Sequential, pretrained_weights: str | None = None) -> None:
    """Load ImageNet weights into VGG19-bn ``features``: from ``pretrained_weights`` (a local file:
    torchvision's ``vgg19_bn`` state dict, or its ``features`` alone), else through torchvision's weights
    API (``VGG19_BN_Weights.IMAGENET1K_V1``: the torch.hub cache, or a download)."""
    if pretrained_weights:
        state = torch_load_file(pretrained_weights, "pretrained weights file", PretrainedWeightsError)
        source = pretrained_weights
    else:
        try:
            state = VGG19_BN_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # URLError offline, HTTP errors, a truncated download's hash error ...
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise PretrainedWeightsError(
                f"could not download torchvision's vgg19_bn ImageNet weights ({type(exc).__name__}: {detail}); "
                f"without internet, download {VGG19_BN_URL} elsewhere and pass the local file",
                param="pretrained_weights") from None
        source = VGG19_BN_URL
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{source}: expected a state dict, got {type(state).__name__}")
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        features.load_state_dict(state)
    except RuntimeError as exc:  # PyTorch's message lists every missing/unexpected key on many lines
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise PretrainedWeightsError(f"{source}: not a vgg19_bn state dict ({lines[-1][:200]})") from None


# ----------------------------------------------------------------------------- transformer

class PositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al. 2017), added to a sequence-first input, then dropout.

    ``pe`` is a persistent buffer of shape (max_len, 1, d_model) because VietOCR's checkpoints hold it
    (``transformer.pos_enc.pe``).
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 1024) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe[:, None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # T, N, E
        return self.dropout(x + self.pe[:x.shape[0]])


def causal_mask(length: int, device=None) -> torch.Tensor:
    """(length, length) bool, True where attention is forbidden (the future). Bool, like the padding
    mask, so PyTorch does not warn about mixing mask types."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class LanguageTransformer(nn.Module):
    """VietOCR's ``LanguageTransformer``: ``nn.Transformer`` over the CNN sequence and the text.

    Args:
        vocab_size: V, including the special tokens.
        d_model: width E of the image sequence (the CNN's 1x1 conv output) and of the text embedding.
        nhead: attention heads; ``d_model`` must be divisible by it.
        num_encoder_layers / num_decoder_layers: post-norm ReLU layers.
        dim_feedforward: hidden width of each layer's MLP.
        max_seq_length: positions of the sinusoidal table (the longest image sequence or text).
        pos_dropout / trans_dropout: dropout after the positions / inside the layers.
        scale_src: multiply the image sequence by sqrt(d_model) before adding the positions (VietOCR).
    """

    def __init__(self, vocab_size: int, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, max_seq_length: int = 1024,
                 pos_dropout: float = 0.1, trans_dropout: float = 0.1, scale_src: bool = True) -> None:
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        # VietOCR multiplies the image sequence by sqrt(d_model) (like the token embeddings) before
        # adding the positions; the small size switches this off (see SIZES)
        self.src_scale = math.sqrt(d_model) if scale_src else 1.0
        self.embed_tgt = nn.Embedding(vocab_size, d_model)
        self.pos_enc = PositionalEncoding(d_model, pos_dropout, max_seq_length)
        # the encoder is passed in only to switch off nested tensors, a fast path for batch-first
        # padded inputs that this sequence-first model can never take (PyTorch warns otherwise);
        # module names and initialisation are nn.Transformer's own
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, trans_dropout),
                                        num_encoder_layers, nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.transformer = nn.Transformer(d_model, nhead, num_encoder_layers, num_decoder_layers,
                                          dim_feedforward, trans_dropout, custom_encoder=encoder)
        self.fc = nn.Linear(d_model, vocab_size)
        self.grad_checkpointing = False

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                tgt_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src: (S, N, E) image sequence; tgt: (T, N) token ids; tgt_key_padding_mask: (N, T) bool,
        True = pad. Returns logits (N, T, V)."""
        return self.forward_decoder(tgt, self.forward_encoder(src), tgt_key_padding_mask)

    def forward_encoder(self, src: torch.Tensor) -> torch.Tensor:  # S, N, E -> memory S, N, E
        x = self.pos_enc(src * self.src_scale)
        encoder = self.transformer.encoder
        if not self._checkpointing():
            return encoder(x)
        for layer in encoder.layers:  # per layer, so recomputation never holds more than one layer
            x = checkpoint(layer, x, use_reentrant=False)
        return encoder.norm(x) if encoder.norm is not None else x

    def forward_decoder(self, tgt: torch.Tensor, memory: torch.Tensor,
                        tgt_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced decoding of the whole prefix: tgt (T, N), memory (S, N, E) -> logits (N, T, V)."""
        mask = causal_mask(tgt.shape[0], tgt.device)
        x = self.pos_enc(self.embed_tgt(tgt) * math.sqrt(self.d_model))      # T, N, E
        decoder = self.transformer.decoder
        if not self._checkpointing():
            x = decoder(x, memory, tgt_mask=mask, tgt_key_padding_mask=tgt_key_padding_mask)
        else:
            for layer in decoder.layers:
                x = checkpoint(layer, x, memory, mask, None, tgt_key_padding_mask, use_reentrant=False)
            x = decoder.norm(x) if decoder.norm is not None else x
        return self.fc(x.transpose(0, 1))                                      # N, T, V

    # --- incremental decoding with a key/value cache -------------------------------------------
    # The step re-implements nn.TransformerDecoderLayer's forward for one new position, calling the
    # layer's own submodules and weights: the state dict stays VietOCR's, and the Linear modules
    # (linear1, linear2, fc) are called as modules so quantize_dynamic's int8 versions are used.

    def init_state(self, memory: torch.Tensor, max_len: int, group: int = 1) -> dict:
        """Decoder state for ``group`` rows per memory line (beams), room for ``max_len`` steps.

        memory: (S, N, E). Cross-attention keys/values are computed once per line, (N, heads, S, d),
        and shared by the line's rows; self-attention caches are per row, (N*group, heads, max_len, d).
        """
        if max_len > self.pos_enc.pe.shape[0]:
            raise ValueError(f"max_len {max_len} exceeds the positional table ({self.pos_enc.pe.shape[0]})")
        s, n, e = memory.shape
        h = self.nhead
        cross = self.cross_kv(memory)
        rows = n * group
        # the projections' dtype, not memory's: under autocast they are fp16/bf16 while memory is fp32
        dtype = cross[0][0].dtype if cross else memory.dtype
        cache = [memory.new_empty(rows, h, max_len, e // h, dtype=dtype) for _ in range(2 * len(cross))]
        return {"self": cache, "cross": cross, "len": 0, "group": group}

    def cross_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of ``memory`` (S, N, E): (N, heads, S, d) each."""
        s, n, e = memory.shape
        h = self.nhead
        cross = []
        for layer in self.transformer.decoder.layers:
            attn = layer.multihead_attn
            _, w_k, w_v = attn.in_proj_weight.chunk(3)
            b_k = b_v = None
            if attn.in_proj_bias is not None:
                _, b_k, b_v = attn.in_proj_bias.chunk(3)
            k = F.linear(memory, w_k, b_k).view(s, n, h, e // h).permute(1, 2, 0, 3)  # N, h, S, d
            v = F.linear(memory, w_v, b_v).view(s, n, h, e // h).permute(1, 2, 0, 3)
            cross.append((k, v))
        return cross

    def select_state(self, state: dict, rows: torch.Tensor, lines: torch.Tensor | None = None) -> dict:
        """Keep/reorder rows (``rows``: indices into the current rows) and, when lines leave the batch,
        the per-line cross-attention tensors (``lines``: indices into the current lines)."""
        n = state["len"]

        def take(buf):  # only the filled part is copied; the rest of the room stays uninitialised
            out = buf.new_empty((rows.numel(),) + buf.shape[1:])
            out[:, :, :n] = buf[rows, :, :n]
            return out

        cross = state["cross"] if lines is None else [(k[lines], v[lines]) for k, v in state["cross"]]
        return {"self": [take(b) for b in state["self"]], "cross": cross, "len": n, "group": state["group"]}

    def step(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        """One decoding step: tokens (B,) at position ``state["len"]`` -> logits (B, V). Updates state."""
        t = state["len"]
        if t >= state["self"][0].shape[2]:
            raise ValueError("decoder state is full: init_state with a larger max_len")
        x = self.embed_tgt(tokens) * math.sqrt(self.d_model) + self.pos_enc.pe[t]   # B, E
        x = self.pos_enc.dropout(x)
        for i, layer in enumerate(self.transformer.decoder.layers):
            x = self._layer_step(layer, x, state["self"][2 * i], state["self"][2 * i + 1],
                                 *state["cross"][i], t, state["group"])
        state["len"] = t + 1
        norm = self.transformer.decoder.norm
        return self.fc(norm(x) if norm is not None else x)                          # B, V

    def _layer_step(self, layer: nn.TransformerDecoderLayer, x: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, k_mem: torch.Tensor, v_mem: torch.Tensor, t: int,
                    group: int) -> torch.Tensor:  # x: B, E -> B, E
        b, e = x.shape
        h = self.nhead
        d = e // h

        def self_attn(y):
            attn = layer.self_attn
            q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).view(b, 3, h, d).unbind(1)  # B, h, d
            k_cache[:, :, t] = k
            v_cache[:, :, t] = v
            # the cache holds positions 0..t only, so no causal mask is needed
            out = F.scaled_dot_product_attention(q[:, :, None], k_cache[:, :, :t + 1], v_cache[:, :, :t + 1],
                                                 dropout_p=attn.dropout if attn.training else 0.0)
            return attn.out_proj(out.reshape(b, e))

        def cross_attn(y):
            attn = layer.multihead_attn
            w_q = attn.in_proj_weight[:e]
            b_q = attn.in_proj_bias[:e] if attn.in_proj_bias is not None else None
            # the `group` rows (beams) of a line become `group` queries against the line's one memory,
            # so beams never copy the memory's keys/values
            q = F.linear(y, w_q, b_q).view(-1, group, h, d).transpose(1, 2)            # N, h, group, d
            out = F.scaled_dot_product_attention(q, k_mem, v_mem,
                                                 dropout_p=attn.dropout if attn.training else 0.0)
            return attn.out_proj(out.transpose(1, 2).reshape(b, e))

        def ff(y):
            return layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(y)))))

        if layer.norm_first:
            x = x + layer.dropout1(self_attn(layer.norm1(x)))
            x = x + layer.dropout2(cross_attn(layer.norm2(x)))
            return x + ff(layer.norm3(x))
        x = layer.norm1(x + layer.dropout1(self_attn(x)))
        x = layer.norm2(x + layer.dropout2(cross_attn(x)))
        return layer.norm3(x + ff(x))


# ----------------------------------------------------------------------------- seq2seq

class Encoder(nn.Module):
    """Bidirectional GRU over the image sequence; the decoder's first hidden state is
    ``tanh(fc([h_forward_last; h_backward_last]))``."""

    def __init__(self, emb_dim: int, enc_hid_dim: int, dec_hid_dim: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.GRU(emb_dim, enc_hid_dim, bidirectional=True)
        self.fc = nn.Linear(enc_hid_dim * 2, dec_hid_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor):  # S, N, C -> outputs S, N, 2*enc_hid; hidden N, dec_hid
        outputs, hidden = self.rnn(self.dropout(src))                 # hidden: 2, N, enc_hid
        hidden = torch.tanh(self.fc(torch.cat((hidden[-2], hidden[-1]), dim=1)))
        return outputs, hidden


class Attention(nn.Module):
    """Additive attention (Bahdanau et al. 2015): ``softmax_s(v . tanh(attn([hidden; enc_s])))``."""

    def __init__(self, enc_hid_dim: int, dec_hid_dim: int) -> None:
        super().__init__()
        self.attn = nn.Linear(enc_hid_dim * 2 + dec_hid_dim, dec_hid_dim)
        self.v = nn.Linear(dec_hid_dim, 1, bias=False)

    def forward(self, hidden: torch.Tensor, encoder_outputs: torch.Tensor) -> torch.Tensor:
        """hidden: (B, dec_hid); encoder_outputs: (B, S, 2*enc_hid), batch-first (VietOCR permutes its
        sequence-first outputs at every step; here once per batch). Returns weights (B, S)."""
        s = encoder_outputs.shape[1]
        energy = torch.tanh(self.attn(torch.cat((hidden[:, None].expand(-1, s, -1), encoder_outputs), dim=2)))
        return F.softmax(self.v(energy)[..., 0], dim=1)


class Decoder(nn.Module):
    """One GRU step: [embedding; attention context] -> GRU -> fc_out([output; context; embedding])."""

    def __init__(self, output_dim: int, emb_dim: int, enc_hid_dim: int, dec_hid_dim: int, dropout: float,
                 attention: Attention) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.attention = attention
        self.embedding = nn.Embedding(output_dim, emb_dim)
        self.rnn = nn.GRU(enc_hid_dim * 2 + emb_dim, dec_hid_dim)
        self.fc_out = nn.Linear(enc_hid_dim * 2 + dec_hid_dim + emb_dim, output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, encoder_outputs: torch.Tensor):
        """tokens (B,), hidden (B, dec_hid), encoder_outputs (B, S, 2*enc_hid) -> logits (B, V), hidden."""
        embedded = self.dropout(self.embedding(tokens))                              # B, emb
        a = self.attention(hidden, encoder_outputs)                                  # B, S
        weighted = torch.bmm(a[:, None], encoder_outputs)[:, 0]                      # B, 2*enc_hid
        output, hidden = self.rnn(torch.cat((embedded, weighted), dim=1)[None], hidden[None])
        output = output[0]                                                           # B, dec_hid
        return self.fc_out(torch.cat((output, weighted, embedded), dim=1)), output


class Seq2Seq(nn.Module):
    """VietOCR's ``Seq2Seq`` (GRU encoder-decoder with attention), with the same decoding interface as
    :class:`LanguageTransformer`.

    Args:
        vocab_size: V. encoder_hidden / decoder_hidden: GRU widths. img_channel: width of the CNN
        sequence. decoder_embedded: token embedding width. dropout: on the inputs of both GRUs.
    """

    def __init__(self, vocab_size: int, encoder_hidden: int = 256, decoder_hidden: int = 256,
                 img_channel: int = 256, decoder_embedded: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        attn = Attention(encoder_hidden, decoder_hidden)
        self.encoder = Encoder(img_channel, encoder_hidden, decoder_hidden, dropout)
        self.decoder = Decoder(vocab_size, decoder_embedded, encoder_hidden, decoder_hidden, dropout, attn)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                tgt_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (S, N, C), tgt (T, N) -> logits (N, T, V). The padding mask is not needed: pads come
        after eos, and a GRU never looks ahead."""
        return self.forward_decoder(tgt, self.forward_encoder(src))

    def forward_encoder(self, src: torch.Tensor):  # S, N, C -> (hidden N, H; encoder_outputs S, N, 2H)
        encoder_outputs, hidden = self.encoder(src)
        return hidden, encoder_outputs

    def forward_decoder(self, tgt: torch.Tensor, memory, tgt_key_padding_mask: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Teacher-forced decoding of the whole prefix from the encoder's state: tgt (T, N) -> (N, T, V)."""
        hidden, encoder_outputs = memory
        enc = encoder_outputs.transpose(0, 1)                                       # N, S, 2H
        outputs = []
        for tokens in tgt:
            logits, hidden = self.decoder(tokens, hidden, enc)
            outputs.append(logits)
        return torch.stack(outputs, dim=1)                                           # N, T, V

    def init_state(self, memory, max_len: int, group: int = 1) -> dict:
        hidden, encoder_outputs = memory
        return {"hidden": hidden.repeat_interleave(group, dim=0), "enc": encoder_outputs.transpose(0, 1),
                "group": group, "len": 0}

    def select_state(self, state: dict, rows: torch.Tensor, lines: torch.Tensor | None = None) -> dict:
        enc = state["enc"] if lines is None else state["enc"][lines]
        return {"hidden": state["hidden"][rows], "enc": enc, "group": state["group"], "len": state["len"]}

    def step(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:  # tokens (B,) -> logits (B, V)
        g = state["group"]
        # additive attention mixes hidden and memory before the tanh, so each row needs its own copy
        enc = state["enc"] if g == 1 else state["enc"].repeat_interleave(g, dim=0)
        logits, state["hidden"] = self.decoder(tokens, state["hidden"], enc)
        state["len"] += 1
        return logits


# ----------------------------------------------------------------------------- the model

class VietOCRModel(nn.Module):
    """CNN + sequence model, VietOCR's ``VietOCR`` module (``cnn``, ``transformer``).

    Args:
        cnn: maps images (N, 3, H, W) to a sequence (T, N, E).
        transformer: :class:`LanguageTransformer` or :class:`Seq2Seq` (VietOCR's attribute name for both).
        pretrained: whether ``cnn`` holds ImageNet weights; they then count as pretrained for
            ``--base-lr`` (``pretrained_prefixes``).
        ctc_head: optional ``nn.Linear`` from the encoder output to the vocabulary, for the auxiliary
            CTC loss of joint CTC-attention training (Kim, Hori & Watanabe, ICASSP 2017); used in
            training only, decoding never reads it. Absent in VietOCR's models and checkpoints.
    """

    def __init__(self, cnn: nn.Module, transformer: nn.Module, pretrained: bool = False,
                 ctc_head: nn.Linear | None = None) -> None:
        super().__init__()
        self.cnn = cnn
        self.transformer = transformer
        if ctc_head is not None:  # not registered at all otherwise, so VietOCR's state-dict keys stay exact
            self.ctc_head = ctc_head
        self.pretrained_prefixes = ("cnn.model.features.",) if pretrained else ()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward: the CNN per pooling stage, transformer layers one by one."""
        for m in self.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    def forward(self, images: torch.Tensor, tgt_input: torch.Tensor, tgt_padding_mask: torch.Tensor | None = None,
                with_ctc: bool = False):
        """Teacher-forced training forward.

        images: (N, 3, 32, W) in [0, 1]; tgt_input: (N, T) ids starting with sos; tgt_padding_mask:
        (N, T) bool, True = pad. Returns logits (N, T, V). (VietOCR takes tgt as (T, N); batch-first here
        like every other model of this project.) ``with_ctc`` also returns :meth:`ctc_log_probs` of the
        same encoding, as ``(logits, ctc_log_probs)``; it goes through ``forward`` so DDP sees it.
        """
        memory = self.encode(images)
        logits = self.teacher_forced(memory, tgt_input, tgt_padding_mask)
        return (logits, self.ctc_log_probs(memory)) if with_ctc else logits

    def encode(self, images: torch.Tensor):
        """Images (N, 3, H, W) -> memory: (S, N, E) for the transformer, (hidden, outputs) for seq2seq."""
        return self.transformer.forward_encoder(self.cnn(images))

    def teacher_forced(self, memory, tgt_input: torch.Tensor,
                       tgt_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, T, V) of the whole batch-first prefix ``tgt_input`` (N, T) given :meth:`encode`'s memory."""
        return self.transformer.forward_decoder(tgt_input.transpose(0, 1), memory, tgt_padding_mask)

    def ctc_log_probs(self, memory) -> torch.Tensor:
        """Memory from :meth:`encode` -> float32 CTC log-probabilities (S, N, V) over the encoder
        positions, in VietOCR's column-major reading order (blank = the pad id). Needs ``ctc_head``."""
        seq = memory[1] if isinstance(memory, tuple) else memory  # seq2seq: the GRU outputs (S, N, 2H)
        return self.ctc_head(seq).float().log_softmax(-1)

    @torch.no_grad()
    def greedy_decode(self, images: torch.Tensor, *, sos_id: int, eos_id: int, pad_id: int,
                      max_len: int = 128, memory=None) -> DecodeResult:
        """Batched greedy decoding, one decoder step per token (key/value cache for the transformer,
        the GRU state for seq2seq). A line leaves the batch when it emits eos; decoding stops when every
        line has, or after ``max_len`` tokens. Call in eval mode."""
        seq = self.transformer
        memory = self.encode(images) if memory is None else memory  # callers may have it already
        n, device = images.shape[0], images.device
        state = seq.init_state(memory, max_len)
        tokens = torch.full((n, max_len), pad_id, dtype=torch.long, device=device)
        probs = torch.zeros(n, max_len, device=device)
        lengths = torch.full((n,), max_len, dtype=torch.long, device=device)
        alive = torch.arange(n, device=device)
        inp = torch.full((n,), sos_id, dtype=torch.long, device=device)
        for t in range(max_len):
            prob, tok = seq.step(state, inp).float().softmax(-1).max(-1)           # B
            tokens[alive, t] = tok
            probs[alive, t] = prob
            ended = tok == eos_id
            if bool(ended.any()):  # a host sync per step: the price of stopping as soon as all lines end
                lengths[alive[ended]] = t + 1
                keep = (~ended).nonzero()[:, 0]
                if keep.numel() == 0:
                    break
                alive, tok = alive[keep], tok[keep]
                state = seq.select_state(state, keep, keep)
            inp = tok
        return trim_decoded(tokens, probs, lengths)

    @torch.no_grad()
    def greedy_decode_reference(self, images: torch.Tensor, *, sos_id: int, eos_id: int, pad_id: int,
                                max_len: int = 128) -> DecodeResult:
        """VietOCR's ``translate``: at every step the whole decoder re-runs on the whole prefix of every
        line (finished lines included), batched, same stopping rule as :meth:`greedy_decode`. Kept as the
        baseline for tests and benchmarks. (For seq2seq the GRU re-runs over the prefix as well, an
        independent check of the incremental step; VietOCR's own seq2seq step is incremental.)"""
        memory = self.encode(images)
        n, device = images.shape[0], images.device
        prefix = torch.full((n, 1), sos_id, dtype=torch.long, device=device)
        tokens = torch.full((n, max_len), pad_id, dtype=torch.long, device=device)
        probs = torch.zeros(n, max_len, device=device)
        lengths = torch.full((n,), max_len, dtype=torch.long, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        for t in range(max_len):
            logits = self.transformer.forward_decoder(prefix.T, memory)[:, -1]      # N, V
            prob, tok = logits.float().softmax(-1).max(-1)
            tok = tok.masked_fill(finished, pad_id)
            tokens[:, t] = tok
            probs[:, t] = prob.masked_fill(finished, 0.0)
            ended = (tok == eos_id) & ~finished
            lengths[ended] = t + 1
            finished |= ended
            prefix = torch.cat([prefix, tok[:, None]], dim=1)
            if bool(finished.all()):
                break
        return trim_decoded(tokens, probs, lengths)

    @torch.no_grad()
    def beam_search(self, images: torch.Tensor, *, beam_size: int = 4, sos_id: int, eos_id: int, pad_id: int,
                    max_len: int = 128, memory=None) -> DecodeResult:
        """Batched beam search over N lines x ``beam_size`` beams.

        Score of a hypothesis: its mean token log-probability (eos included). Each step every line keeps
        its ``beam_size`` best running (no eos) extensions by summed log-probability (all have the same
        length, so this is also the mean); an extension ending in eos that ranks among the top
        ``beam_size`` goes to the line's finished list. A line stops once it has ``beam_size`` finished
        hypotheses and none of its running beams scores better than the worst of them (the usual
        heuristic bound, as Hugging Face's ``early_stopping=False``: a running beam's mean could still
        rise with very confident later tokens); finished lines leave the batch; all stop at ``max_len``,
        where running beams compete as they are. Returns the best finished hypothesis per line.
        """
        seq, k = self.transformer, beam_size
        memory = self.encode(images) if memory is None else memory  # callers may have it already
        n, device = images.shape[0], images.device
        state = seq.init_state(memory, max_len, group=k)
        out_tok = torch.full((n, max_len), pad_id, dtype=torch.long, device=device)
        out_prob = torch.zeros(n, max_len, device=device)
        out_len = torch.ones(n, dtype=torch.long, device=device)

        lines = torch.arange(n, device=device)        # global index of each line still decoding
        run_tok = torch.full((n, k, max_len), pad_id, dtype=torch.long, device=device)
        run_lp = torch.zeros(n, k, max_len, device=device)                       # per-token log-probs
        run_score = torch.full((n, k), float("-inf"), device=device)
        run_score[:, 0] = 0.0  # one live beam at the start, so the K beams do not start as K copies
        fin_tok, fin_lp = run_tok.clone(), run_lp.clone()
        fin_score = torch.full((n, k), float("-inf"), device=device)             # mean log-prob, sorted
        fin_len = torch.ones(n, k, dtype=torch.long, device=device)
        rank = torch.arange(2 * k, device=device)
        inp = torch.full((n * k,), sos_id, dtype=torch.long, device=device)
        for t in range(max_len):
            logp = F.log_softmax(seq.step(state, inp).float(), dim=-1)
            m, v = lines.numel(), logp.shape[-1]
            if 2 * k > v:
                raise ValueError(f"beam_size {k} needs a vocabulary of at least {2 * k} tokens")
            cand = run_score[..., None] + logp.view(m, k, v)                     # m, K, V
            # 2K candidates: at most K end in eos (one per beam), so K running ones always remain
            top, idx = cand.view(m, k * v).topk(2 * k, dim=1)                     # m, 2K
            src, tok = idx // v, idx % v
            tok_lp = top - run_score.gather(1, src)
            gather = src[..., None].expand(-1, -1, max_len)
            c_tok = run_tok.gather(1, gather)
            c_tok[:, :, t] = tok
            c_lp = run_lp.gather(1, gather)
            c_lp[:, :, t] = tok_lp
            is_eos = tok == eos_id

            last = t == max_len - 1
            new = (is_eos & (rank < k)) | (last & ~is_eos)  # at max_len running beams compete as they are
            new_score = torch.where(new, top / (t + 1), torch.full_like(top, float("-inf")))
            fin_score, best = torch.cat([fin_score, new_score], 1).topk(k, dim=1)
            pick = best[..., None].expand(-1, -1, max_len)
            fin_tok = torch.cat([fin_tok, c_tok], 1).gather(1, pick)
            fin_lp = torch.cat([fin_lp, c_lp], 1).gather(1, pick)
            fin_len = torch.cat([fin_len, torch.full_like(top, t + 1, dtype=torch.long)], 1).gather(1, best)

            order = (is_eos.long() * 2 * k + rank).argsort(dim=1)[:, :k]         # best K without eos
            sel = order[..., None].expand(-1, -1, max_len)
            run_tok, run_lp = c_tok.gather(1, sel), c_lp.gather(1, sel)
            run_score, src, tok = top.gather(1, order), src.gather(1, order), tok.gather(1, order)

            done = (fin_score[:, -1] >= run_score.max(1).values / (t + 1)) | last
            if bool(done.any()):
                where = lines[done]
                out_tok[where] = fin_tok[done, 0]
                out_prob[where] = fin_lp[done, 0].exp()
                out_len[where] = fin_len[done, 0]
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            rows = (keep[:, None] * k + src[keep]).flatten()
            state = seq.select_state(state, rows, keep if keep.numel() < m else None)
            lines, inp = lines[keep], tok[keep].flatten()
            run_tok, run_lp, run_score = run_tok[keep], run_lp[keep], run_score[keep]
            fin_tok, fin_lp, fin_score, fin_len = fin_tok[keep], fin_lp[keep], fin_score[keep], fin_len[keep]
        pos = torch.arange(max_len, device=device)
        out_prob = out_prob * (pos < out_len[:, None])
        return trim_decoded(out_tok, out_prob, out_len)

    @torch.no_grad()
    def beam_search_sequential(self, images: torch.Tensor, *, beam_size: int = 4, sos_id: int, eos_id: int,
                               pad_id: int, max_len: int = 128) -> DecodeResult:
        """One image at a time (VietOCR's way), each through :meth:`beam_search`: the baseline for
        benchmarks."""
        results = [self.beam_search(images[i:i + 1], beam_size=beam_size, sos_id=sos_id, eos_id=eos_id,
                                    pad_id=pad_id, max_len=max_len) for i in range(images.shape[0])]
        width = max(r.tokens.shape[1] for r in results)
        tokens = torch.cat([F.pad(r.tokens, (0, width - r.tokens.shape[1]), value=pad_id) for r in results])
        return DecodeResult(tokens, torch.cat([r.confidence for r in results]))

    @torch.no_grad()
    def score_sequences(self, images: torch.Tensor, tokens: torch.Tensor, *, sos_id: int, eos_id: int,
                        pad_id: int) -> torch.Tensor:
        """Mean log-probability per line (N,) of ``tokens`` (N, L) as decoded (no sos, up to and
        including the first eos; without eos, the non-pad tokens), by one teacher-forced pass: the score
        :meth:`beam_search` maximises."""
        n = tokens.shape[0]
        tgt_in = torch.cat([tokens.new_full((n, 1), sos_id), tokens[:, :-1]], dim=1)
        logp = F.log_softmax(self(images, tgt_in).float(), -1).gather(2, tokens[..., None])[..., 0]  # N, L
        is_eos = tokens == eos_id
        upto_eos = (is_eos.cumsum(1) - is_eos.long()) == 0
        valid = upto_eos & (is_eos.any(1, keepdim=True) | (tokens != pad_id))
        return (logp * valid).sum(1) / valid.sum(1).clamp_min(1)


def trim_decoded(tokens: torch.Tensor, probs: torch.Tensor, lengths: torch.Tensor) -> DecodeResult:
    """Trim to the longest line; confidence = mean probability of the chosen tokens, eos included.

    VietOCR's ``translate`` averages only character tokens (ids > 3): eos is left out, and characters a
    finished line keeps emitting after its eos are counted. Here a line ends at its eos.
    """
    width = max(int(lengths.max()), 1) if lengths.numel() else 1
    return DecodeResult(tokens[:, :width], probs[:, :width].sum(1) / lengths.clamp_min(1))


def decode_batch(model: VietOCRModel, images: torch.Tensor, sos_id: int, eos_id: int, pad_id: int,
                 beam_size: int = 1, max_len: int = 128, memory=None) -> DecodeResult:
    """Greedy (``beam_size`` 1, cached) or batched beam search: (tokens (N, L), confidence (N,)).
    ``memory``: ``model.encode(images)`` when the caller has already computed it."""
    kwargs = dict(sos_id=sos_id, eos_id=eos_id, pad_id=pad_id, max_len=max_len, memory=memory)
    if beam_size <= 1:
        return model.greedy_decode(images, **kwargs)
    return model.beam_search(images, beam_size=beam_size, **kwargs)


# the sequence models' settings a VietOCR config (its ``transformer:`` section) or ``--model-kwargs`` may
# change, in VietOCR's names; the CNN's output width follows d_model / img_channel, as VietOCR requires
MODEL_KWARGS = {
    "vgg_transformer": ("d_model", "nhead", "num_encoder_layers", "num_decoder_layers", "dim_feedforward",
                        "max_seq_length", "pos_dropout", "trans_dropout"),
    "vgg_seq2seq": ("encoder_hidden", "decoder_hidden", "img_channel", "decoder_embedded", "dropout"),
}


def build_vietocr(arch: str, vocab_size: int, model_size: str = "full", pretrained: bool = False,
                  pretrained_weights: str | None = None, grad_checkpointing: bool = False,
                  ctc_head: bool = False, model_kwargs: dict | None = None) -> VietOCRModel:
    """Build ``vgg_transformer`` or ``vgg_seq2seq`` at ``model_size`` "full" (VietOCR's; 37,650,217 /
    22,371,113 parameters with 233 tokens) or "small" (1,285,417 / 926,505).

    ``pretrained`` loads torchvision's ImageNet VGG19-bn into the CNN (full size only); a
    ``pretrained_weights`` file is used instead of the download and implies ``pretrained``.
    ``ctc_head`` adds the training-only linear CTC head (``E * V + V`` more parameters).
    ``model_kwargs`` change the sequence model's settings (:data:`MODEL_KWARGS`, VietOCR's names).
    """
    if arch not in VIETOCR_ARCHS:
        raise DataError(f"unknown architecture {arch!r}; choose from: {', '.join(VIETOCR_ARCHS)}", param="arch")
    if model_size not in SIZES:
        raise DataError(f"unknown model size {model_size!r}; choose from: {', '.join(SIZES)}", param="model_size")
    pretrained = pretrained or bool(pretrained_weights)
    if pretrained and model_size != "full":
        raise DataError(f"pretrained VGG19-bn weights exist only for model size 'full', not {model_size!r}",
                        param="model_size")
    cfg = SIZES[model_size]
    kw = _sequence_kwargs(arch, cfg, model_kwargs or {})
    hidden = kw["d_model"] if arch == "vgg_transformer" else kw["img_channel"]
    backbone = VGGBackbone(cfg["cnn_cfg"], hidden, cfg["cnn_dropout"])
    if pretrained:
        load_vgg19_bn_features(backbone.features, pretrained_weights)
    if arch == "vgg_transformer":
        seq = LanguageTransformer(vocab_size, **kw, scale_src=cfg["scale_src"])
        memory_dim = kw["d_model"]
    else:
        seq = Seq2Seq(vocab_size, **kw)
        memory_dim = 2 * kw["encoder_hidden"]  # bidirectional GRU outputs
    head = nn.Linear(memory_dim, vocab_size) if ctc_head else None
    model = VietOCRModel(CNN(backbone), seq, pretrained=pretrained, ctc_head=head)
    model.set_grad_checkpointing(grad_checkpointing)
    return model


def _sequence_kwargs(arch: str, cfg: dict, overrides: dict) -> dict:
    """The sequence model's constructor arguments: the size's, then ``overrides``."""
    unknown = sorted(set(overrides) - set(MODEL_KWARGS[arch]))
    if unknown:
        raise DataError(f"{arch} has no setting {', '.join(unknown)}; it has: {', '.join(MODEL_KWARGS[arch])}",
                        param="model_kwargs")
    d = cfg["d_model"]
    if arch == "vgg_transformer":
        kw = dict(d_model=d, nhead=cfg["nhead"], num_encoder_layers=cfg["num_encoder_layers"],
                  num_decoder_layers=cfg["num_decoder_layers"], dim_feedforward=cfg["dim_feedforward"],
                  max_seq_length=1024, pos_dropout=cfg["dropout"], trans_dropout=cfg["dropout"])
    else:
        kw = dict(encoder_hidden=cfg["hidden"], decoder_hidden=cfg["hidden"], img_channel=d,
                  decoder_embedded=cfg["hidden"], dropout=0.1)
    kw.update(overrides)
    if arch == "vgg_transformer" and kw["d_model"] % kw["nhead"]:
        raise DataError(f"d_model {kw['d_model']} is not divisible by nhead {kw['nhead']}", param="model_kwargs")
    return kw


def config_from_state_dict(state: dict, nhead: int | None = None) -> dict:
    """The ``build_vietocr`` arguments (arch, vocab_size, model_size, model_kwargs) that a state dict in
    VietOCR's key layout (which this module shares: ``cnn.model.features.*``, ``transformer.*``) was saved
    from, read from its shapes: what VietOCR's ``vgg_transformer.pth`` needs to load here. The number of
    attention heads is not in the shapes: ``nhead`` (default: the size's, 8 for VietOCR's)."""
    first = state.get("cnn.model.features.0.weight")
    if first is None:
        raise DataError("no 'cnn.model.features.0.weight': not a VietOCR vgg_transformer / vgg_seq2seq state dict")
    size = next((k for k, c in SIZES.items() if c["cnn_cfg"][0] == first.shape[0]), None)
    if size is None:
        raise DataError(f"its VGG starts with {first.shape[0]} channels, neither VietOCR's VGG19-bn (64) nor the "
                        f"small CNN ({SMALL_CNN_CFG[0]})")
    if "transformer.embed_tgt.weight" in state:
        vocab_size, d_model = state["transformer.embed_tgt.weight"].shape
        layers = {part: len({k.split(".")[4] for k in state if k.startswith(f"transformer.transformer.{part}.layers.")})
                  for part in ("encoder", "decoder")}
        found = dict(d_model=d_model, nhead=nhead or SIZES[size]["nhead"], num_encoder_layers=layers["encoder"],
                     num_decoder_layers=layers["decoder"],
                     dim_feedforward=state["transformer.transformer.encoder.layers.0.linear1.weight"].shape[0],
                     max_seq_length=state["transformer.pos_enc.pe"].shape[0])
        arch = "vgg_transformer"
    elif "transformer.decoder.embedding.weight" in state:
        vocab_size, embedded = state["transformer.decoder.embedding.weight"].shape
        hidden3, img_channel = state["transformer.encoder.rnn.weight_ih_l0"].shape
        found = dict(encoder_hidden=hidden3 // 3, decoder_hidden=state["transformer.encoder.fc.weight"].shape[0],
                     img_channel=img_channel, decoder_embedded=embedded)
        arch = "vgg_seq2seq"
    else:
        raise DataError("neither a transformer nor a seq2seq decoder in it: not a VietOCR state dict")
    defaults = _sequence_kwargs(arch, SIZES[size], {})
    kwargs = {k: int(v) for k, v in found.items() if int(v) != defaults[k]}
    return {"arch": arch, "vocab_size": int(vocab_size), "model_size": size, "model_kwargs": kwargs}
