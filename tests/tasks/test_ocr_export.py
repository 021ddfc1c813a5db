"""``train_vietocr.py --export onnx`` and ``--backend onnxruntime``: the exported CNN + encoder and decoder
step match PyTorch (<= 1e-4), and the project's ONNX Runtime greedy driver reads the demo validation lines
exactly as PyTorch's greedy decoding does, in ``--predict`` and ``--evaluate``."""
import shutil

import numpy as np
import pytest
import torch

from src.data.images import load_rgb
from src.data.ocr import EOS, PAD, SOS, VIETOCR_VOCAB, Vocab, read_annotations
from src.models.vietocr import build_vietocr
from src.models.vietocr_onnx import INPUTS, OnnxRecognizer, decoder_step, example_inputs
from src.tasks.ocr_inference import load_for_inference, recognize
from tests.conftest import read_json, run_dirs, run_script

OCR = "train_vietocr.py"


@pytest.fixture(scope="module")
def exported(reference_runs, tmp_path_factory):
    """The behaviour pins' OCR checkpoint, copied and exported once: (scratch, run copy, export stdout)."""
    pytest.importorskip("onnxruntime")
    scratch, run = reference_runs("vietocr")
    copy = tmp_path_factory.mktemp("ocr_export")
    shutil.copy(run / "best_model.pt", copy / "best_model.pt")
    shutil.copy(run / "metrics.json", copy / "metrics.json")
    out = run_script(OCR, ["--export", "onnx", "--weights", str(copy / "best_model.pt"), "--max-decode-len", "24"],
                     scratch)
    return scratch, copy, out.stdout


def test_export_writes_the_pair_and_checks_it(exported):
    _, run, stdout = exported
    lines = stdout.strip().splitlines()
    assert lines[0].startswith(f"wrote {run / 'best_model_encoder.onnx'}: image (N, 3, 32, W)")
    assert lines[1].startswith(f"wrote {run / 'best_model_decoder.onnx'}: tokens, position, self_k, self_v")
    assert "tokens identical to PyTorch's" in lines[2]
    ort = pytest.importorskip("onnxruntime")
    dec = ort.InferenceSession(str(run / "best_model_decoder.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in dec.get_inputs()}
    assert isinstance(shapes["self_k"][0], str) and isinstance(shapes["self_k"][3], str)   # batch, past: free

    model, _, _ = load_for_inference(str(run / "best_model.pt"), torch.device("cpu"))
    step = decoder_step(model).eval()
    for batch, width, t in ((1, 64, 0), (5, 224, 9)):        # other sizes than the export's
        _, inputs = example_inputs(model, batch, width, t, SOS, torch.Generator().manual_seed(t))
        got = dec.run(None, {n: x.numpy() for n, x in zip(INPUTS["vgg_transformer"], inputs)})
        with torch.no_grad():
            ref = step(*inputs)
        assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
        assert max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)) <= 1e-4


def test_onnxruntime_reads_the_validation_lines_as_pytorch(exported):
    scratch, run, _ = exported
    root = scratch / "ocr"
    images = [load_rgb(str(root / a.path)) for a in read_annotations(str(root / "valid.txt"))]
    model, vocab, _ = load_for_inference(str(run / "best_model.pt"), torch.device("cpu"))
    recognizer = OnnxRecognizer(str(run / "best_model_encoder.onnx"), str(run / "best_model_decoder.onnx"))
    cpu = torch.device("cpu")
    ours = recognize(recognizer, vocab, images, cpu, batch_size=8, max_len=24)
    ref = recognize(model, vocab, images, cpu, batch_size=8, max_len=24)
    assert len(ours) == len(images) == 24
    assert [t for t, _ in ours] == [t for t, _ in ref]
    assert np.allclose([c for _, c in ours], [c for _, c in ref], atol=1e-5)

    # the same through the script: --predict, then --evaluate with the training run's figures
    paths = [str(root / a.path) for a in read_annotations(str(root / "valid.txt"))[:6]]
    flags = ["--predict", *paths, "--weights", str(run / "best_model.pt"), "--max-decode-len", "24"]
    torch_out = run_script(OCR, flags, scratch).stdout
    assert run_script(OCR, [*flags, "--backend", "onnxruntime"], scratch).stdout == torch_out
    results = run / "evals"
    out = run_script(OCR, ["--evaluate", "--weights", str(run / "best_model.pt"), "--backend", "onnxruntime",
                           "--results-dir", str(results)], scratch)
    (evaluated,) = run_dirs(results)
    scored, trained = read_json(evaluated / "metrics.json"), read_json(run / "metrics.json")
    assert "valid_cer" in out.stdout
    for key in ("valid_cer", "valid_wer", "valid_acc_full_seq", "valid_acc_per_char", "valid_loss"):
        assert scored[key] == pytest.approx(trained[key], abs=1e-6), key


def test_seq2seq_weights_export_and_decode_alike(tmp_path):
    """VietOCR's other architecture, from a weights file in its layout: the GRU pair goes through
    TorchScript's exporter, and the driver decodes it as PyTorch does."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    model = build_vietocr("vgg_seq2seq", len(Vocab(VIETOCR_VOCAB)), "small").eval()
    torch.save(model.state_dict(), tmp_path / "seq2seq.pth")
    out = run_script(OCR, ["--export", "onnx", "--weights", str(tmp_path / "seq2seq.pth"), "--max-decode-len", "16"],
                     tmp_path)
    assert "tokens identical to PyTorch's" in out.stdout
    recognizer = OnnxRecognizer(str(tmp_path / "seq2seq_encoder.onnx"), str(tmp_path / "seq2seq_decoder.onnx"))
    images = torch.rand(4, 3, 32, 96, generator=torch.Generator().manual_seed(0))
    ours = recognizer.decode(images, SOS, EOS, PAD, 16)
    with torch.no_grad():
        ref = model.greedy_decode(images, sos_id=SOS, eos_id=EOS, pad_id=PAD, max_len=16)
    assert torch.equal(ours.tokens, ref.tokens)
    assert torch.allclose(ours.confidence, ref.confidence, atol=1e-5)


def test_backend_errors_are_one_line(exported, tmp_path):
    scratch, run, _ = exported
    lonely = tmp_path / "best_model.pt"                  # a checkpoint never exported
    shutil.copy(run / "best_model.pt", lonely)
    image = str(next((scratch / "ocr").rglob("*.png")))
    bad = run_script(OCR, ["--predict", image, "--weights", str(lonely), "--backend", "onnxruntime"], tmp_path,
                     check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        f"error: --backend: {tmp_path / 'best_model_encoder.onnx'} not found: export it first (python "
        f"train_vietocr.py --export onnx --weights {lonely})")
    beam = run_script(OCR, ["--predict", image, "--weights", str(run / "best_model.pt"), "--backend", "onnxruntime",
                            "--beam-size", "3"], tmp_path, check=False)
    assert beam.returncode == 2 and beam.stderr.strip().splitlines()[-1].startswith(
        "error: --backend: the exported pair decodes greedily")
