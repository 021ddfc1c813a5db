"""VietOCR's own weights files work wherever this project's OCR checkpoints do (--weights, --init-from).

``tests/fixtures/vietocr_state_dict_keys.json`` holds the key names, order and shapes of
``vietocr.model.transformerocr.VietOCR(...).state_dict()`` (vietocr 0.3.13, its vgg-transformer and
vgg-seq2seq configs): a file in that layout is what VietOCR exports (``torch.save(model.state_dict())``)
and publishes as ``vgg_transformer.pth``.
"""
import json
from pathlib import Path

import pytest
import torch

from src.data.ocr import VIETOCR_VOCAB, Vocab
from src.errors import DataError
from src.models.vietocr import build_vietocr
from src.tasks.ocr_inference import init_from, load_for_inference, read_weights
from tests.conftest import run_script

LAYOUT = json.loads((Path(__file__).parents[1] / "fixtures" / "vietocr_state_dict_keys.json").read_text())
OCR = "train_vietocr.py"


def vietocr_state_dict(arch: str, seed: int = 0) -> dict:
    """Random weights in VietOCR's exact layout (names, order, shapes), built from the fixture alone."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in LAYOUT[arch]:
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=g) + 0.5
        elif name == "transformer.pos_enc.pe":       # a buffer VietOCR saves: its sinusoid table
            out[name] = build_vietocr(arch, 233).state_dict()[name]
        else:
            out[name] = torch.randn(shape, generator=g) * 0.05
    return out


@pytest.mark.parametrize("arch", ["vgg_transformer", "vgg_seq2seq"])
def test_a_vietocr_state_dict_loads_and_gives_the_logits_of_its_weights(arch, tmp_path):
    state = vietocr_state_dict(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)                                   # what VietOCR's trainer exports
    model, vocab, cfg = load_for_inference(str(path), torch.device("cpu"))
    assert cfg["arch"] == arch and cfg["model_size"] == "full" and cfg["model_kwargs"] == {}
    assert vocab.chars == VIETOCR_VOCAB
    assert list(model.state_dict()) == [k for k, _ in LAYOUT[arch]]        # the same names in the same order
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.rand(2, 3, 32, 96, generator=torch.Generator().manual_seed(1))
    tgt = torch.tensor([[1, 10, 11, 12], [1, 40, 41, 0]])
    with torch.no_grad():
        logits = model(x, tgt, tgt == 0)
    assert logits.shape == (2, 4, 233) and torch.isfinite(logits).all()

    # VietOCR's trainer checkpoint ({'state_dict': ...}) reads the same
    torch.save({"epoch": 3, "iter": 4000, "state_dict": state, "optimizer": {}}, tmp_path / "checkpoint.pth")
    again, _, _ = load_for_inference(str(tmp_path / "checkpoint.pth"), torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(again(x, tgt, tgt == 0), logits)


def test_vietocrs_own_model_gives_identical_logits():
    """With the vietocr package installed (a bench environment, never a dependency): its model and ours
    on the same state dict give bit-identical logits."""
    pytest.importorskip("vietocr")
    from vietocr.model.transformerocr import VietOCR

    pools = [[2, 2], [2, 2], [2, 1], [2, 1], [1, 1]]
    theirs = VietOCR(233, "vgg19_bn", dict(ss=pools, ks=pools, hidden=256, pretrained=False),
                     dict(d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                          max_seq_length=1024, pos_dropout=0.1, trans_dropout=0.1), "transformer").eval()
    ours = build_vietocr("vgg_transformer", 233, "full").eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 32, 128)
    tgt = torch.randint(4, 233, (2, 7))
    tgt[:, 0] = 1
    with torch.no_grad():
        assert torch.equal(theirs(x, tgt.T, tgt_key_padding_mask=torch.zeros(2, 7, dtype=torch.bool)),
                           ours(x, tgt, torch.zeros(2, 7, dtype=torch.bool)))


def test_weights_files_that_do_not_fit_are_one_line_errors(tmp_path):
    state = vietocr_state_dict("vgg_transformer")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(DataError, match=r"w.pth: the weights have 233 tokens, the vocabulary has 7 \(3 characters"):
        read_weights(str(tmp_path / "w.pth"), Vocab("abc"))
    torch.save({"backbone.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="other.pth: no 'cnn.model.features.0.weight'"):
        read_weights(str(tmp_path / "other.pth"))
    torch.save({"model": {}, "task": "classification", "model_config": {}}, tmp_path / "cls.pt")
    with pytest.raises(DataError, match="cls.pt: not an OCR checkpoint .its task: classification"):
        read_weights(str(tmp_path / "cls.pt"))
    small = build_vietocr("vgg_transformer", 233, "small")
    with pytest.raises(DataError, match="w.pth: a vgg_transformer full model"):
        init_from(small, str(tmp_path / "w.pth"), Vocab(VIETOCR_VOCAB))


def test_predict_reads_vietocr_weights(tmp_path):
    from PIL import Image

    torch.save(vietocr_state_dict("vgg_transformer"), tmp_path / "vgg_transformer.pth")
    Image.new("RGB", (120, 32), "white").save(tmp_path / "line.png")
    out = run_script(OCR, ["--predict", str(tmp_path / "line.png"), "--weights", str(tmp_path / "vgg_transformer.pth"),
                           "--max-decode-len", "6", "--device", "cpu"], tmp_path)
    path, text, conf = out.stdout.rstrip("\n").split("\t")
    assert path == str(tmp_path / "line.png") and 0 <= float(conf) <= 1 and len(text) <= 6


def test_init_from_a_vietocr_layout_file_starts_training_from_its_weights(tmp_path):
    from src.data.demo_ocr import ensure_demo_ocr

    files = ensure_demo_ocr(str(tmp_path / "data"), counts=(16, 8, 4))
    torch.manual_seed(5)
    start = build_vietocr("vgg_transformer", 233, "small").state_dict()
    torch.save(start, tmp_path / "pretrain.pth")               # a plain state dict, as VietOCR saves
    # lr 0 and no weight decay: the trained weights must still be the file's (BatchNorm statistics aside)
    run_script(OCR, ["--data-root", str(tmp_path / "data"), "--train-annotation", files["train"],
                     "--valid-annotation", files["valid"], "--model-size", "small", "--init-from",
                     str(tmp_path / "pretrain.pth"), "--lr", "0", "--epochs", "1", "--batch-size", "8",
                     "--num-workers", "0", "--max-decode-len", "8", "--results-dir", str(tmp_path / "r")], tmp_path)
    (run,) = (tmp_path / "r").iterdir()
    trained = torch.load(run / "best_model.pt", weights_only=True)["model"]
    params = {k for k, _ in build_vietocr("vgg_transformer", 233, "small").named_parameters()}
    assert params and all(torch.equal(trained[k], start[k]) for k in params)
    bad = run_script(OCR, ["--data-root", str(tmp_path / "data"), "--train-annotation", files["train"],
                           "--valid-annotation", files["valid"], "--model-size", "small", "--model-kwargs",
                           "num_decoder_layers=1", "--init-from", str(tmp_path / "pretrain.pth"), "--epochs", "1",
                           "--num-workers", "0", "--results-dir", str(tmp_path / "r2")], tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --init-from: ")
    assert "Traceback" not in bad.stderr


def test_evaluate_scores_vietocr_weights(tmp_path):
    """--evaluate takes VietOCR's own weights file like a best_model.pt (the flags build its model)."""
    from src.data.demo_ocr import ensure_demo_ocr

    files = ensure_demo_ocr(str(tmp_path / "data"), counts=(4, 6, 4))
    torch.save(vietocr_state_dict("vgg_transformer"), tmp_path / "vgg_transformer.pth")
    run_script(OCR, ["--evaluate", "--weights", str(tmp_path / "vgg_transformer.pth"), "--data-root",
                     str(tmp_path / "data"), "--train-annotation", files["train"], "--valid-annotation", files["valid"],
                     "--max-decode-len", "4", "--num-workers", "0", "--batch-size", "8",
                     "--results-dir", str(tmp_path / "e")], tmp_path)
    (run,) = (tmp_path / "e").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert run.name.startswith("vgg_transformer_eval_valid_") and metrics["weights_epoch"] is None
    assert metrics["valid_cer"] >= 0 and 0 <= metrics["valid_acc_full_seq"] <= 1
