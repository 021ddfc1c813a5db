"""This project side by side with its peer tools, on the same weights and inputs: VietOCR and ultralytics.

Every row first checks that both sides compute the same thing (identical tokens, the same first-step
loss, outputs within 1e-4), then times them in round-robin (a, b, a, b, ...: :mod:`bench.timing`), so a
change in the load of a shared machine hits both alike. The figure is the median call, the spread
(slowest - fastest) / fastest; the speed-up (peer time / our time) counts only when both spreads are under
25% (:func:`bench.timing.checked_ratio`). One thread per side unless ``--threads``; float32, CPU; random
weights with random BatchNorm statistics (so Conv+BN folding is not a no-op).

Rows (``--only``):

- ``ocr``: greedy decoding end to end vs ``vietocr.tool.translate.translate``. VietOCR's own ``VietOCR``
  class (vgg_transformer config) loads our model's state dict; the eos logit's bias is -1e4 on both
  (``bench.ocr_decode.forced_length_copy``), so every line decodes exactly ``--tokens`` tokens, checked.
  Ours: PyTorch ``greedy_decode`` with Conv+BN folded, and the ONNX Runtime backend (``export_pair`` +
  ``OnnxRecognizer``). ``--ocr-lines`` demo lines resized to each of ``--ocr-widths`` x 32.
- ``beam``: our batched ``beam_search`` (beam 4) vs VietOCR's ``translate_beam_search``, one image at a
  time as VietOCR runs it, unmodified weights (eos reachable), at most ``--tokens`` tokens. VietOCR's beam
  does not follow its back-pointers (docs/train_vietocr.md), so its strings may differ by design: the row
  reports how many lines agree instead of failing.
- ``train``: one training step (forward, label-smoothed cross-entropy as ``OCRTask.loss``, backward,
  AdamW step) of our model vs VietOCR's, batch ``--train-batch``, 160x32, the same loss code on each
  model's logits (VietOCR's forward takes tgt as (T, N)). The check: the first-step loss of both with
  dropout off (the two draw their masks differently) agrees to 1e-5 relative; the timed steps train with
  the configured dropout.
- ``detector``: our YOLOv8n backbone + neck vs ultralytics' ``DetectionModel('yolov8n.yaml')`` layers
  0-21, run with its own ``f`` routing (as ``_predict_once``); ultralytics' weights converted by
  ``src.models.ultralytics_keys``. Inference (``inference_mode``): ``model.fuse()`` vs ``fold_conv_bn``,
  unfolded outputs ``torch.equal``, folded within 1e-4. Training step: forward + backward of the sum of
  the three neck outputs' means, unfolded; the sizes after the first only if a step takes <= 30 s.
- ``classification``: timm's ``train.py`` vs ``train_ResNet18_Hybrid.py``; timm's ``train.py`` ships in
  neither its wheel nor its sdist (1.0.31), and GitHub is unreachable here, so the row is skipped.

A peer that cannot be imported gives a "skipped" row with the command that installs it (the bench
environments of docs/benchmarks.md); ultralytics (AGPL) is imported only inside the detector row.

    /tmp/benchenv/bin/python -m bench.peers --only ocr beam train      # VietOCR rows
    /tmp/ulvenv/bin/python -m bench.peers --only detector               # ultralytics rows
    python -m bench.peers --quick                                       # correctness run; missing peers skipped
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from typing import Callable

import torch
from torch import nn

from bench.ocr_decode import SPECIALS, check_length, forced_length_copy, load_lines
from bench.onnx_cpu import randomize_bn
from bench.timing import checked_ratio, command_line, device_name, median, ms, round_robin, spread
from src.data.ocr import EOS, PAD, SOS, VIETOCR_VOCAB, Vocab, line_tensor
from src.models.layers.fold import fold_conv_bn
from src.models.vietocr import SIZES, build_vietocr

CPU = torch.device("cpu")
ROWS = ("ocr", "beam", "train", "detector", "classification")
INSTALL = {
    "vietocr": "python3 -m venv /tmp/benchenv --system-site-packages && /tmp/benchenv/bin/pip install "
               "vietocr==0.3.13 --no-deps && /tmp/benchenv/bin/pip install einops gdown prefetch_generator",
    "ultralytics": "python3 -m venv /tmp/ulvenv --system-site-packages && /tmp/ulvenv/bin/pip install "
                   "ultralytics==8.4.190 --no-deps && /tmp/ulvenv/bin/pip install opencv-python-headless psutil polars",
}
POOLS = [[2, 2], [2, 2], [2, 1], [2, 1], [1, 1]]  # vgg_transformer's ss = ks
OCR_NAME = "vgg_transformer full"


class Table:
    """The rows printed at the end; ``failed`` once an output check failed."""

    def __init__(self, args) -> None:
        self.args, self.rows, self.failed = args, [], False

    def time(self, sides: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
        a = self.args
        return round_robin(sides, CPU, a.reps, a.min_time, a.max_reps, a.warmup)

    def add(self, row: str, inputs: str, ours: str, ours_ts, peer: str, peer_ts, check: str) -> None:
        self.rows.append(f"| {row} | {inputs} | {ours} {ms(ours_ts, median):.1f} ms ({spread(ours_ts)}) | "
                         f"{peer} {ms(peer_ts, median):.1f} ms ({spread(peer_ts)}) | "
                         f"{checked_ratio(peer_ts, ours_ts, median)} | {check} |")

    def skip(self, row: str, why: str) -> None:
        self.rows.append(f"| {row} | | | | | skipped: {why} |")
        print(f"{row}: skipped: {why}", file=sys.stderr, flush=True)

    def check(self, ok: bool, text: str) -> str:
        self.failed |= not ok
        return text if ok else f"{text}: FAILED"


def peer_missing(table: Table, row: str, name: str) -> bool:
    """True (and a skipped row saying how to install it) when ``import name`` fails."""
    try:
        __import__(name)
        return False
    except Exception as exc:  # ImportError usually; a broken install must not stop the other rows
        table.skip(row, f"{name} not installed ({type(exc).__name__}); install: `{INSTALL[name]}`")
        return True


# ----------------------------------------------------------------------------- OCR (VietOCR)

class OCRSetup:
    """Our full vgg_transformer with random weights, its eos-suppressed copy, VietOCR's own model on
    each of the two state dicts, and the demo lines; built once for the three OCR rows."""

    def __init__(self, args) -> None:
        from vietocr.model.transformerocr import VietOCR

        vocab = len(Vocab(VIETOCR_VOCAB))
        torch.manual_seed(args.seed)
        self.plain = randomize_bn(build_vietocr("vgg_transformer", vocab, "full"))
        self.forced = forced_length_copy(self.plain)
        cfg = SIZES["full"]

        def theirs(model: nn.Module) -> nn.Module:
            v = VietOCR(vocab, "vgg19_bn", dict(ss=POOLS, ks=POOLS, hidden=cfg["d_model"], pretrained=False),
                        dict(d_model=cfg["d_model"], nhead=cfg["nhead"], num_encoder_layers=cfg["num_encoder_layers"],
                             num_decoder_layers=cfg["num_decoder_layers"], dim_feedforward=cfg["dim_feedforward"],
                             max_seq_length=model.transformer.pos_enc.pe.shape[0], pos_dropout=0.1, trans_dropout=0.1),
                        "transformer")
            v.load_state_dict(model.state_dict())
            return v.eval()

        self.v_plain, self.v_forced = theirs(self.plain), theirs(self.forced)
        ns = argparse.Namespace(data=None, annotation="test.txt", data_seed=1, eval_lines=args.ocr_lines,
                                batch_size=args.ocr_lines)
        self.where, images, _ = load_lines(ns)
        self.images = [images[i % len(images)] for i in range(args.ocr_lines)]

    def batch(self, width: int, n: int | None = None) -> torch.Tensor:
        """The first ``n`` lines (all by default, repeated if needed) as a (n, 3, 32, width) float batch."""
        picks = [self.images[i % len(self.images)] for i in range(n or len(self.images))]
        return torch.stack([line_tensor(im, width) for im in picks]).float().div_(255)


_OCR: OCRSetup | None = None


def ocr_setup(args) -> OCRSetup:
    global _OCR
    if _OCR is None:
        t0 = time.perf_counter()
        _OCR = OCRSetup(args)
        print(f"  OCR models and lines ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return _OCR


def ocr_rows(table: Table, tmp: str) -> None:
    if peer_missing(table, "OCR greedy vs vietocr translate", "vietocr"):
        return
    from vietocr.tool.translate import translate

    from src.models.vietocr_onnx import OnnxRecognizer
    from src.tasks.ocr_export import export_pair

    a, s = table.args, ocr_setup(table.args)
    t, vmodel = a.tokens, s.v_forced
    folded = copy.deepcopy(s.forced)
    fold_conv_bn(folded)
    enc, dec = os.path.join(tmp, "ocr_encoder.onnx"), os.path.join(tmp, "ocr_decoder.onnx")
    export_pair(folded, enc, dec)
    recognizer = OnnxRecognizer(enc, dec, threads=a.threads)
    for width in a.ocr_widths:
        x = s.batch(width)
        n = x.shape[0]

        # translate loops while its step count <= max_seq_length: max_seq_length + 1 decoding steps
        def peer():
            return translate(x, vmodel, max_seq_length=t - 1, sos_token=SOS, eos_token=EOS)[0]

        def torch_fn():
            return folded.greedy_decode(x, max_len=t, **SPECIALS).tokens

        def ort_fn():
            return recognizer.decode(x, SOS, EOS, PAD, t).tokens

        with torch.inference_mode():
            theirs = torch.as_tensor(peer())[:, 1:]  # translate returns sos first
            mine, onnx = torch_fn(), ort_fn()
            for name, tokens in (("vietocr translate", theirs), ("greedy_decode (folded)", mine),
                                 ("OnnxRecognizer", onnx)):
                check_length(name, tokens, n, t)
            ts = table.time({"vietocr": peer, "torch": torch_fn, "ort": ort_fn})
        inputs = f"{n} lines, 32x{width}, {t} tokens each"
        for key, label, tokens in (("torch", "ours PyTorch (Conv+BN folded)", mine), ("ort", "ours ONNX Runtime", onnx)):
            same = torch.equal(tokens, theirs)
            table.add(f"OCR greedy, {OCR_NAME}", inputs, label, ts[key], "vietocr translate", ts["vietocr"],
                      table.check(same, f"{n}/{n} lines' tokens identical" if same else "tokens DIFFER"))


def _strip(ids: list[int]) -> list[int]:
    """The ids up to the first eos or pad (exclusive)."""
    out = []
    for i in ids:
        if i in (EOS, PAD):
            break
        out.append(i)
    return out


def beam_rows(table: Table, tmp: str) -> None:
    if peer_missing(table, "OCR beam search 4 vs vietocr", "vietocr"):
        return
    from vietocr.tool.translate import translate_beam_search

    a, s = table.args, ocr_setup(table.args)
    t, k = a.tokens, 4
    model, vmodel = s.plain, s.v_plain
    for width in a.ocr_widths:
        x = s.batch(width)
        n = x.shape[0]

        def ours():
            return model.beam_search(x, beam_size=k, max_len=t, **SPECIALS).tokens

        def peer():  # one image at a time: how vietocr's predictor runs its beam search
            return [translate_beam_search(x[i:i + 1], vmodel, beam_size=k, candidates=1, max_seq_length=t,
                                          sos_token=SOS, eos_token=EOS) for i in range(n)]

        with torch.inference_mode():
            mine = [_strip(row) for row in ours().tolist()]
            theirs = [_strip(row[1:]) for row in peer()]  # sos first
            ts = table.time({"ours": ours, "vietocr": peer})
        # vietocr returns its hypothesis minus the last token (meant to drop eos): a line that reaches
        # max length without eos comes back one token short, so ours is compared without its last too
        same = sum(m == p or (len(m) == t and m[:-1] == p) for m, p in zip(mine, theirs))
        check = (f"{n}/{n} lines identical" if same == n else
                 f"outputs differ by design (see docs/train_vietocr.md): {same}/{n} lines identical")
        table.add(f"OCR beam search 4, {OCR_NAME}", f"{n} lines, 32x{width}, max {t} tokens", "ours batched",
                  ts["ours"], "vietocr translate_beam_search, per image", ts["vietocr"], check)


def without_dropout(model: nn.Module) -> nn.Module:
    """``model`` with every dropout probability 0 (nn.Dropout and nn.MultiheadAttention's)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return model


def train_rows(table: Table, tmp: str) -> None:
    if peer_missing(table, "OCR training step vs vietocr", "vietocr"):
        return
    from src.tasks.ocr import OCRTask

    a, s = table.args, ocr_setup(table.args)
    vocab = Vocab(VIETOCR_VOCAB)
    task = OCRTask(vocab, {}, label_smoothing=0.1)
    b, width, length = a.train_batch, 160, a.tokens
    x = s.batch(width, b)
    g = torch.Generator().manual_seed(2)
    tgt = torch.randint(4, len(vocab), (b, length + 1), generator=g)
    tgt[:, 0] = SOS
    for i in range(b):  # lines of different lengths: eos, then pad
        end = int(torch.randint(length // 2, length + 1, (1,), generator=g))
        tgt[i, end] = EOS
        tgt[i, end + 1:] = PAD
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    mask = tgt_in == PAD

    def forward_ours(m):
        return m(x, tgt_in, mask)

    def forward_peer(m):
        return m(x, tgt_in.T, tgt_key_padding_mask=mask)  # vietocr takes tgt as (T, N)

    def stepper(model: nn.Module, forward: Callable[[nn.Module], torch.Tensor]) -> Callable[[], float]:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = task.loss(forward(model), tgt_out)
            loss.backward()
            opt.step()
            return float(loss.detach())
        return step

    # the check: dropout off on both (ours draws attention dropout inside scaled_dot_product_attention,
    # vietocr inside nn.MultiheadAttention, so the masks cannot match); BatchNorm on batch statistics
    l_ours = stepper(without_dropout(copy.deepcopy(s.plain)), forward_ours)()
    l_peer = stepper(without_dropout(copy.deepcopy(s.v_plain)), forward_peer)()
    rel = abs(l_ours - l_peer) / abs(l_peer)
    ours = stepper(copy.deepcopy(s.plain), forward_ours)
    peer = stepper(copy.deepcopy(s.v_plain), forward_peer)
    ts = table.time({"ours": ours, "vietocr": peer})
    table.add(f"OCR training step, {OCR_NAME}", f"batch {b}, 32x{width}, {length} target tokens", "ours", ts["ours"],
              "vietocr model, same step", ts["vietocr"],
              table.check(rel <= 1e-5, f"first-step loss, dropout off: {l_ours:.7f} vs {l_peer:.7f} "
                                       f"(rel. diff {rel:.0e})"))


# ----------------------------------------------------------------------------- detector (ultralytics)

def run_layers(layers, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Ultralytics' ``_predict_once`` over ``layers`` (its ``f`` routing and saved outputs); the outputs
    of layers 4, 6, 9 (backbone P3-P5) and 15, 18, 21 (neck), in the order ours returns them."""
    outputs, y = [], x
    for layer in layers:
        if layer.f != -1:
            y = outputs[layer.f] if isinstance(layer.f, int) else [y if j == -1 else outputs[j] for j in layer.f]
        y = layer(y)
        outputs.append(y)
    return tuple(outputs[i] for i in (4, 6, 9, 15, 18, 21))


def run_ours(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    p3, p4, p5 = model["backbone"](x)
    return (p3, p4, p5, *model["neck"](p3, p4, p5))


def detector_rows(table: Table, tmp: str) -> None:
    if peer_missing(table, "YOLOv8n backbone+neck vs ultralytics", "ultralytics"):
        return
    import ultralytics
    from ultralytics.nn.tasks import DetectionModel  # AGPL: imported here only, never in src/

    from src.models.ultralytics_keys import convert_state_dict, detector_target, yolov8n_detector

    a = table.args
    torch.manual_seed(a.seed)
    theirs = DetectionModel("yolov8n.yaml", verbose=False)
    with torch.no_grad():  # trained-looking weights and BatchNorm statistics, so folding changes the arithmetic
        for name, v in theirs.state_dict().items():
            if v.dtype.is_floating_point:
                v.copy_(torch.rand_like(v) + 0.5 if name.endswith("running_var") else torch.randn_like(v) * 0.2)
    ours = yolov8n_detector()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), detector_target(ours), "ultralytics").state_dict)
    theirs.eval()
    ours.eval()
    fused = copy.deepcopy(theirs).fuse(verbose=False)
    folded = copy.deepcopy(ours)
    fold_conv_bn(folded)
    name, b = f"YOLOv8n layers 0-21 (ultralytics {ultralytics.__version__})", a.det_batch
    for size in a.det_sizes:
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            exact = all(torch.equal(u, v) for u, v in zip(run_ours(ours, x), run_layers(theirs.model[:22], x)))
            diff = max(float((u - v).abs().max()) for u, v in zip(run_ours(folded, x), run_layers(fused.model[:22], x)))
            ts = table.time({"ours": lambda: run_ours(folded, x), "peer": lambda: run_layers(fused.model[:22], x)})
        table.add(f"{name} inference", f"batch {b}, {size} px", "ours fold_conv_bn", ts["ours"],
                  "ultralytics fuse()", ts["peer"],
                  table.check(exact and diff <= 1e-4, f"unfolded {'torch.equal' if exact else 'NOT equal'}; "
                                                      f"folded max abs diff {diff:.1e}"))

    t_ours, t_peer = copy.deepcopy(ours).train(), copy.deepcopy(theirs).train()
    for size in a.det_train_sizes:
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(size + 1))

        def trainer(model: nn.Module, forward) -> Callable[[], float]:
            def step() -> float:
                model.zero_grad(set_to_none=True)
                loss = sum(o.mean() for o in forward(model, x)[3:])  # the three neck outputs, a head's inputs
                loss.backward()
                return float(loss.detach())
            return step

        s_ours = trainer(t_ours, run_ours)
        s_peer = trainer(t_peer, lambda m, v: run_layers(m.model[:22], v))
        t0 = time.perf_counter()
        l_ours = s_ours()
        t1 = time.perf_counter()
        l_peer = s_peer()
        slowest = max(t1 - t0, time.perf_counter() - t1)
        if size != a.det_train_sizes[0] and slowest > 30:
            table.skip(f"{name} training step, {size} px", f"one step took {slowest:.0f} s (> 30 s)")
            continue
        ts = table.time({"ours": s_ours, "peer": s_peer})
        table.add(f"{name} training step (forward + backward)", f"batch {b}, {size} px", "ours", ts["ours"],
                  "ultralytics", ts["peer"],
                  table.check(abs(l_ours - l_peer) <= 1e-5 * abs(l_peer),
                              f"first-step loss {l_ours:.7f} vs {l_peer:.7f}"))


# ----------------------------------------------------------------------------- classification (timm)

def classification_rows(table: Table, tmp: str) -> None:
    # `pip download timm==1.0.31 --no-binary :all:` gives an sdist without train.py (it lives only in
    # timm's GitHub repository, not reachable from the machine this bench was written on)
    table.skip("ResNet18 training vs timm train.py", "timm's train.py not available offline (neither the timm "
               "wheel nor its sdist ships it)")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each side (torch and ONNX Runtime)")
    p.add_argument("--seed", type=int, default=0, help="random-weights seed")
    p.add_argument("--ocr-lines", type=int, default=16)
    p.add_argument("--ocr-widths", type=int, nargs="+", default=[160, 480])
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens per line (greedy: forced; beam: at most)")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--det-batch", type=int, default=4)
    p.add_argument("--det-sizes", type=int, nargs="+", default=[256, 640])
    p.add_argument("--det-train-sizes", type=int, nargs="+", default=[256, 640],
                   help="sizes after the first are timed only when one step takes <= 30 s per side")
    p.add_argument("--reps", type=int, default=5, help="timed calls per side, at least")
    p.add_argument("--max-reps", type=int, default=15)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of round-robin per comparison, at least")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="a correctness run: 4 lines, 8 tokens, batch 2 (detector 1), one size each, 2 timed calls")
    args = p.parse_args(argv)
    if args.quick:
        args.ocr_lines, args.ocr_widths, args.tokens, args.train_batch = 4, [160], 8, 2
        args.det_batch, args.det_sizes, args.det_train_sizes = 1, [256], [256]
        args.reps, args.max_reps, args.min_time, args.warmup = 2, 2, 0.0, 1
    torch.set_num_threads(args.threads)
    table = Table(args)
    rows = {"ocr": ocr_rows, "beam": beam_rows, "train": train_rows, "detector": detector_rows,
            "classification": classification_rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ROWS:
            if name in args.only:
                t0 = time.perf_counter()
                rows[name](table, tmp)
                print(f"  {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    where = f"; OCR images: {_OCR.where}" if _OCR is not None else ""
    print(f"{command_line(__spec__.name)}; torch {torch.__version__}; {device_name(CPU)} per side, float32; "
          f"random weights (seed {args.seed}){where}; median of >= {args.reps} calls in round-robin after "
          f"{args.warmup} warm-up, spread in brackets; speed-up = peer time / our time, counted only when both "
          f"spreads are under 25%\n")
    print("| row | input | ours | peer | speed-up (peer / ours) | outputs |")
    print("|---|---|---|---|---|---|")
    print("\n".join(table.rows))
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
