"""RefDet model: yolov8n's layer widths/depths, shapes, gradients (prototypes included), fusion that
really depends on the reference, and a support cache that changes nothing but the cost."""
import pytest
import torch

from src.models.layers.yolo import YOLOv8Backbone, YOLOv8PAN
from src.models.refdet import SupportCache, build_refdet_model, make_anchors

SUPPORT = 32   # 2 x 2 DINO patches: the ViT's cost stays small in tests


def _count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_backbone_and_neck_match_ultralytics_yolov8n_layers_0_to_21():
    backbone = YOLOv8Backbone(width=0.25, depth=0.33)
    neck = YOLOv8PAN(backbone.channels, depth=0.33)
    # ultralytics yolov8n.yaml layers 0-21 (everything but Detect): 2,259,536 parameters
    assert abs(_count(backbone, neck) - 2_259_536) / 2_259_536 < 0.01
    assert backbone.channels == (64, 128, 256)
    # C2f repeats at depth 0.33: 1, 2, 2, 1 in the backbone, 1 in each neck C2f
    assert [len(s[-1].m) for s in (backbone.stem, backbone.stage3, backbone.stage4)] == [1, 2, 2]
    assert len(backbone.stage5[1].m) == 1 and len(neck.top4.m) == 1
    p3, p4, p5 = neck(*backbone(torch.randn(1, 3, 128, 96)))
    assert p3.shape == (1, 64, 16, 12) and p4.shape == (1, 128, 8, 6) and p5.shape == (1, 256, 4, 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_refdet_model(support_size=SUPPORT, freeze_dino_layers=6, embed_dim=32).eval()


def _inputs(V=2, B=4, size=64):
    torch.manual_seed(1)
    return (torch.randn(B, 3, size, size), torch.randn(V, 3, 3, SUPPORT, SUPPORT),
            torch.tensor([0, 0, 1, 1][:B]))


def test_forward_shapes_and_anchor_layout(model):
    images, support, qv = _inputs()
    out = model(images, support, qv)
    A = 8 * 8 + 4 * 4 + 2 * 2
    assert out["logits"].shape == (4, A) and out["dist"].shape == (4, A, 4, 16)
    assert out["embed"].shape == (4, A, 32) and out["proto"].shape == (4, 32)
    assert torch.isfinite(out["logits"]).all()
    anchors, strides = make_anchors([(8, 8), (4, 4), (2, 2)])
    assert torch.equal(out["anchors"], anchors) and anchors[0].tolist() == [4.0, 4.0]
    assert anchors[64].tolist() == [8.0, 8.0] and strides[64].item() == 16.0
    breakdown = model.param_breakdown()
    assert breakdown["detector"] == 2_259_536 and breakdown["dino"] == 21_586_944
    assert sum(breakdown.values()) == _count(model)


def test_every_trainable_parameter_gets_a_gradient_and_frozen_blocks_none():
    torch.manual_seed(0)
    model = build_refdet_model(support_size=SUPPORT, freeze_dino_layers=6, embed_dim=32).train()
    images, support, qv = _inputs()
    out = model(images, support, qv)
    (out["logits"].sum() + out["dist"].float().sum() + out["embed"].sum()).backward()
    enc = model.support_encoder.vit
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(p.grad is None for p in enc.blocks[:6].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.blocks[6:].parameters()
               if p.ndim > 1)
    # the prototypes are trained (the seed computed them under no_grad)
    assert model.proto_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["psalm", "cheaf"])
def test_the_reference_conditions_the_query_features(fusion):
    torch.manual_seed(0)
    model = build_refdet_model(support_size=SUPPORT, fusion=fusion, embed_dim=32).eval()
    if fusion == "cheaf":   # FiLM starts at the identity; give it weights as training would
        for f in model.fusion:
            torch.nn.init.normal_(f.film.weight, std=0.1)
    images, support, qv = _inputs(V=1, B=2)
    qv = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        feats = model.features(images)
        a = model.fuse(feats, model.encode_support(support), qv)
        b = model.fuse(feats, model.encode_support(torch.randn_like(support)), qv)
    for x, y, f in zip(a, b, feats):
        assert not torch.allclose(x, y, atol=1e-4)      # another reference, other fused features
        assert not torch.allclose(x, f, atol=1e-4)      # and the fusion is not the identity


def test_support_cache_hits_and_gives_the_same_prototypes():
    torch.manual_seed(0)
    model = build_refdet_model(support_size=SUPPORT, freeze_dino_layers=6, embed_dim=32,
                               support_cache_mb=10).eval()
    _, support, _ = _inputs()
    with torch.no_grad():
        plain = model.encode_support(support)                     # no keys: no cache
        first = model.encode_support(support, ["v1@0", "v2@0"])
        second = model.encode_support(support, ["v1@0", "v2@0"])
    cache = model.support_cache
    assert (cache.hits, cache.misses) == (2, 2) and len(cache) == 2
    for a, b, c in zip(plain.protos, first.protos, second.protos):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(b, c, atol=1e-5)
    assert cache.reset_counts() == (2, 2) and (cache.hits, cache.misses) == (0, 0)


def test_cache_is_bypassed_when_nothing_is_frozen_and_is_bounded():
    model = build_refdet_model(support_size=SUPPORT, freeze_dino_layers=0, embed_dim=32, support_cache_mb=10)
    _, support, _ = _inputs()
    model.encode_support(support, ["a@0", "b@0"])
    assert len(model.support_cache) == 0 and model.support_cache.misses == 0
    cache = SupportCache(max_mb=1)                 # 1 MiB holds two 0.5 MiB entries, not three
    for key in "abc":
        cache.put(key, torch.zeros(128 * 1024))
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None


def test_freeze_layers_out_of_range_is_refused():
    with pytest.raises(ValueError, match="freeze_layers"):
        build_refdet_model(support_size=SUPPORT, freeze_dino_layers=13)


def test_negative_pairing_shares_the_backbone_and_only_changes_the_reference(model):
    images, support, qv = _inputs()
    with torch.no_grad():
        plain = model(images, support, qv)
        both = model(images, support, qv, negative_video=1 - qv)
        swapped = model(images, support, 1 - qv)
    assert both["logits"].shape == (8, plain["logits"].shape[1])
    assert torch.allclose(both["logits"][:4], plain["logits"], atol=1e-4)      # true pairings first
    assert torch.allclose(both["logits"][4:], swapped["logits"], atol=1e-4)    # then the other video's reference
    assert not torch.allclose(both["logits"][4:], plain["logits"], atol=1e-4)


def test_the_reference_pass_leaves_the_detectors_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = build_refdet_model(support_size=SUPPORT, embed_dim=32).train()
    images, support, _ = _inputs()
    bn = model.backbone.stem[0].bn
    before = bn.running_mean.clone()
    model.encode_support(support)               # the siamese pass: running statistics untouched
    assert torch.equal(bn.running_mean, before) and model.backbone.training and bn.training
    model.features(images)                       # query frames: statistics move
    assert not torch.equal(bn.running_mean, before)


def test_a_support_size_the_detector_cannot_take_names_its_parameter():
    from src.errors import DataError

    with pytest.raises(DataError, match="multiple of 32") as info:
        build_refdet_model(support_size=40, freeze_dino_layers=12, embed_dim=16)
    assert info.value.param == "support_size"          # the CLI prints it as --support-size


def test_detector_weights_fill_the_backbone_and_neck_and_join_the_pretrained_group(model, tmp_path):
    torch.manual_seed(0)
    source = build_refdet_model(support_size=SUPPORT, freeze_dino_layers=12, embed_dim=16)
    state = {k: v for k, v in source.state_dict().items() if k.startswith(("backbone.", "neck."))}
    path = str(tmp_path / "detector.pt")
    torch.save(state, path)            # the layout src.tools.convert_ultralytics writes
    torch.manual_seed(1)
    loaded = build_refdet_model(support_size=SUPPORT, freeze_dino_layers=12, embed_dim=16, detector_weights=path)
    assert len(state) == 270 and all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert not torch.equal(loaded.head.cls[0][0].conv.weight, source.head.cls[0][0].conv.weight)   # the rest: its own
    assert loaded.pretrained_prefixes == ("backbone.", "neck.")
    assert loaded.detector_init.startswith(f"{path}: 270 tensors of yolov8n layers 0-21 loaded into the detector")
    # a resumed run: the same parameter groups, nothing read (its last.pt holds the weights)
    resumed = build_refdet_model(support_size=SUPPORT, freeze_dino_layers=12, embed_dim=16, pretrained_detector=True)
    assert resumed.pretrained_prefixes == ("backbone.", "neck.") and resumed.detector_init is None
    assert model.pretrained_prefixes == () and model.detector_init is None
