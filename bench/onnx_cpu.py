"""ONNX Runtime vs PyTorch on the CPU, per exported model, and what Conv+BN folding does in PyTorch.

Each model is built at its real inference size with random weights (BatchNorm statistics drawn at random
too, so folding is not a no-op), exported exactly as the scripts' ``--export onnx`` exports it (the same
functions), then:

1. the outputs of ONNX Runtime and PyTorch on the same input are compared (max abs difference; the row
   fails above 1e-4; for the OCR greedy rows the token sequences must be identical);
2. PyTorch (eval, ``inference_mode``, float32, as ``--predict`` runs it, Conv+BN folded) and ONNX Runtime
   (``CPUExecutionProvider``, all graph optimizations, the same thread count) run in round-robin
   (a, b, a, b, ...) after warm-up; the figure is the median call, the spread (slowest - fastest) /
   fastest; a ratio counts only when both spreads are under 25%.
3. Folding: PyTorch unfolded vs folded, same round-robin.

Rows: both classifiers (224 px), the VGG CNN + transformer encoder of VietOCR (160 and 480 px wide lines),
OCR end to end (encoder + greedy decoding of ``--tokens`` tokens with the KV cache: PyTorch's
``greedy_decode`` vs :class:`src.models.vietocr_onnx.OnnxRecognizer`; eos is made unreachable, so every
line decodes exactly ``--tokens`` tokens on both sides), the OVD grounding model (Swin-T, 224 px) and
the refdet detector + head and support encoder.

    python -m bench.onnx_cpu                       # 1 thread, batch 16 (OCR) / 8 (classifiers)
    python -m bench.onnx_cpu --threads 2 --quick
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from typing import Callable

import numpy as np
import torch
from torch import nn

from bench.timing import checked_ratio, command_line, device_name, median, ms, round_robin, spread
from src.data.ocr import EOS, PAD, SOS, VIETOCR_VOCAB, Vocab
from src.models.classifiers import build_classifier
from src.models.layers.fold import fold_conv_bn
from src.models.vietocr import build_vietocr
from src.models.vietocr_onnx import OCREncoder, OnnxRecognizer
from src.tasks.classification_export import export_classifier
from src.tasks.ocr_export import export_pair
from src.training.export import export_onnx

CPU = torch.device("cpu")


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BatchNorm statistics and affine weights, so folding changes the arithmetic."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _max_diff(a, b) -> float:
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return max(float(np.abs(np.asarray(x) - (y.numpy() if isinstance(y, torch.Tensor) else y)).max())
               for x, y in zip(a, b))


class Table:
    def __init__(self, args) -> None:
        self.args, self.rows, self.failed = args, [], False

    def time(self, what: str, input_desc: str, sides: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
        a = self.args
        return round_robin(sides, CPU, a.reps, a.min_time, a.max_reps, a.warmup)

    def add(self, model: str, inputs: str, base: str, base_ts, other: str, other_ts, check: str) -> None:
        self.rows.append(f"| {model} | {inputs} | {base} {ms(base_ts, median):.1f} ms ({spread(base_ts)}) | "
                         f"{other} {ms(other_ts, median):.1f} ms ({spread(other_ts)}) | "
                         f"{checked_ratio(base_ts, other_ts, median)} | {check} |")


def compare(table: Table, name: str, inputs: str, torch_fn, ort_fn, unfolded_fn=None, tol: float = 1e-4) -> None:
    """One model: ORT vs folded PyTorch (checked, then timed), and unfolded vs folded PyTorch."""
    with torch.inference_mode():
        diff = _max_diff(ort_fn(), torch_fn())
    check = f"max abs diff {diff:.1e}"
    if diff > tol:
        table.failed = True
        check += " FAILED"
    with torch.inference_mode():
        ts = table.time(name, inputs, {"torch": torch_fn, "ort": ort_fn})
        table.add(name, inputs, "PyTorch", ts["torch"], "ONNX Runtime", ts["ort"], check)
        if unfolded_fn is not None:
            fold_diff = _max_diff(unfolded_fn(), torch_fn())
            ts = table.time(name, inputs, {"unfolded": unfolded_fn, "folded": torch_fn})
            table.add(f"{name}, Conv+BN folding", inputs, "unfolded", ts["unfolded"], "folded", ts["folded"],
                      f"max abs diff {fold_diff:.1e}")


def classifier_rows(table: Table, tmp: str) -> None:
    a = table.args
    for name in ("MobileNetV3_Small_BoT_Linear", "ResNet18_Hybrid"):
        ns = argparse.Namespace(model=name, heads=4, reduction=32, dropout=0.1, pretrained=False,
                                pretrained_weights=None)
        torch.manual_seed(0)
        plain = randomize_bn(build_classifier(ns, 4))
        folded = copy.deepcopy(plain)
        fold_conv_bn(folded)
        path = os.path.join(tmp, f"{name}.onnx")
        export_classifier(folded, a.image_size, path)
        sess = session(path, a.threads)
        x = torch.randn(a.cls_batch, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(1))
        feed = {"image": x.numpy()}
        compare(table, name, f"batch {a.cls_batch}, {a.image_size} px", lambda: folded(x),
                lambda: sess.run(None, feed)[0], lambda: plain(x))


def ocr_rows(table: Table, tmp: str) -> None:
    a = table.args
    torch.manual_seed(0)
    plain = randomize_bn(build_vietocr("vgg_transformer", len(Vocab(VIETOCR_VOCAB)), a.ocr_size))
    with torch.no_grad():       # eos never wins, so both sides decode exactly --tokens tokens
        plain.transformer.fc.bias[EOS] = -1e4
    folded = copy.deepcopy(plain)
    fold_conv_bn(folded)
    enc_path, dec_path = os.path.join(tmp, "ocr_encoder.onnx"), os.path.join(tmp, "ocr_decoder.onnx")
    export_pair(folded, enc_path, dec_path)
    recognizer = OnnxRecognizer(enc_path, dec_path, threads=a.threads)
    enc = session(enc_path, a.threads)
    encoder, unfolded_encoder = OCREncoder(folded).eval(), OCREncoder(plain).eval()
    for width in a.ocr_widths:
        x = torch.rand(a.ocr_batch, 3, 32, width, generator=torch.Generator().manual_seed(width))
        inputs = f"batch {a.ocr_batch}, 32x{width}"
        compare(table, f"VietOCR CNN + encoder ({a.ocr_size})", inputs, lambda: encoder(x),
                lambda: enc.run(None, {"image": x.numpy()}), lambda: unfolded_encoder(x))

        def ours():
            return recognizer.decode(x, SOS, EOS, PAD, a.tokens)

        def theirs():
            return folded.greedy_decode(x, sos_id=SOS, eos_id=EOS, pad_id=PAD, max_len=a.tokens)
        with torch.inference_mode():
            same = torch.equal(ours().tokens, theirs().tokens) and ours().tokens.shape[1] == a.tokens
            ts = table.time("ocr greedy", inputs, {"torch": theirs, "ort": ours})
        table.failed |= not same
        table.add(f"VietOCR greedy end to end ({a.ocr_size}), {a.tokens} tokens", inputs, "PyTorch", ts["torch"],
                  "ONNX Runtime", ts["ort"], "tokens identical" if same else "tokens DIFFER: FAILED")


def ovd_rows(table: Table, tmp: str) -> None:
    """The grounding model at the script's default size (Swin-T 224 px, 20 queries), 2 phrases per image."""
    from src.models.ovd import build_grounding_model
    from src.models.text_encoders import DEFAULT_BUCKETS
    from src.tasks.ovd_export import FinalLayer, export_final_layer, text_tensors

    a = table.args
    torch.manual_seed(0)
    model = FinalLayer(randomize_bn(build_grounding_model())).eval()
    cfg = {"max_words": 64, "buckets": DEFAULT_BUCKETS, "image_size": 224, "num_queries": 20}   # the defaults
    phrases = [["a man in a red shirt", "the dog"]] * a.cls_batch
    inputs = (torch.randn(a.cls_batch, 3, 224, 224, generator=torch.Generator().manual_seed(2)),
              *text_tensors(phrases, cfg))
    path = os.path.join(tmp, "ovd.onnx")
    export_final_layer(model, inputs, path, cfg)
    sess = session(path, a.threads)
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    compare(table, "OVD grounding (Swin-T)", f"batch {a.cls_batch}, 224 px, 2 phrases", lambda: model(*inputs),
            lambda: sess.run(None, feed))


def refdet_rows(table: Table, tmp: str) -> None:
    """The reference detector at the script's defaults (frames 640 px, references 224 px): the support
    encoder (DINOv3 ViT-S, once per video) and the detector + fusion + head (every frame)."""
    from src.models.refdet import build_refdet_model
    from src.tasks.refdet_export import REFERENCES, SUPPORT_OUTPUTS, DetectorExport, SupportExport

    a = table.args
    torch.manual_seed(0)
    plain = randomize_bn(build_refdet_model())
    folded = copy.deepcopy(plain)
    fold_conv_bn(folded)
    g = torch.Generator().manual_seed(3)
    support = torch.randn(1, REFERENCES, 3, 224, 224, generator=g)
    encoder, path = SupportExport(folded).eval(), os.path.join(tmp, "support.onnx")
    export_onnx(encoder, (support,), path, ["support"], SUPPORT_OUTPUTS)
    sess = session(path, a.threads)
    compare(table, "refdet support encoder (ViT-S/16)", f"1 video x {REFERENCES} references, 224 px",
            lambda: encoder(support), lambda: sess.run(None, {"support": support.numpy()}))
    with torch.inference_mode():
        feats = encoder(support)
    images = torch.randn(a.det_batch, 3, a.det_size, a.det_size, generator=g)
    detector, unfolded = DetectorExport(folded).eval(), DetectorExport(plain).eval()
    path = os.path.join(tmp, "detector.onnx")
    export_onnx(detector, (images, *feats), path, ("images", *SUPPORT_OUTPUTS), ("logits", "dist", "anchors", "strides"),
                dynamic=[{0: "batch"}] + [None] * len(feats))
    sess = session(path, a.threads)
    feed = {"images": images.numpy(), **{n: t.numpy() for n, t in zip(SUPPORT_OUTPUTS, feats)}}
    compare(table, "refdet detector + fusion + head (YOLOv8n)", f"batch {a.det_batch}, {a.det_size} px",
            lambda: detector(images, *feats), lambda: sess.run(None, feed), lambda: unfolded(images, *feats))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="PyTorch's and ONNX Runtime's intra-op threads")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cls-batch", type=int, default=8)
    p.add_argument("--ocr-size", choices=["full", "small"], default="full")
    p.add_argument("--ocr-widths", type=int, nargs="+", default=[160, 480])
    p.add_argument("--ocr-batch", type=int, default=16)
    p.add_argument("--det-size", type=int, default=640, help="refdet frame size")
    p.add_argument("--det-batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens per line in the end-to-end rows")
    p.add_argument("--only", nargs="+", choices=["classifiers", "ocr", "refdet", "ovd"],
                   default=["classifiers", "ocr", "refdet", "ovd"])
    p.add_argument("--reps", type=int, default=5, help="timed calls per side, at least")
    p.add_argument("--max-reps", type=int, default=15)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of round-robin per comparison, at least")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small OCR model, one width, short timings")
    args = p.parse_args(argv)
    if args.quick:
        args.ocr_size, args.ocr_widths, args.reps, args.min_time, args.max_reps, args.warmup = "small", [160], 3, 0, 3, 1
        args.det_size = 256
    torch.set_num_threads(args.threads)
    table = Table(args)
    rows = {"classifiers": classifier_rows, "ocr": ocr_rows, "ovd": ovd_rows, "refdet": refdet_rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            if name in rows:
                rows[name](table, tmp)
    print(f"{command_line(__spec__.name)}; {device_name(CPU)}, float32; ONNX Runtime with {args.threads} intra-op "
          f"thread(s); median of >= {args.reps} calls, spread in brackets\n")
    print("| model | input | baseline | compared | speed-up (baseline time / compared time) | outputs |")
    print("|---|---|---|---|---|---|")
    print("\n".join(table.rows))
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
