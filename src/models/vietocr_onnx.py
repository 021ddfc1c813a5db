"""VietOCR models (:mod:`src.models.vietocr`) in forms ONNX can hold: the CNN + encoder as one graph and
one decoder step as another, whose state goes in and comes out as plain tensors. They call the trained
model's own submodules, so they need no weights of their own and compute what
:meth:`~src.models.vietocr.VietOCRModel.greedy_decode` computes.

Every tensor is batch-first, so a driver drops finished lines from all of them with one index
(:class:`src.tasks.ocr_onnx.OnnxRecognizer`). Names in ``INPUTS``/``OUTPUTS`` are the graphs' input and
output names; a decoder output ``next_X`` is the decoder input ``X`` of the following step, and a
decoder input that the encoder also outputs starts as the encoder's value.

Transformer (L decoder layers, h heads, d = d_model / h, S encoder positions, t the step):

- encoder: ``image`` (N, 3, 32, W) in [0, 1] -> ``cross_k``, ``cross_v`` (N, L, h, S, d), the
  cross-attention keys and values of every decoder layer, computed once per line;
- step: ``tokens`` (N,) int64, ``position`` (1,) int64 = t, ``self_k``/``self_v`` (N, L, h, t + 1, d),
  ``cross_k``/``cross_v`` -> ``logits`` (N, V), ``next_self_k``/``next_self_v`` (N, L, h, t + 2, d).
  The self-attention cache grows by one position per step; its first slot is a zero placeholder that
  attention never reads, so that the first step's cache is not empty (exporters fix a dimension whose
  example size is 0 or 1, and a first-step cache of length 0 would be the only way to start).

Seq2seq (GRU with additive attention, Bahdanau et al. 2015):

- encoder: ``image`` -> ``hidden`` (N, H_dec), ``encoder_outputs`` (N, S, 2 H_enc);
- step: ``tokens``, ``position``, ``hidden``, ``encoder_outputs`` -> ``logits``, ``next_hidden``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.models.vietocr import DecodeResult, LanguageTransformer, Seq2Seq, VietOCRModel, trim_decoded

INPUTS = {"encoder": ("image",),
          "vgg_transformer": ("tokens", "position", "self_k", "self_v", "cross_k", "cross_v"),
          "vgg_seq2seq": ("tokens", "position", "hidden", "encoder_outputs")}
OUTPUTS = {"vgg_transformer": (("cross_k", "cross_v"), ("logits", "next_self_k", "next_self_v")),
           "vgg_seq2seq": (("hidden", "encoder_outputs"), ("logits", "next_hidden"))}


def arch_of(model: VietOCRModel) -> str:
    return "vgg_transformer" if isinstance(model.transformer, LanguageTransformer) else "vgg_seq2seq"


class OCREncoder(nn.Module):
    """Images (N, 3, 32, W) -> what every decoding step reads (see the module docstring)."""

    def __init__(self, model: VietOCRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        seq = self.model.transformer
        memory = self.model.encode(image)
        if isinstance(seq, Seq2Seq):
            hidden, outputs = memory
            return hidden, outputs.transpose(0, 1)                               # N, H; N, S, 2H
        keys, values = zip(*seq.cross_kv(memory))                               # L x (N, h, S, d)
        return torch.stack(keys, 1), torch.stack(values, 1)                      # N, L, h, S, d


class TransformerStep(nn.Module):
    """One decoding step of :class:`LanguageTransformer` with a growing key/value cache: the same
    arithmetic as its ``_layer_step`` (post-norm as VietOCR's layers are; pre-norm too)."""

    def __init__(self, seq: LanguageTransformer) -> None:
        super().__init__()
        self.seq = seq

    def forward(self, tokens, position, self_k, self_v, cross_k, cross_v):
        seq = self.seq
        x = seq.embed_tgt(tokens) * math.sqrt(seq.d_model) + seq.pos_enc.pe[:, 0].index_select(0, position)   # N, E
        # slot 0 is the placeholder (module docstring): every key but it is visible
        visible = (torch.arange(self_k.shape[3] + 1, device=tokens.device) > 0)[None]   # 1, t + 2
        new_k, new_v = [], []
        for i, layer in enumerate(seq.transformer.decoder.layers):
            x, k, v = self._layer(layer, x, self_k[:, i], self_v[:, i], cross_k[:, i], cross_v[:, i], visible)
            new_k.append(k)
            new_v.append(v)
        norm = seq.transformer.decoder.norm
        logits = seq.fc(norm(x) if norm is not None else x)
        return logits, torch.stack(new_k, 1), torch.stack(new_v, 1)

    def _layer(self, layer: nn.TransformerDecoderLayer, x, k_cache, v_cache, k_mem, v_mem, visible):
        n, e = x.shape
        h = self.seq.nhead
        d = e // h
        caches = []

        def self_attn(y):
            attn = layer.self_attn
            q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).view(n, 3, h, d).unbind(1)   # N, h, d
            keys = torch.cat([k_cache, k[:, :, None]], 2)                      # N, h, t + 2, d
            values = torch.cat([v_cache, v[:, :, None]], 2)
            caches.extend((keys, values))
            out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=visible)
            return attn.out_proj(out.reshape(n, e))

        def cross_attn(y):
            attn = layer.multihead_attn
            b_q = attn.in_proj_bias[:e] if attn.in_proj_bias is not None else None
            q = F.linear(y, attn.in_proj_weight[:e], b_q).view(n, h, 1, d)
            return attn.out_proj(F.scaled_dot_product_attention(q, k_mem, v_mem).reshape(n, e))

        def ff(y):
            return layer.linear2(layer.activation(layer.linear1(y)))

        if layer.norm_first:
            x = x + self_attn(layer.norm1(x))
            x = x + cross_attn(layer.norm2(x))
            x = x + ff(layer.norm3(x))
        else:
            x = layer.norm1(x + self_attn(x))
            x = layer.norm2(x + cross_attn(x))
            x = layer.norm3(x + ff(x))
        return x, caches[0], caches[1]


class Seq2SeqStep(nn.Module):
    """One GRU decoding step of :class:`Seq2Seq`; ``position`` is unused (kept for one driver)."""

    def __init__(self, seq: Seq2Seq) -> None:
        super().__init__()
        self.seq = seq

    def forward(self, tokens, position, hidden, encoder_outputs):
        return self.seq.decoder(tokens, hidden, encoder_outputs)


def decoder_step(model: VietOCRModel) -> nn.Module:
    seq = model.transformer
    return TransformerStep(seq) if isinstance(seq, LanguageTransformer) else Seq2SeqStep(seq)


def example_inputs(model: VietOCRModel, batch: int, width: int, steps: int, sos_id: int,
                   generator: torch.Generator | None = None) -> tuple[tuple, tuple]:
    """(encoder inputs, decoder-step inputs) after ``steps`` steps, for export and checks: a random image
    of ``width`` px, its encoder outputs, random tokens and a random cache of the right shapes."""
    image = torch.rand(batch, 3, 32, width, generator=generator)
    with torch.no_grad():
        memory = OCREncoder(model).eval()(image)
    tokens = torch.randint(4, model.transformer.fc.out_features if isinstance(model.transformer, LanguageTransformer)
                           else model.transformer.decoder.output_dim, (batch,), generator=generator)
    tokens[0] = sos_id
    position = torch.tensor([steps])
    if isinstance(model.transformer, Seq2Seq):
        return (image,), (tokens, position, memory[0], memory[1])
    n, layers, h, _, d = memory[0].shape
    cache = [torch.randn(n, layers, h, steps + 1, d, generator=generator) for _ in range(2)]
    return (image,), (tokens, position, *cache, *memory)


class OnnxRecognizer:
    """Greedy decoding of an exported encoder + decoder-step pair with ONNX Runtime: the same rule as
    :meth:`~src.models.vietocr.VietOCRModel.greedy_decode` (a line leaves the batch at its eos, all stop
    after ``max_len`` tokens), on the CPU.

    Args:
        encoder_path / decoder_path: the two files ``train_vietocr.py --export onnx`` writes.
        threads: ONNX Runtime's intra-op threads (default: PyTorch's, so the two compare fairly).
    """

    def __init__(self, encoder_path: str, decoder_path: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(encoder_path, options, providers=providers)
        self.decoder = ort.InferenceSession(decoder_path, options, providers=providers)
        self.enc_names = [o.name for o in self.encoder.get_outputs()]
        self.dec_inputs = {i.name: i.shape for i in self.decoder.get_inputs()}
        self.dec_outputs = [o.name for o in self.decoder.get_outputs()]

    def _start(self, memory: dict, n: int) -> dict:
        """The first step's state: the encoder's outputs, and an empty (placeholder) cache for the rest."""
        state = {}
        for name, shape in self.dec_inputs.items():
            if name in memory:
                state[name] = memory[name]
            elif name not in ("tokens", "position"):
                state[name] = np.zeros([n if d == "batch" else (d if isinstance(d, int) else 1) for d in shape],
                                       np.float32)
        return state

    def decode(self, images: torch.Tensor, sos_id: int, eos_id: int, pad_id: int, max_len: int = 128) -> DecodeResult:
        """Images (N, 3, 32, W) -> :class:`~src.models.vietocr.DecodeResult` (tokens (N, L), confidence (N,))."""
        x = images.detach().float().cpu().numpy()
        n = x.shape[0]
        state = self._start(dict(zip(self.enc_names, self.encoder.run(None, {"image": x}))), n)
        tokens = np.full((n, max_len), pad_id, np.int64)
        probs = np.zeros((n, max_len), np.float32)
        lengths = np.full(n, max_len, np.int64)
        alive = np.arange(n)
        inp = np.full(n, sos_id, np.int64)
        for t in range(max_len):
            feed = {"tokens": inp, "position": np.array([t], np.int64), **state}
            out = dict(zip(self.dec_outputs, self.decoder.run(None, {k: v for k, v in feed.items()
                                                                    if k in self.dec_inputs})))
            logits = out["logits"]
            tok = logits.argmax(-1)
            # the chosen token's softmax probability, as greedy_decode reports it
            prob = 1.0 / np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)
            tokens[alive, t], probs[alive, t] = tok, prob
            state.update({k[len("next_"):]: v for k, v in out.items() if k.startswith("next_")})
            ended = tok == eos_id
            if ended.any():
                lengths[alive[ended]] = t + 1
                keep = np.flatnonzero(~ended)
                if keep.size == 0:
                    break
                alive, tok = alive[keep], tok[keep]
                state = {k: v[keep] for k, v in state.items()}
            inp = tok
        return trim_decoded(torch.from_numpy(tokens), torch.from_numpy(probs), torch.from_numpy(lengths))
