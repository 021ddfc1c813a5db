import copy
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.errors import DataError
from src.models.vietocr import (SIZES, VIETOCR_ARCHS, PretrainedWeightsError, build_vietocr, decode_batch,
                                vgg_features)

SPECIALS = dict(sos_id=1, eos_id=2, pad_id=0)
VIETOCR_VOCAB_SIZE = 233  # 229 characters + pad, sos, eos, mask


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # inputs are tiny: one thread is faster than two, and never spin-waits on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def full_models():
    torch.manual_seed(0)
    return {arch: build_vietocr(arch, VIETOCR_VOCAB_SIZE, "full").eval() for arch in VIETOCR_ARCHS}


def padded_batch(widths, height=32, seed=0) -> torch.Tensor:
    """Random text-line images of different widths, zero-padded on the right into one batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(len(widths), 3, height, max(widths), generator=g)
    for i, w in enumerate(widths):
        x[i, :, :, w:] = 0.0
    return x


@pytest.fixture(scope="module")
def trained_small():
    """Small models fitted for a few steps to give each image of a padded batch its own target line
    (lengths 2..8), so decoding is image-dependent and lines end at different steps: random weights
    decode the same line for every image. Returned in eval mode and float64, so that comparisons of
    token ids between decoders cannot flip on a near-tie."""
    images = padded_batch([48, 40, 32, 48, 24, 32])
    lengths = [2, 4, 6, 8, 3, 5]
    g = torch.Generator().manual_seed(0)
    tgt_out = torch.zeros(len(lengths), max(lengths) + 1, dtype=torch.long)
    for i, n in enumerate(lengths):
        tgt_out[i, :n] = torch.randint(4, 40, (n,), generator=g)
        tgt_out[i, n] = SPECIALS["eos_id"]
    tgt_in = torch.cat([torch.ones(len(lengths), 1, dtype=torch.long), tgt_out[:, :-1]], 1)
    models = {}
    for arch in VIETOCR_ARCHS:
        torch.manual_seed(0)
        model = build_vietocr(arch, 40, "small")
        # fitted, but not so far that beam search finds nothing better than greedy
        lr, steps = {"vgg_transformer": (3e-3, 20), "vgg_seq2seq": (1e-3, 30)}[arch]
        opt = torch.optim.Adam(model.parameters(), lr)
        for _ in range(steps):
            loss = F.cross_entropy(model(images, tgt_in, tgt_in == 0).flatten(0, 1), tgt_out.flatten(), ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        models[arch] = model.eval().double()
    return models, images.double()


# ----------------------------------------------------------------------------- architecture

def test_full_parameter_counts_match_vietocr(full_models):
    assert n_params(full_models["vgg_transformer"]) == 37_650_217
    assert n_params(full_models["vgg_seq2seq"]) == 22_371_113
    cnn = full_models["vgg_transformer"].cnn.model
    assert n_params(cnn.features) == 20_035_392 and n_params(cnn.last_conv_1x1) == 131_328
    pools = [m for m in cnn.features if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    assert [(type(m), m.kernel_size, m.stride) for m in pools] == \
        [(nn.AvgPool2d, k, k) for k in [(2, 2), (2, 2), (2, 1), (2, 1), (1, 1)]]


def test_small_parameter_counts_are_documented():
    assert n_params(build_vietocr("vgg_transformer", VIETOCR_VOCAB_SIZE, "small")) == 1_285_417
    assert n_params(build_vietocr("vgg_seq2seq", VIETOCR_VOCAB_SIZE, "small")) == 926_505


@pytest.mark.parametrize("arch,memory_dim", [("vgg_transformer", 128), ("vgg_seq2seq", 256)])
def test_ctc_head_is_training_only_and_learns_through_the_encoder(arch, memory_dim):
    torch.manual_seed(0)
    plain = build_vietocr(arch, 40, "small")
    model = build_vietocr(arch, 40, "small", ctc_head=True)
    # VietOCR's keys are untouched: the head is the only addition, and absent without ctc_head
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra == {"ctc_head.weight", "ctc_head.bias"} and not hasattr(plain, "ctc_head")
    assert n_params(model) - n_params(plain) == memory_dim * 40 + 40
    images, tgt = padded_batch([64, 64]), torch.tensor([[1, 5, 6, 7], [1, 9, 0, 0]])
    model.eval()  # no dropout: the with_ctc logits must be the plain forward's
    logits, lp = model(images, tgt, tgt == 0, with_ctc=True)
    torch.testing.assert_close(logits, model(images, tgt, tgt == 0))
    torch.testing.assert_close(lp, model.ctc_log_probs(model.encode(images)))
    assert lp.shape == (32, 2, 40) and lp.dtype == torch.float32          # S = W/2 positions
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(32, 2))
    F.ctc_loss(lp, torch.tensor([5, 6, 7, 9]), torch.tensor([32, 32]), torch.tensor([3, 1]), blank=0).backward()
    assert model.cnn.model.features[0].weight.grad.abs().sum() > 0


def test_full_cnn_shapes(full_models):
    cnn = full_models["vgg_transformer"].cnn.model
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        feats = cnn.features(x)
        seq = cnn(x)
    assert feats.shape == (2, 512, 2, 10)
    assert seq.shape == (20, 2, 256)                        # T = W/2, sequence-first
    # VietOCR's order: column by column, each column top to bottom
    conv = cnn.last_conv_1x1(feats)
    torch.testing.assert_close(seq[1], conv[:, :, 1, 0])
    torch.testing.assert_close(seq[2], conv[:, :, 0, 1])


def test_state_dict_uses_vietocr_names(full_models):
    t = full_models["vgg_transformer"].state_dict()
    for key in ["cnn.model.features.0.weight", "cnn.model.features.1.running_var", "cnn.model.features.49.weight",
                "cnn.model.last_conv_1x1.weight", "transformer.embed_tgt.weight",
                "transformer.transformer.encoder.layers.0.self_attn.in_proj_weight",
                "transformer.transformer.encoder.layers.5.linear2.weight",
                "transformer.transformer.encoder.norm.weight",
                "transformer.transformer.decoder.layers.5.multihead_attn.out_proj.weight",
                "transformer.transformer.decoder.norm.bias", "transformer.fc.weight"]:
        assert key in t, key
    assert t["transformer.pos_enc.pe"].shape == (1024, 1, 256)  # a buffer VietOCR's checkpoints hold
    s = full_models["vgg_seq2seq"].state_dict()
    for key in ["cnn.model.last_conv_1x1.bias", "transformer.encoder.rnn.weight_ih_l0_reverse",
                "transformer.encoder.fc.weight", "transformer.decoder.attention.attn.weight",
                "transformer.decoder.attention.v.weight", "transformer.decoder.embedding.weight",
                "transformer.decoder.rnn.weight_hh_l0", "transformer.decoder.fc_out.weight"]:
        assert key in s, key
    assert "transformer.decoder.attention.v.bias" not in s
    assert s["transformer.decoder.fc_out.weight"].shape == (VIETOCR_VOCAB_SIZE, 512 + 256 + 256)


@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_small_forward_shapes_and_every_parameter_gets_gradient(arch):
    torch.manual_seed(0)
    model = build_vietocr(arch, 40, "small")
    images = padded_batch([64, 40])
    tgt = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 0, 0]])
    logits = model(images, tgt, tgt == 0)
    assert logits.shape == (2, 5, 40)
    assert model.cnn(images).shape == (32, 2, SIZES["small"]["d_model"])
    F.cross_entropy(logits.flatten(0, 1), torch.tensor([5, 6, 7, 8, 2, 9, 10, 2, 0, 0]), ignore_index=0).backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, bad
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_grad_checkpointing_gives_the_same_gradients(arch):
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = build_vietocr(arch, 40, "small", grad_checkpointing=enable)
        tgt = torch.tensor([[1, 5, 6, 7], [1, 9, 10, 0]])
        torch.manual_seed(1)  # same dropout masks (checkpoint replays the RNG state)
        model(padded_batch([32, 24]), tgt, tgt == 0).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


# ----------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_cached_greedy_equals_reference_greedy_small(trained_small, arch):
    models, images = trained_small
    model = models[arch]
    cached = model.greedy_decode(images, max_len=12, **SPECIALS)
    ref = model.greedy_decode_reference(images, max_len=12, **SPECIALS)
    lengths = (cached.tokens != 0).sum(1)
    assert len(set(lengths.tolist())) > 1, "test setup: lines should end at different steps"
    assert torch.equal(cached.tokens, ref.tokens)
    torch.testing.assert_close(cached.confidence, ref.confidence)
    # pad after eos, and confidence is the mean chosen-token probability up to and including eos
    for row, n in zip(cached.tokens, lengths):
        if n < row.numel():
            assert row[n - 1] == 2 and (row[n:] == 0).all()
    assert ((cached.confidence > 0) & (cached.confidence <= 1)).all()


@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_cached_greedy_equals_reference_greedy_full(full_models, arch):
    model = copy.deepcopy(full_models[arch]).double()
    images = padded_batch([40, 24]).double()
    cached = model.greedy_decode(images, max_len=6, **SPECIALS)
    ref = model.greedy_decode_reference(images, max_len=6, **SPECIALS)
    assert torch.equal(cached.tokens, ref.tokens)
    torch.testing.assert_close(cached.confidence, ref.confidence)


@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_beam_size_1_equals_greedy(trained_small, arch):
    models, images = trained_small
    greedy = decode_batch(models[arch], images, 1, 2, 0, beam_size=1, max_len=12)
    beam = models[arch].beam_search(images, beam_size=1, max_len=12, **SPECIALS)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.confidence, greedy.confidence)


@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_beam_search_scores_at_least_greedy_and_batched_equals_one_by_one(trained_small, arch):
    models, images = trained_small
    model = models[arch]
    greedy = model.greedy_decode(images, max_len=12, **SPECIALS)
    beam = decode_batch(model, images, 1, 2, 0, beam_size=4, max_len=12)
    assert beam.tokens.shape[0] == images.shape[0] and beam.confidence.shape == (images.shape[0],)
    # the length-normalised score (mean token log-prob, eos included), by an independent teacher-forced pass
    s_greedy = model.score_sequences(images, greedy.tokens, **SPECIALS)
    s_beam = model.score_sequences(images, beam.tokens, **SPECIALS)
    assert (s_beam >= s_greedy - 1e-9).all(), (s_beam, s_greedy)
    assert (s_beam > s_greedy + 1e-6).any(), "test setup: beam search should beat greedy somewhere"
    one_by_one = model.beam_search_sequential(images, beam_size=4, max_len=12, **SPECIALS)
    assert torch.equal(one_by_one.tokens, beam.tokens)
    torch.testing.assert_close(one_by_one.confidence, beam.confidence)


@pytest.mark.parametrize("arch", VIETOCR_ARCHS)
def test_dynamic_int8_quantized_model_still_decodes(arch):
    torch.manual_seed(0)
    model = build_vietocr(arch, 40, "small").eval()
    qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    head = qmodel.transformer.fc if arch == "vgg_transformer" else qmodel.transformer.decoder.fc_out
    assert "quantized" in type(head).__module__
    images = padded_batch([48, 32, 40])
    for result in (qmodel.greedy_decode(images, max_len=8, **SPECIALS),
                   qmodel.greedy_decode_reference(images, max_len=8, **SPECIALS),
                   qmodel.beam_search(images, beam_size=3, max_len=8, **SPECIALS)):
        assert result.tokens.shape[0] == 3 and 1 <= result.tokens.shape[1] <= 8
        assert result.confidence.shape == (3,) and torch.isfinite(result.confidence).all()


# ----------------------------------------------------------------------------- pretrained CNN

def test_pretrained_offline_raises_clear_error(monkeypatch, tmp_path):
    # simulate no network (and never download 548 MB on a machine that has it)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="elsewhere and pass the local file") as info:
        build_vietocr("vgg_transformer", VIETOCR_VOCAB_SIZE, pretrained=True)
    # the model names its parameter; the command line turns it into --pretrained-weights
    assert isinstance(info.value, DataError) and "\n" not in str(info.value)
    assert info.value.param == "pretrained_weights"


def test_local_pretrained_weights_load(tmp_path):
    torch.manual_seed(1)
    features = vgg_features(SIZES["full"]["cnn_cfg"])
    path = tmp_path / "vgg19_bn.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)  # torchvision's layout
    model = build_vietocr("vgg_seq2seq", VIETOCR_VOCAB_SIZE, pretrained_weights=str(path))
    torch.testing.assert_close(model.cnn.model.features[0].weight, features[0].weight)
    torch.testing.assert_close(model.cnn.model.features[50].running_mean, features[50].running_mean)
    assert model.pretrained_prefixes == ("cnn.model.features.",)
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_vietocr("vgg_seq2seq", VIETOCR_VOCAB_SIZE, pretrained_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(DataError, match="full"):
        build_vietocr("vgg_seq2seq", VIETOCR_VOCAB_SIZE, "small", pretrained=True)
