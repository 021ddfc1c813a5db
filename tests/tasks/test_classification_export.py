"""``--export onnx`` of both classification scripts: ONNX Runtime gives PyTorch's logits (<= 1e-4) at any batch."""
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import run_script
from tests.test_reference_runs import CASES


@pytest.mark.parametrize("case", ["mobilenetv3", "resnet18_hybrid"])
def test_exported_classifier_matches_pytorch_at_any_batch(case, reference_runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from src.tasks.classification_inference import load_for_inference

    script, _ = CASES[case]
    run = tmp_path / "run"          # a copy of the behaviour pins' checkpoint: the export is written beside it
    run.mkdir()
    shutil.copy(reference_runs(case)[1] / "best_model.pt", run / "best_model.pt")
    out = run_script(script, ["--export", "onnx", "--weights", str(run / "best_model.pt")], tmp_path)
    assert f"wrote {run / 'best_model.onnx'}" in out.stdout
    session = ort.InferenceSession(str(run / "best_model.onnx"), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and isinstance(image.shape[0], str) and image.shape[1:] == [3, 64, 64]
    model, cfg = load_for_inference(str(run / "best_model.pt"), torch.device("cpu"))
    for batch in (1, 7):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        (logits,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert logits.shape == (batch, cfg["num_classes"]) and np.abs(logits - ref).max() <= 1e-4
