import pytest
import torch
import torch.nn.functional as F

from src.models.classifiers import MODELS, create_classifier
from src.models.layers.attention import BoTBlock, LinearAttention2D, SoftmaxAttention2D, sinusoidal_position_2d
from src.training.optim import param_groups


def test_parameter_counts_match_seed():
    # ResNet18_Hybrid: the seed's 11,647,204; MobileNet: the seed's 1,748,980 minus the unused conv_head
    assert sum(p.numel() for p in create_classifier("ResNet18_Hybrid", 4).parameters()) == 11_647_204
    assert sum(p.numel() for p in create_classifier("MobileNetV3_Small_BoT_Linear", 4).parameters()) == \
        1_748_980 - 590_848


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    model = create_classifier(name, num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 4)
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert torch.isfinite(out).all()


def _naive_linear_attention(attn: LinearAttention2D, x):
    q, k, v = attn.project(x)  # B, h, N, d
    q = F.elu(q * attn.head_dim ** -0.5) + 1
    k = F.elu(k) + 1
    weights = q @ k.transpose(-1, -2)                       # B, h, N, N  (explicit, O(N^2))
    out = (weights / weights.sum(-1, keepdim=True)) @ v
    return attn.merge(out, *x.shape[-2:])


def test_linear_attention_equals_explicit_normalised_kernel_attention():
    torch.manual_seed(0)
    attn = LinearAttention2D(32, heads=4)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(attn(x), _naive_linear_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_softmax_attention_equals_manual_softmax():
    torch.manual_seed(0)
    attn = SoftmaxAttention2D(32, heads=4)
    x = torch.randn(2, 32, 4, 6)
    q, k, v = attn.project(x)
    manual = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
    torch.testing.assert_close(attn(x), attn.merge(manual, 4, 6), rtol=1e-5, atol=1e-5)


def test_linear_attention_is_fp32_and_finite_under_autocast():
    torch.manual_seed(0)
    block = BoTBlock(64, heads=4, attention="linear")
    x = torch.randn(2, 64, 7, 7) * 50  # large activations: fp16/bf16 normalisers would underflow/overflow
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), block(x), rtol=0.1, atol=0.5)


def test_position_encoding_is_fixed_and_distinct_per_position():
    pe = sinusoidal_position_2d(16, 3, 4)
    assert pe.shape == (16, 3, 4)
    flat = pe.reshape(16, -1).T
    assert torch.cdist(flat, flat).add(torch.eye(12) * 1e3).min() > 1e-3
    torch.testing.assert_close(pe, sinusoidal_position_2d(16, 3, 4))


def test_param_groups_head_lr_for_new_parts_and_no_decay_on_norms_biases():
    model = create_classifier("ResNet18_Hybrid", 4)
    groups = param_groups(model, base_lr=1e-4, head_lr=1e-3, weight_decay=0.05)
    name_of = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = name_of[id(p)]
            assert g["lr"] == (1e-4 if n.startswith("backbone.") else 1e-3), n
            assert g["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0), n
    assigned = sum(len(g["params"]) for g in groups)
    assert assigned == len(list(model.parameters()))
    heads = {n for g in groups if g["lr"] == 1e-3 for p in g["params"] for n in [name_of[id(p)]]}
    assert any(n.startswith("blocks.0.ca") for n in heads) and any(n.startswith("blocks.1.attn") for n in heads)
    assert "classifier.weight" in heads


def test_a_bad_pretrained_weights_file_is_one_line_naming_it(tmp_path):
    """Before: timm's loader raised from inside its state-dict code."""
    from src.errors import DataError
    from src.models.timm_features import create_timm_model

    bad = tmp_path / "resnet18.pth"
    bad.write_bytes(b"half a download")
    with pytest.raises(DataError) as info:
        create_timm_model("resnet18", pretrained_weights=str(bad))
    assert info.value.param == "pretrained_weights" and "\n" not in str(info.value)
    assert str(info.value).startswith(f"{bad}: not usable weights for timm model 'resnet18'")
