"""VietOCR decoding speed: KV-cached batched greedy vs VietOCR's re-run, batched vs per-image beam search, int8.

``src.models.vietocr`` decodes differently from VietOCR on purpose (DESIGN section 5): greedy decoding
keeps a key/value cache and runs one decoder step per token for the whole batch, and beam search is
batched over lines and beams. VietOCR's ``translate`` re-runs the whole decoder on the whole prefix at
every step (kept here as ``greedy_decode_reference``) and its beam search takes one image at a time
(``beam_search_sequential``). This script measures, in one run, on the same weights and the same
images:

1. Greedy: ``greedy_decode`` (KV cache) vs ``greedy_decode_reference`` (VietOCR's method), lines/s end
   to end (CNN + encoder + decoding) and decoder-only time. Decoder-only: the batch is encoded once and
   the model's ``encode`` is replaced, on the instance and only while timing, by a function that returns
   that memory, so the library's own decoding loops are timed without the CNN and the encoder (the
   cross-attention keys/values computed from the memory count as decoding). Encoding alone
   (``model.encode``) is timed in the same round-robin, to show how much of the end-to-end time the
   cache cannot touch. Targets (full model): end-to-end >= 2x, decoder-only >= 4x.
2. Beam search, beam 4: ``beam_search`` (the batch at once) vs ``beam_search_sequential`` (one image at
   a time through the same code), end to end. Target (full model): >= 3x.
3. int8: ``quantize_int8`` from ``src.tasks.ocr_inference`` (dynamic quantization of every ``nn.Linear``; CPU
   only, so this section always runs on the CPU, fp32 included) vs fp32, greedy with KV cache, lines/s
   end to end and decoder-only. Then the accuracy effect, on real-looking lines (the demo generator's
   Vietnamese text lines, resized with VietOCR's rule, decoded by width bucket as ``recognize`` does):
   with ``--weights RUN/best_model.pt`` (loaded by ``load_for_inference``) the CER/WER of fp32 and int8
   predictions against the truth; without weights the model is random, so only the agreement is
   reported: the fraction of lines whose int8 token sequence equals fp32's, and the token error rate
   (CER over token ids, special tokens included) of int8 output measured against fp32 output. A random
   model's logits are close together, so this agreement is a pessimistic check of quantization noise,
   not an accuracy figure.
4. VietOCR's own ``vietocr.tool.translate.translate`` on a ``vietocr`` model of the same config loaded
   with the same state dict, if ``import vietocr`` works (it is not a dependency); otherwise skipped.

Forced length. ``greedy_decode`` stops when every line has emitted eos, and no option turns that off.
To make every decoder run exactly ``--tokens`` steps, the timed model is a copy whose output bias of
the eos id is set to -1e4 (logits are O(1) at random init, O(10) trained), so eos never wins the
argmax nor a beam, and every decoder is called with ``max_len = --tokens``: each line then decodes
exactly ``--tokens`` tokens, which the script checks on every method's output. Section 3's accuracy
uses the unmodified trained model (eos allowed, ``--max-decode-len``) when ``--weights`` is given.

Timing: after ``--warmup`` untimed calls of each method, the compared methods run in round-robin
(a, b, a, b, ...) until each ran ``--reps`` times and ``--min-time`` seconds passed (at most
``--max-reps``), so a change in the load of a shared machine hits them alike; the figure is the fastest
call (the least disturbed), and the spread (slowest - fastest) / fastest shows the timing noise.
lines/s = batch / fastest call. Eval mode, ``no_grad``, float32. Images: demo lines generated with
``src.data.demo_ocr.ensure_demo_ocr`` (seed ``--data-seed``, which is not the training demo's seed 0,
so the lines are not its training lines) into a temporary folder, or read from ``--data DIR`` (a
VietOCR-format folder with ``DIR/--annotation``; generated there if that file is missing); the timed
batch is the first ``--batch-size`` lines resized to ``--width`` x 32. Every figure is measured in the
run; nothing is hard-coded.

    python -m bench.ocr_decode                                  # full vgg_transformer, random init, CPU
    python -m bench.ocr_decode --weights results/RUN/best_model.pt --data data/demo/ocr
    python -m bench.ocr_decode --model-size small --reps 2 --min-time 0 --eval-lines 32   # quick check
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from rapidfuzz.distance import Levenshtein
from torch import nn

from bench.timing import fastest, ratio, round_robin_args, spread, verdict
from src.errors import DataError
from src.data.demo_ocr import ensure_demo_ocr
from src.data.images import BadImage, load_rgb
from src.data.ocr import EOS, IMAGE_HEIGHT, PAD, SOS, VIETOCR_VOCAB, Vocab, line_tensor, read_annotations
from src.metrics.ocr import ocr_metrics
from src.models.vietocr import (MODEL_SIZES, SIZES, VIETOCR_ARCHS, LanguageTransformer, VietOCRModel,
                                build_vietocr)
from src.tasks.ocr_inference import decode_images, load_for_inference, quantize_int8
from src.training import distributed as D

EOS_BIAS = -1e4  # the eos logit's bias in the timed copy (set, not added)
SPECIALS = dict(sos_id=SOS, eos_id=EOS, pad_id=PAD)


def caveat(full: bool) -> str | None:
    """What a target verdict adds when the run is not ``--model-size full``, the size the targets are for."""
    return None if full else "the target is for --model-size full"


@contextmanager
def encoded_once(model: VietOCRModel, images: torch.Tensor):
    """While inside, ``model.encode`` returns the memory of ``images`` computed once here, so the
    decoders' own code runs without the CNN and the encoder. The instance attribute shadows the
    method and is removed on exit."""
    with torch.no_grad():
        memory = model.encode(images)
    model.encode = lambda _images: memory  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.encode


# ----------------------------------------------------------------------------- model and data

def output_layer(model: VietOCRModel) -> nn.Module:
    """The Linear that produces the logits: ``transformer.fc`` or seq2seq's ``decoder.fc_out``."""
    seq = model.transformer
    return seq.fc if isinstance(seq, LanguageTransformer) else seq.decoder.fc_out


def forced_length_copy(model: VietOCRModel) -> VietOCRModel:
    """A copy whose eos logit can never win, so every decoder runs to ``max_len``."""
    forced = copy.deepcopy(model).eval()
    with torch.no_grad():
        output_layer(forced).bias[EOS] = EOS_BIAS
    return forced


def check_length(name: str, tokens: torch.Tensor, n: int, length: int) -> None:
    if tuple(tokens.shape) != (n, length) or bool((tokens == EOS).any()):
        raise RuntimeError(f"{name}: decoded shape {tuple(tokens.shape)} (eos present: "
                           f"{bool((tokens == EOS).any())}), expected ({n}, {length}) without eos")


def load_lines(args) -> tuple[str, list[Image.Image], list[str]]:
    """(where, PIL images, texts) of the benchmark lines."""
    need = max(args.eval_lines, args.batch_size)
    if args.data:
        root = args.data
        ann = os.path.join(root, args.annotation)
        if not os.path.isfile(ann):
            ensure_demo_ocr(root, counts=(0, 0, need), seed=args.data_seed)
            ann = os.path.join(root, "test.txt")
        return (ann, *_read(root, ann, need))
    with tempfile.TemporaryDirectory(prefix="ocr_decode_") as root:
        files = ensure_demo_ocr(root, counts=(0, 0, need), seed=args.data_seed)
        images, texts = _read(root, files["test"], need)
    return f"demo lines generated with ensure_demo_ocr(seed={args.data_seed}) in a temp dir", images, texts


def _read(root: str, ann: str, limit: int) -> tuple[list[Image.Image], list[str]]:
    images, texts = [], []
    for line in read_annotations(ann):
        if len(images) >= limit:
            break
        try:
            img = load_rgb(os.path.join(root, line.path))
        except BadImage as exc:
            print(f"skipped {line.path}: {exc.reason}", file=sys.stderr)
            continue
        img.load()
        images.append(img)
        texts.append(line.label)
    if not images:
        raise DataError(f"{ann}: no readable lines")
    return images, texts


def token_error_rate(refs: list[list[int]], hyps: list[list[int]]) -> float:
    total = sum(len(r) for r in refs)
    return sum(Levenshtein.distance(r, h) for r, h in zip(refs, hyps)) / max(total, 1)


def quantized(model: VietOCRModel) -> VietOCRModel:
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice
        warnings.simplefilter("ignore")
        return quantize_int8(copy.deepcopy(model).cpu()).eval()


# ----------------------------------------------------------------------------- sections

def bench_greedy(model, x, args, device, full) -> None:
    n, t = x.shape[0], args.tokens
    cached = lambda: model.greedy_decode(x, max_len=t, **SPECIALS)  # noqa: E731
    reference = lambda: model.greedy_decode_reference(x, max_len=t, **SPECIALS)  # noqa: E731
    a, b = cached().tokens, reference().tokens
    check_length("greedy_decode", a, n, t)
    check_length("greedy_decode_reference", b, n, t)
    same = int((a == b).all(1).sum())
    e2e = round_robin_args({"cached": cached, "reference": reference}, device, args)
    # decoder-only and encode-only in one round-robin; encode is timed through the class's method,
    # which the instance attribute set by encoded_once does not affect
    real_encode = VietOCRModel.encode.__get__(model)
    with encoded_once(model, x):
        dec = round_robin_args({"cached": cached, "reference": reference, "encode": lambda: real_encode(x)},
                               device, args)
    print(f"## 1. Greedy, batch {n}, {t} tokens per line: KV cache (`greedy_decode`) vs VietOCR's re-run "
          f"(`greedy_decode_reference`)\n")
    print("| method | end-to-end ms/batch | lines/s | e2e spread | decoder-only ms/batch | ms/step | dec spread |")
    print("|---|---|---|---|---|---|---|")
    for key, label in (("cached", "KV cache, batched"), ("reference", "re-run prefix (VietOCR)")):
        e, d = fastest(e2e[key]), fastest(dec[key])
        print(f"| {label} | {1e3 * e:.1f} | {n / e:.1f} | {spread(e2e[key])} | {1e3 * d:.1f} | {1e3 * d / t:.2f} | "
              f"{spread(dec[key])} |")
    enc = fastest(dec["encode"])
    print(f"| encode only (CNN + encoder), in the decoder-only round-robin | {1e3 * enc:.1f} | | "
          f"{spread(dec['encode'])} | | | |")
    r_e2e = fastest(e2e["reference"]) / fastest(e2e["cached"])
    r_dec = fastest(dec["reference"]) / fastest(dec["cached"])
    print(f"\nspeed-up cached over re-run: end-to-end {r_e2e:.2f}x "
          f"(target >= 2x: {verdict(r_e2e, 2, caveat(full))}), "
          f"decoder-only {r_dec:.2f}x (target >= 4x: {verdict(r_dec, 4, caveat(full))})")
    print(f"encode share of the cached end-to-end time: {100 * enc / fastest(e2e['cached']):.0f}%; "
          f"identical token sequences cached vs re-run: {same}/{n}\n", flush=True)


def bench_beam(model, x, args, device, full) -> None:
    n, t, k = x.shape[0], args.tokens, args.beam_size
    batched = lambda: model.beam_search(x, beam_size=k, max_len=t, **SPECIALS)  # noqa: E731
    sequential = lambda: model.beam_search_sequential(x, beam_size=k, max_len=t, **SPECIALS)  # noqa: E731
    a, b = batched().tokens, sequential().tokens
    check_length("beam_search", a, n, t)
    check_length("beam_search_sequential", b, n, t)
    same = int((a == b).all(1).sum())
    times = round_robin_args({"batched": batched, "sequential": sequential}, device, args)
    print(f"## 2. Beam search, beam {k}, batch {n}, {t} tokens per line: batched (`beam_search`) vs one image "
          f"at a time (`beam_search_sequential`), end to end\n")
    print("| method | ms/batch | lines/s | spread |")
    print("|---|---|---|---|")
    for key in ("batched", "sequential"):
        s = fastest(times[key])
        print(f"| {key} | {1e3 * s:.1f} | {n / s:.1f} | {spread(times[key])} |")
    r = fastest(times["sequential"]) / fastest(times["batched"])
    print(f"\nspeed-up batched over sequential: {r:.2f}x (target >= 3x: {verdict(r, 3, caveat(full))}); "
          f"identical token sequences: {same}/{n}\n", flush=True)


def bench_int8(forced, trained, vocab, lines, x_cpu, args, model_cfg) -> None:
    cpu = torch.device("cpu")
    n, t = x_cpu.shape[0], args.tokens
    fp32 = forced if next(forced.parameters()).device.type == "cpu" else copy.deepcopy(forced).cpu()
    int8 = quantized(fp32)
    models = {"fp32": fp32, "int8": int8}
    fns = {k: (lambda m=m: m.greedy_decode(x_cpu, max_len=t, **SPECIALS)) for k, m in models.items()}
    for k, fn in fns.items():
        check_length(f"{k} greedy_decode", fn().tokens, n, t)
    e2e = round_robin_args(fns, cpu, args)
    with encoded_once(fp32, x_cpu), encoded_once(int8, x_cpu):  # each from its own encoder's memory
        dec = round_robin_args(fns, cpu, args)
    print(f"## 3. int8 (`quantize_int8`: dynamic quantization of nn.Linear) vs fp32, greedy with KV cache, "
          f"CPU ({torch.get_num_threads()} threads), batch {n}, {t} tokens per line\n")
    print("| model | end-to-end ms/batch | lines/s | e2e spread | decoder-only ms/batch | dec spread |")
    print("|---|---|---|---|---|---|")
    for k in models:
        e, d = fastest(e2e[k]), fastest(dec[k])
        print(f"| {k} | {1e3 * e:.1f} | {n / e:.1f} | {spread(e2e[k])} | {1e3 * d:.1f} | {spread(dec[k])} |")
    print(f"\nint8 speed-up over fp32: end-to-end {ratio(fastest(e2e['fp32']), fastest(e2e['int8']))}, "
          f"decoder-only {ratio(fastest(dec['fp32']), fastest(dec['int8']))}\n", flush=True)

    images, texts = lines
    images, texts = images[:args.eval_lines], texts[:args.eval_lines]
    min_w, max_w = model_cfg.get("image_min_width", 32), model_cfg.get("image_max_width", 512)
    if trained is not None:
        base = trained if next(trained.parameters()).device.type == "cpu" else copy.deepcopy(trained).cpu()
        pair, max_len = {"fp32": base, "int8": quantized(base)}, args.max_decode_len
        what = (f"trained weights {args.weights} (eos allowed, max {max_len} tokens), {len(images)} lines, "
                f"against the truth")
    else:
        pair, max_len = models, t
        what = (f"RANDOM-INIT model (no --weights): agreement of int8 with fp32 only, {len(images)} lines, "
                f"eos suppressed, {max_len} tokens each; not an accuracy figure")
    ids = {k: [row[:row.index(EOS)] if EOS in row else row
               for row, _ in decode_images(m, images, cpu, args.batch_size, 1, max_len, min_w, max_w)]
           for k, m in pair.items()}
    same = sum(a == b for a, b in zip(ids["fp32"], ids["int8"]))
    print(f"### int8 accuracy effect: {what}\n")
    if trained is not None:
        preds = {k: [vocab.decode(row) for row in v] for k, v in ids.items()}
        print("| model | CER vs truth | WER | exact lines |")
        print("|---|---|---|---|")
        res = {}
        for k in pair:
            res[k] = ocr_metrics(texts, preds[k])
            print(f"| {k} | {100 * res[k]['cer']:.2f}% | {100 * res[k]['wer']:.2f}% | "
                  f"{100 * res[k]['acc_full_seq']:.1f}% |")
        print(f"\nCER int8 - fp32: {100 * (res['int8']['cer'] - res['fp32']['cer']):+.2f} points; ", end="")
    print(f"identical token sequences int8 vs fp32: {same}/{len(images)} ({100 * same / len(images):.1f}%); "
          f"token error rate of int8 output against fp32 output: "
          f"{100 * token_error_rate(ids['fp32'], ids['int8']):.2f}%\n", flush=True)


def bench_vietocr(model, x, args, device, arch, model_size) -> None:
    print("## 4. VietOCR's own `translate`\n")
    try:
        import vietocr  # noqa: F401
        from vietocr.model.transformerocr import VietOCR
        from vietocr.tool.translate import translate
    except Exception as exc:  # ImportError usually; a broken install should not stop the benchmark
        print(f"skipped: `import vietocr` failed ({type(exc).__name__}: {exc}); vietocr is not a dependency "
              f"(pip install vietocr to add this row)\n")
        return
    if arch != "vgg_transformer" or model_size != "full":
        print(f"skipped: vietocr builds only its own configs; this run is {arch} {model_size} "
              f"(use --arch vgg_transformer --model-size full)\n")
        return
    try:
        cfg = SIZES["full"]
        ss = [[2, 2], [2, 2], [2, 1], [2, 1], [1, 1]]
        vmodel = VietOCR(output_layer(model).out_features, "vgg19_bn",
                         dict(ss=ss, ks=ss, hidden=cfg["d_model"], pretrained=False),
                         dict(d_model=cfg["d_model"], nhead=cfg["nhead"], num_encoder_layers=cfg["num_encoder_layers"],
                              num_decoder_layers=cfg["num_decoder_layers"], dim_feedforward=cfg["dim_feedforward"],
                              max_seq_length=model.transformer.pos_enc.pe.shape[0], pos_dropout=0.1,
                              trans_dropout=0.1), "transformer")
        vmodel.load_state_dict(model.state_dict())  # the same (eos-suppressed) weights
        vmodel = vmodel.to(device).eval()
        # translate loops while its step count <= max_seq_length: max_seq_length + 1 steps
        run = lambda: translate(x, vmodel, max_seq_length=args.tokens - 1, sos_token=SOS, eos_token=EOS)  # noqa: E731
        steps = np.asarray(run()[0]).shape[1] - 1
        ours = lambda: model.greedy_decode(x, max_len=args.tokens, **SPECIALS)  # noqa: E731
        times = round_robin_args({"vietocr translate": run, "greedy_decode (KV cache)": ours}, device, args)
    except Exception as exc:
        print(f"skipped: vietocr is installed ({getattr(vietocr, '__version__', '?')}) but failed here "
              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})\n")
        return
    n = x.shape[0]
    print(f"vietocr {getattr(vietocr, '__version__', '?')}, same state dict; translate ran {steps} steps, "
          f"greedy_decode {args.tokens}\n")
    print("| method | ms/batch | lines/s | spread |")
    print("|---|---|---|---|")
    for key, ts in times.items():
        print(f"| {key} | {1e3 * fastest(ts):.1f} | {n / fastest(ts):.1f} | {spread(ts)} |")
    print(f"\nspeed-up greedy_decode over vietocr translate: "
          f"{ratio(fastest(times['vietocr translate']), fastest(times['greedy_decode (KV cache)']))}\n")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=VIETOCR_ARCHS, default="vgg_transformer")
    p.add_argument("--model-size", choices=MODEL_SIZES, default="full",
                   help="full = VietOCR's architecture, which the targets refer to")
    p.add_argument("--weights", default=None, metavar="CKPT",
                   help="a train_vietocr.py best_model.pt (its arch/size/vocab win); default: random init")
    p.add_argument("--seed", type=int, default=0, help="random-init seed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens per line, forced (see the docstring)")
    p.add_argument("--width", type=int, default=160, help="image width of the timed batch (height 32)")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (int8 always runs on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per method before timing")
    p.add_argument("--reps", type=int, default=5, help="timed calls per method, at least")
    p.add_argument("--max-reps", type=int, default=20, help="timed calls per method, at most")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds each round-robin runs, at least")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="VietOCR-format folder with DIR/--annotation (demo lines are generated there if missing); "
                        "default: demo lines in a temp dir")
    p.add_argument("--annotation", default="test.txt", help="annotation file under --data")
    p.add_argument("--data-seed", type=int, default=1, help="seed of generated demo lines (training demo: 0)")
    p.add_argument("--eval-lines", type=int, default=200, help="lines decoded for the int8 accuracy check")
    p.add_argument("--max-decode-len", type=int, default=128, help="max tokens in the trained-model accuracy check")
    p.add_argument("--skip", nargs="*", choices=["greedy", "beam", "int8", "vietocr"], default=[],
                   help="sections to leave out")
    args = p.parse_args(argv)
    for flag in ("batch_size", "tokens", "width", "beam_size", "reps", "eval_lines"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    device = D.resolve_device(args.device)
    if args.weights:
        trained, vocab, cfg = load_for_inference(args.weights, device)
        args.arch, args.model_size = cfg["arch"], cfg["model_size"]
        source = f"trained weights {args.weights} (arch and size from the checkpoint)"
    else:
        vocab, cfg = Vocab(VIETOCR_VOCAB), {}
        torch.manual_seed(args.seed)
        trained = None
        source = f"random init (seed {args.seed})"
    base = trained if trained is not None else build_vietocr(args.arch, len(vocab), args.model_size).to(device).eval()
    forced = forced_length_copy(base)
    full = args.model_size == "full"
    t0 = time.perf_counter()
    lines = load_lines(args)
    where, images, _ = lines
    picks = [images[i % len(images)] for i in range(args.batch_size)]
    x_cpu = torch.stack([line_tensor(im, args.width) for im in picks]).float().div_(255)
    x = x_cpu.to(device)
    print(f"  data ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    n_params = sum(q.numel() for q in base.parameters())
    print(f"# ocr_decode: torch {torch.__version__}, device {dev_name} ({torch.get_num_threads()} threads), "
          f"float32, {args.arch} {args.model_size} ({n_params:,} params, vocab {len(vocab)}), batch {args.batch_size}, "
          f"image {args.width}x{IMAGE_HEIGHT}, {args.tokens} tokens per line (forced)")
    print(f"weights: {source}; timed copy has the eos logit's bias set to {EOS_BIAS:g} so every line decodes "
          f"exactly {args.tokens} tokens")
    repeat = " (repeated in turn: fewer lines than the batch)" if len(images) < args.batch_size else ""
    print(f"images: {where}, {len(images)} lines read; the timed batch is its first {args.batch_size} lines"
          f"{repeat} resized to {args.width}x{IMAGE_HEIGHT}")
    print(f"timing: fastest of >= {args.reps} calls per method (>= {args.min_time:g} s per round-robin, "
          f"<= {args.max_reps}) after {args.warmup} warm-up; spread = (slowest - fastest) / fastest of N calls; "
          f"lines/s = batch / fastest call; eval mode, no_grad\n", flush=True)
    if not full:
        print("note: the targets refer to --model-size full; this run is a smaller model\n")

    sections = [("greedy", lambda: bench_greedy(forced, x, args, device, full)),
                ("beam", lambda: bench_beam(forced, x, args, device, full)),
                ("int8", lambda: bench_int8(forced, trained, vocab, lines[1:], x_cpu, args, cfg)),
                ("vietocr", lambda: bench_vietocr(forced, x, args, device, args.arch, args.model_size))]
    for name, fn in sections:
        if name in args.skip:
            print(f"## {name}: skipped (--skip)\n")
            continue
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        print(f"  section {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
