"""``train_ovd.py --export onnx``: ONNX Runtime gives PyTorch's boxes and logits (<= 1e-4) at any batch, caption
length and phrase count, and :func:`onnx_feed` prepares what ``--predict`` feeds the model."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_script


@pytest.fixture(scope="module")
def exported(reference_runs, tmp_path_factory):
    """(checkpoint, onnx file, the script's stdout) of the behaviour pins' OVD run, exported once here."""
    pytest.importorskip("onnxruntime")
    run = tmp_path_factory.mktemp("ovd_export")   # a copy: the export is written beside the checkpoint
    shutil.copy(reference_runs("ovd")[1] / "best_model.pt", run / "best_model.pt")
    out = run_script("train_ovd.py", ["--export", "onnx", "--weights", str(run / "best_model.pt")], run)
    return run / "best_model.pt", run / "best_model.onnx", out.stdout


@pytest.mark.parametrize("phrases", [[["the red circle"]],
                                     [["a small red circle", "the blue square", "a green star"], ["a star"],
                                      ["the big yellow diamond left of the circle", "a square"], ["purple"]]],
                         ids=["batch1_1phrase", "batch4_1to3phrases"])
def test_exported_ovd_matches_pytorch(exported, phrases):
    import onnxruntime as ort
    from src.tasks.ovd_export import INPUTS, FinalLayer, text_tensors
    from src.tasks.ovd_inference import load_for_inference

    ckpt, path, stdout = exported
    assert f"wrote {path}:" in stdout
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(INPUTS)
    image, ids, text_mask, phrase_mask = (i.shape for i in session.get_inputs())
    assert image[1:] == [3, 64, 64] and all(isinstance(d, str) for d in ids + text_mask + phrase_mask + image[:1])
    model, cfg = load_for_inference(str(ckpt), torch.device("cpu"))
    N = len(phrases)
    x = torch.randn(N, 3, 64, 64, generator=torch.Generator().manual_seed(N))
    text = text_tensors(phrases, cfg)
    boxes, logits = session.run(None, {k: v.numpy() for k, v in zip(INPUTS, (x, *text))})
    with torch.no_grad():
        ref_boxes, ref_logits = FinalLayer(model)(x, *text)
    P = max(map(len, phrases))
    assert boxes.shape == (N, cfg["num_queries"], 4) and logits.shape == (N, cfg["num_queries"], P)
    assert np.abs(boxes - ref_boxes.numpy()).max() <= 1e-4
    assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4


def test_onnx_feed_gives_predicts_boxes_and_scores(exported):
    """ORT on onnx_feed's inputs, post-processed, is ``ground`` (``--predict``) on the PyTorch model."""
    import onnxruntime as ort
    from src.data.grounding import to_pixels
    from src.tasks.ovd_export import onnx_config, onnx_feed
    from src.tasks.ovd_inference import ground, load_for_inference

    ckpt, path, _ = exported
    model, cfg = load_for_inference(str(ckpt), torch.device("cpu"))
    meta = onnx_config(str(path))
    assert meta == {k: cfg[k] for k in ("image_size", "buckets", "max_words", "num_queries", "model_name")}
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8))   # not square: letterboxed
    phrases = ["a small red circle", "the blue square"]
    feed, (scale,) = onnx_feed([image], [phrases], meta)
    boxes, logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    expected = ground(model, cfg, image, phrases, torch.device("cpu"), top_k=1)
    scores = torch.from_numpy(logits[0]).sigmoid()
    pixels = to_pixels(torch.from_numpy(boxes[0]), meta["image_size"], scale)
    for p, [(box, score)] in enumerate(expected):
        q = int(scores[:, p].argmax())
        assert float(scores[q, p]) == pytest.approx(score, abs=1e-5)
        got = pixels[q].clone()
        got[0::2], got[1::2] = got[0::2].clamp(0, image.width), got[1::2].clamp(0, image.height)
        assert got.tolist() == pytest.approx(box, abs=1e-3)


def test_pretrained_text_encoder_is_one_line_error(reference_runs, tmp_path):
    ckpt = torch.load(reference_runs("ovd")[1] / "best_model.pt", weights_only=True)
    ckpt["model_config"]["text_encoder"] = "bert-base-uncased"
    torch.save(ckpt, tmp_path / "best_model.pt")
    out = run_script("train_ovd.py", ["--export", "onnx", "--weights", str(tmp_path / "best_model.pt")], tmp_path,
                     check=False)
    assert out.returncode == 2 and not (tmp_path / "best_model.onnx").exists()
    assert out.stderr.strip().splitlines() == [
        "error: --export: onnx supports only the hashed text encoder; this checkpoint's bert-base-uncased "
        "tokenizes caption strings inside the model"]
