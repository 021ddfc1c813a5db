"""train_yolov8n_refdet.py ``--export onnx`` (support encoder + detector, ONNX Runtime gives PyTorch's
outputs and, after the project's post-processing, its detections) and ``--evaluate``'s submission file
(--predict's format and detections, scoring the evaluation's ST-IoU). On the behaviour pins' refdet run."""
import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import read_json, run_dirs, run_script

REFDET = "train_yolov8n_refdet.py"


def _video(data_root, video_id: str, image_size: int, support_size: int, chunk: int):
    """(support (1, 3, 3, s, s), frames (chunk, 3, S, S)) of a demo video's first chunk, as evaluation reads it."""
    from src.data.aeroeyes import read_aeroeyes
    from src.data.loading import DataWarnings
    from src.data.refdet import VideoClips

    (rec,) = [r for r in read_aeroeyes(str(data_root), None, DataWarnings()) if r.video_id == video_id]
    item = next(iter(VideoClips([rec], image_size, support_size, chunk=chunk)))
    return item["support"][None], item["images"]


def test_export_writes_support_encoder_and_detector_that_onnx_runtime_runs_as_pytorch(reference_runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from src.models.refdet import postprocess
    from src.tasks.refdet_export import DETECTOR_OUTPUTS, SUPPORT_OUTPUTS
    from src.tasks.refdet_inference import load_for_inference

    scratch, trained = reference_runs("refdet")
    run = tmp_path / "run"          # a copy of the pins' checkpoint: the export is written beside it
    run.mkdir()
    weights = run / "best_model.pt"
    shutil.copy(trained / "best_model.pt", weights)
    out = run_script(REFDET, ["--export", "onnx", "--weights", str(weights)], tmp_path)
    lines = out.stdout.strip().splitlines()
    for name, line in zip(("support", "detector"), lines[-2:]):
        assert line.startswith(f"wrote {run / f'best_model_{name}.onnx'}: ") and " -> " in line
        assert float(line.rsplit("max abs difference ", 1)[1].split()[0]) <= 1e-4
    support_session = ort.InferenceSession(str(run / "best_model_support.onnx"), providers=["CPUExecutionProvider"])
    detector_session = ort.InferenceSession(str(run / "best_model_detector.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in support_session.get_inputs()] == ["support"]
    assert [o.name for o in support_session.get_outputs()] == list(SUPPORT_OUTPUTS)
    inputs = detector_session.get_inputs()
    assert [i.name for i in inputs] == ["images", *SUPPORT_OUTPUTS]
    assert isinstance(inputs[0].shape[0], str) and inputs[0].shape[1:] == [3, 64, 64]     # dynamic batch
    assert [o.name for o in detector_session.get_outputs()] == list(DETECTOR_OUTPUTS)

    model, cfg = load_for_inference(str(weights), torch.device("cpu"))
    support, frames = _video(scratch / "refdet", "valid_00", cfg["image_size"], cfg["support_size"], chunk=6)
    ort_support = support_session.run(None, {"support": support.numpy()})
    with torch.no_grad():
        feats = model.encode_support(support)
    torch_support = [*feats.protos, *feats.tokens, feats.embed]
    assert max(np.abs(o - t.numpy()).max() for o, t in zip(ort_support, torch_support)) <= 1e-4
    for batch in (1, 6):
        images = frames[:batch]
        with torch.no_grad():
            ref = model.detect(images, feats, torch.zeros(batch, dtype=torch.long))
        # the detector alone, on PyTorch's support features
        got = detector_session.run(None, {"images": images.numpy(),
                                          **{n: t.numpy() for n, t in zip(SUPPORT_OUTPUTS, torch_support)}})
        assert got[0].shape == (batch, ref["logits"].shape[1])
        assert max(np.abs(g - ref[k].numpy()).max() for k, g in zip(DETECTOR_OUTPUTS, got)) <= 1e-4
        # the whole ONNX pipeline (support encoder -> detector) through the project's post-processing
        got = detector_session.run(None, {"images": images.numpy(), **dict(zip(SUPPORT_OUTPUTS, ort_support))})
        onnx_out = {k: torch.from_numpy(g) for k, g in zip(DETECTOR_OUTPUTS, got)}
        for (b_ref, s_ref), (b_got, s_got) in zip(postprocess(ref), postprocess(onnx_out)):
            assert len(s_ref) == len(s_got) and len(s_ref) > 0     # min score 0.01: every frame has boxes
            torch.testing.assert_close(b_got, b_ref, atol=1e-3, rtol=0)    # input pixels
            torch.testing.assert_close(s_got, s_ref, atol=1e-5, rtol=0)


def test_evaluate_writes_the_splits_submission_file_as_predict_does(reference_runs, tmp_path):
    from src.data.aeroeyes import read_aeroeyes
    from src.data.loading import DataWarnings
    from src.data.refdet import video_truth
    from src.metrics.refdet import read_submission, st_iou

    scratch, trained = reference_runs("refdet")
    data, weights = scratch / "refdet", str(trained / "best_model.pt")
    # a low threshold: the pins' 2-epoch model scores 0 ST-IoU (no frame reported) at its own 0.5
    low = ["--score-threshold", "0.05"]
    run_script(REFDET, ["--evaluate", "--weights", weights, *low, "--results-dir", str(tmp_path / "evals")], tmp_path)
    (evaluated,) = run_dirs(tmp_path / "evals")
    metrics = read_json(evaluated / "metrics.json")
    path = evaluated / "submission_valid.json"
    assert f"valid submission file (2 videos): {path}" in (evaluated / "train.log").read_text()
    sub = json.loads(path.read_text())
    ids = [e["video_id"] for e in sub]
    assert ids == ["valid_00", "valid_01"] and any(e["detections"] for e in sub)

    # --predict on the same videos (the data root holds the training videos too), same threshold and chunks
    run_script(REFDET, ["--predict", "--data-root", str(data), "--weights", weights, *low, "--batch-size", "8",
                        "--out", str(tmp_path / "pred.json")], tmp_path)
    predicted = {e["video_id"]: e for e in json.loads((tmp_path / "pred.json").read_text())}
    assert sub == [predicted[v] for v in ids]

    records = {r.video_id: r for r in read_aeroeyes(str(data), None, DataWarnings())}
    score, _ = st_iou({v: video_truth(records[v]) for v in ids}, read_submission(str(path)))
    # the format rounds coordinates to whole pixels; this model's boxes are whole-frame, so exactly
    assert metrics["valid_st_iou"] > 0 and score == pytest.approx(metrics["valid_st_iou"], abs=1e-6)
