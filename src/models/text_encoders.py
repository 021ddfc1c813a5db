"""Text encoders of the grounding model (:mod:`src.models.ovd`): token features and phrase spans.

Both encoders take a batch of captions and the phrases as spans of the caption's whitespace words,
and return token features with the phrases re-expressed over those tokens:

    forward(text, word_mask (B, L), phrase_mask (B, P, L)) -> tokens (B, T, dim), token_mask (B, T),
                                                               phrase_token_mask (B, P, T)

* :class:`HashedTextEncoder` (``text_encoder="hashed"``, the default): fastText-style hashed
  character n-gram word embeddings (Bojanowski et al., TACL 2017) + a small Transformer encoder,
  trained from scratch, offline, no vocabulary file. One token per word, so T = L and the masks pass
  through unchanged. ``text`` is the (B, L, G) n-gram ids of :func:`src.data.grounding.encode_words`.
* :class:`PretrainedTextEncoder` (``text_encoder=<Hugging Face name or local folder>``): any
  ``transformers`` encoder (``AutoModel``/``AutoTokenizer``), e.g. RoBERTa (Liu et al., 2019), which
  MDETR (Kamath et al., ICCV 2021) uses, or BERT (Devlin et al., NAACL 2019), which GLIP (Li et al.,
  CVPR 2022) uses; its last hidden states projected to ``dim`` by a new Linear. ``text`` is the B
  caption strings. The subword tokenizer runs inside ``forward`` (the data pipeline and its workers
  stay tokenizer-free, and a checkpoint needs only the model's name or folder to rebuild it), and
  each word's character span is mapped to the subword tokens whose offsets
  (``return_offsets_mapping``) overlap it, so a phrase's tokens are exactly the subwords inside its
  characters ("snowboarder" -> snow ##board ##er). Captions longer than the model's maximum length
  (512 tokens for BERT/RoBERTa) are truncated, with a warning: the words past the cut are not read.

``transformers`` is imported only when a pretrained encoder is built, so the project works without it.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager

import torch
from torch import nn

from src.errors import DataError

DEFAULT_BUCKETS = 2 ** 15
HASHED = "hashed"

log = logging.getLogger("src")


class HashedTextEncoder(nn.Module):
    """Hashed n-gram word embeddings (mean of a word's n-gram vectors) + learned positions + a
    pre-norm Transformer encoder. (B, L, G) ids -> (B, L, dim); one token per word."""

    own_lr_prefix: str | None = None   # everything here trains from random init, at the head's lr

    def __init__(self, dim: int, layers: int, heads: int, buckets: int = DEFAULT_BUCKETS, max_words: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ngrams = nn.Embedding(buckets, dim, padding_idx=0)
        nn.init.normal_(self.ngrams.weight, std=0.02)
        with torch.no_grad():
            self.ngrams.weight[0].zero_()
        self.positions = nn.Parameter(torch.randn(max_words, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, words: torch.Tensor, text_mask: torch.Tensor,
                phrase_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = (words > 0).sum(-1, keepdim=True).clamp(min=1)
        x = self.ngrams(words).sum(2) / counts                          # padding row is zero
        x = x + self.positions[: words.shape[1]]
        return self.norm(self.encoder(x, src_key_padding_mask=~text_mask)), text_mask, phrase_mask


def word_spans(caption: str) -> list[tuple[int, int]]:
    """Character (start, end) of each whitespace-separated word of ``caption``, in order."""
    return [m.span() for m in re.finditer(r"\S+", caption)]


def words_to_tokens(offsets: torch.Tensor, spans: list[list[tuple[int, int]]], num_words: int) -> torch.Tensor:
    """(B, L, T) True where subword token t overlaps word l's characters.

    ``offsets`` (B, T, 2) are the tokenizer's character offsets; special and padding tokens have an
    empty span (0, 0) and belong to no word. Overlap rather than containment: a tokenizer that keeps
    a leading space in a token's offsets (some byte-level BPEs) still maps the token to its word."""
    B = offsets.shape[0]
    bounds = torch.zeros(B, num_words, 2, dtype=offsets.dtype)
    for b, s in enumerate(spans):
        if s[:num_words]:
            bounds[b, :len(s[:num_words])] = torch.tensor(s[:num_words], dtype=offsets.dtype)
    t_start, t_end = offsets[..., 0][:, None, :], offsets[..., 1][:, None, :]        # (B, 1, T)
    w_start, w_end = bounds[..., 0][..., None], bounds[..., 1][..., None]            # (B, L, 1)
    return (t_end > t_start) & (w_end > w_start) & (t_start < w_end) & (t_end > w_start)


class PretrainedTextEncoder(nn.Module):
    """A Hugging Face encoder's last hidden states, projected: captions -> (B, T, dim).

    Args:
        model: a ``transformers`` encoder (``AutoModel``) whose output has ``last_hidden_state``
            (B, T, hidden_size).
        tokenizer: its fast tokenizer (character offsets are needed for the span mapping).
        dim: width of the grounding model; ``proj`` maps hidden_size -> dim (new weights, head lr).
        freeze: keep the pretrained weights fixed (no gradients, always in eval mode, so dropout
            does not perturb features the projection learns to read).
        max_length: tokens read per caption (the model's positions); longer captions are truncated.
        name: the model's hub name or local folder, for messages.
    """

    own_lr_prefix = "model."   # the pretrained text model: its own lr group (--text-lr)

    def __init__(self, model: nn.Module, tokenizer, dim: int, freeze: bool, max_length: int, name: str) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.freeze, self.max_length, self.name = freeze, max_length, name
        self.proj = nn.Linear(model.config.hidden_size, dim)
        self.model.requires_grad_(not freeze)
        self._warned_cut = False
        if freeze:
            self.model.eval()

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def tokenize(self, captions: list[str], num_words: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(tokenizer outputs for the model, (B, num_words, T) word -> token map), on the CPU."""
        enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                             return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        spans = [word_spans(c) for c in captions]
        w2t = words_to_tokens(offsets, spans, num_words)
        # the tokenizer gives every word at least one token, so a tokenless last word was truncated
        cut = sum(1 for b, s in enumerate(spans) if s and len(s) <= num_words and not w2t[b, len(s) - 1].any())
        if cut and not self._warned_cut:
            log.warning("text encoder %s reads at most %d tokens: %d caption(s) in this batch were truncated "
                        "(their last words, and phrases there, are not read); later cuts are not logged",
                        self.name, self.max_length, cut)
            self._warned_cut = True
        return dict(enc), w2t

    def features(self, captions: list[str], num_words: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last hidden states before projection (B, T, hidden_size), token mask (B, T) and the
        (B, L, T) word -> token map, on the model's device."""
        num_words = max((len(word_spans(c)) for c in captions), default=0) if num_words is None else num_words
        enc, w2t = self.tokenize(captions, num_words)
        device = self.proj.weight.device
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.model(**enc).last_hidden_state
        return hidden, enc["attention_mask"].bool(), w2t.to(device)

    def forward(self, captions: list[str], text_mask: torch.Tensor,
                phrase_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``captions``: B strings whose whitespace words are ``text_mask``'s (B, L) axis;
        ``phrase_mask`` (B, P, L) over words -> tokens (B, T, dim), token mask (B, T) (special tokens
        included: the fusion reads them as context) and phrase mask (B, P, T) over subword tokens."""
        hidden, token_mask, w2t = self.features(captions, text_mask.shape[1])
        phrase_tokens = (phrase_mask.to(hidden.dtype) @ w2t.to(hidden.dtype)) > 0      # (B, P, T)
        return self.proj(hidden), token_mask, phrase_tokens


def build_text_encoder(name: str, dim: int, layers: int, heads: int, buckets: int = DEFAULT_BUCKETS,
                       max_words: int = 64, dropout: float = 0.0, freeze: bool = False) -> nn.Module:
    """``"hashed"``: :class:`HashedTextEncoder` (``layers``, ``heads``, ``buckets``, ``max_words``);
    otherwise a Hugging Face name or local folder: :class:`PretrainedTextEncoder` (``freeze``)."""
    if name == HASHED:
        return HashedTextEncoder(dim, layers, heads, buckets, max_words, dropout)
    model, tokenizer = load_pretrained_text_model(name)
    return PretrainedTextEncoder(model, tokenizer, dim, freeze, model_max_length(model, tokenizer), name)


def model_max_length(model: nn.Module, tokenizer) -> int:
    """Tokens a caption may have: the tokenizer's limit, capped by the model's position table
    (tokenizers without a limit report a huge sentinel)."""
    limits = [n for n in (getattr(tokenizer, "model_max_length", None),
                          getattr(model.config, "max_position_embeddings", None)) if n and n < 1_000_000]
    return min(limits) if limits else 512


@contextmanager
def _quiet_transformers(hf_logging):
    """Load without transformers' progress bars and load report (its only expected entries are the
    pooler weights we drop; what matters is checked in :func:`_load_model`), and without the hub
    client's line per connection retry: an unreachable hub ends in one error line of ours."""
    hub_logger = logging.getLogger("huggingface_hub")
    level, bars, hub_level = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), hub_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hub_logger.setLevel(hub_level)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained_text_model(name: str):
    """(``AutoModel``, fast ``AutoTokenizer``) of a hub name or local folder; one ``DataError`` line
    (``param="text_encoder"``) when transformers is missing, the folder does not exist, or the hub
    cannot be reached."""
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise DataError(f"text model {name} needs the transformers package: pip install transformers",
                        param="text_encoder") from None
    local = os.path.isdir(name)
    if not local and name.startswith(("/", "./", "../", "~")):
        raise DataError(f"{name}: folder not found (a local Hugging Face model folder, or a hub name "
                        "such as roberta-base)", param="text_encoder")
    if not local:   # without network the hub client retries for about 45 s before giving up
        log.info("text model %s: from the Hugging Face hub (or its local cache)", name)
    try:
        with _quiet_transformers(hf_logging):
            tokenizer = transformers.AutoTokenizer.from_pretrained(name, local_files_only=local)
            model = _load_model(transformers.AutoModel, name, local)
    except OSError as exc:
        raise DataError(_load_error(name, exc), param="text_encoder") from None
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"text model {name}: its tokenizer has no fast (tokenizers) version, which the "
                        "phrase spans need for character offsets", param="text_encoder")
    return model, tokenizer


def _load_model(auto_model, name: str, local: bool) -> nn.Module:
    # BERT/RoBERTa's pooler (a [CLS] head) is unused here; built, it would get no gradient and stop
    # DDP ("parameters that were not used"). Models without a pooler do not take the argument.
    try:
        model, info = auto_model.from_pretrained(name, local_files_only=local, add_pooling_layer=False,
                                                 output_loading_info=True)
    except TypeError:
        model, info = auto_model.from_pretrained(name, local_files_only=local, output_loading_info=True)
    if info.get("missing_keys"):
        log.warning("text model %s: %d weights not in its checkpoint start from random init: %s", name,
                    len(info["missing_keys"]), ", ".join(sorted(info["missing_keys"])[:5]))
    if not hasattr(model.config, "hidden_size"):
        raise DataError(f"text model {name}: {type(model).__name__} has no hidden_size; use an encoder "
                        "such as BERT, RoBERTa or MiniLM", param="text_encoder")
    return model


def _load_error(name: str, exc: OSError) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "connect" in first or os.environ.get("HF_HUB_OFFLINE") in ("1", "ON", "YES", "TRUE"):
        return (f"could not load text model {name}: no network here; pass a local folder (e.g. one written by "
                f"`hf download {name} --local-dir models/{name.split('/')[-1]}` on a machine with network)")
    return f"could not load text model {name}: {first}"
