"""The exportable forms of the VietOCR models (src/models/vietocr_onnx.py) compute what the models'
own cached decoding computes, step by step, in PyTorch (no ONNX Runtime needed)."""
import pytest
import torch

from src.data.ocr import SOS
from src.models.vietocr import build_vietocr
from src.models.vietocr_onnx import OCREncoder, decoder_step


@pytest.mark.parametrize("arch", ["vgg_transformer", "vgg_seq2seq"])
def test_the_step_with_its_state_in_and_out_follows_the_models_own_step(arch):
    torch.manual_seed(0)
    model = build_vietocr(arch, 40, "small").eval()
    images = torch.rand(3, 3, 32, 64)
    tokens = torch.randint(4, 40, (3, 6))
    tokens[:, 0] = SOS
    with torch.no_grad():
        seq = model.transformer
        state = seq.init_state(model.encode(images), 8)
        memory = OCREncoder(model)(images)
        step = decoder_step(model)
        if arch == "vgg_transformer":
            n, layers, h, _, d = memory[0].shape
            carried = [torch.zeros(n, layers, h, 1, d), torch.zeros(n, layers, h, 1, d)]   # the placeholder slot
        else:
            carried = [memory[0]]
        for t in range(tokens.shape[1]):
            ref = seq.step(state, tokens[:, t])
            if arch == "vgg_transformer":
                logits, *carried = step(tokens[:, t], torch.tensor([t]), *carried, *memory)
                assert carried[0].shape[3] == t + 2
            else:
                logits, *carried = step(tokens[:, t], torch.tensor([t]), *carried, memory[1])
            assert torch.allclose(logits, ref, atol=1e-5), t
