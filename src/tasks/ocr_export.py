"""``train_vietocr.py --export onnx``: the CNN + encoder and one decoder step as two ONNX files beside the
checkpoint (``best_model_encoder.onnx``, ``best_model_decoder.onnx``; graphs and tensors:
:mod:`src.models.vietocr_onnx`), each checked with ONNX Runtime against PyTorch, then the pair decoded
greedily by :class:`~src.models.vietocr_onnx.OnnxRecognizer` against PyTorch's greedy decoding.
``--backend onnxruntime`` (``--predict``, ``--evaluate``) decodes with that pair."""
from __future__ import annotations

import torch

from src.data.ocr import EOS, PAD, SOS, Vocab
from src.errors import DataError
from src.models.vietocr import VietOCRModel
from src.models.vietocr_onnx import INPUTS, OUTPUTS, OCREncoder, OnnxRecognizer, arch_of, decoder_step, example_inputs
from src.tasks.ocr_inference import load_for_inference, onnx_paths
from src.training.export import check_onnx, export_onnx

# symbolic dimensions per input of each graph (see src.models.vietocr_onnx)
ENCODER_DYNAMIC = {"image": {0: "batch", 3: "width"}, "cross_k": {0: "batch", 3: "seq"},
                   "cross_v": {0: "batch", 3: "seq"}, "hidden": {0: "batch"}, "encoder_outputs": {0: "batch", 1: "seq"}}
STEP_DYNAMIC = {"tokens": {0: "batch"}, "position": None, "self_k": {0: "batch", 3: "past"},
                "self_v": {0: "batch", 3: "past"}, "cross_k": {0: "batch", 3: "seq"}, "cross_v": {0: "batch", 3: "seq"},
                "hidden": {0: "batch"}, "encoder_outputs": {0: "batch", 1: "seq"}, "logits": {0: "batch"},
                "next_self_k": {0: "batch", 3: "next_past"}, "next_self_v": {0: "batch", 3: "next_past"},
                "next_hidden": {0: "batch"}}


def export_pair(model: VietOCRModel, enc_path: str, dec_path: str) -> tuple[float, float]:
    """Write ``model``'s encoder and decoder step to the two paths and check each with ONNX Runtime at
    another batch, width and step than the export's (so the dynamic dimensions are checked too); the
    two max abs differences."""
    arch = arch_of(model)
    enc_names, step_names = OUTPUTS[arch]
    # the dynamo exporter cannot decompose a bidirectional GRU in torch 2.14: seq2seq takes the TorchScript one
    legacy = arch == "vgg_seq2seq"
    encoder, step = OCREncoder(model).eval(), decoder_step(model).eval()
    g = torch.Generator().manual_seed(0)
    enc_in, step_in = example_inputs(model, 2, 128, 3, SOS, g)
    export_onnx(encoder, enc_in, enc_path, ["image"], enc_names, dynamic=[ENCODER_DYNAMIC["image"]], legacy=legacy,
                output_dynamic=[ENCODER_DYNAMIC[n] for n in enc_names])
    export_onnx(step, step_in, dec_path, INPUTS[arch], step_names, dynamic=[STEP_DYNAMIC[n] for n in INPUTS[arch]],
                legacy=legacy, output_dynamic=[STEP_DYNAMIC[n] for n in step_names])
    enc_in, step_in = example_inputs(model, 3, 160, 6, SOS, g)
    return check_onnx(enc_path, encoder, enc_in), check_onnx(dec_path, step, step_in, input_names=INPUTS[arch])


def export_main(args, vocab: Vocab) -> int:
    if not args.weights:
        raise DataError("--export needs --weights RUN_DIR/best_model.pt (or VietOCR's weights file)", param="weights")
    model, vocab, cfg = load_for_inference(args.weights, torch.device("cpu"), "none", vocab,
                                           dict(args.model_kwargs).get("nhead"), fold=True)
    enc_path, dec_path = onnx_paths(args.weights)
    enc_diff, step_diff = export_pair(model, enc_path, dec_path)
    images = example_inputs(model, 3, 160, 6, SOS, torch.Generator().manual_seed(1))[0][0]
    ours = OnnxRecognizer(enc_path, dec_path).decode(images, SOS, EOS, PAD, args.max_decode_len)
    with torch.no_grad():
        ref = model.greedy_decode(images, sos_id=SOS, eos_id=EOS, pad_id=PAD, max_len=args.max_decode_len)
    same = torch.equal(ours.tokens, ref.tokens)
    enc_names, step_names = OUTPUTS[arch_of(model)]
    print(f"wrote {enc_path}: image (N, 3, 32, W) in [0, 1] -> {', '.join(enc_names)}; ONNX Runtime vs PyTorch max "
          f"abs difference {enc_diff:.2e} at batch 3, width 160")
    print(f"wrote {dec_path}: {', '.join(INPUTS[arch_of(model)])} -> {', '.join(step_names)}; max abs difference "
          f"{step_diff:.2e} at step 6")
    print(f"greedy decoding of 3 example lines with ONNX Runtime: tokens {'identical to' if same else 'DIFFER from'} "
          f"PyTorch's; run it with --backend onnxruntime")
    return 0 if same else 1
